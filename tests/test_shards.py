import io
import json
import tarfile
from itertools import islice
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from openrecog.data import shards
from openrecog.data.datasets import DatasetError, folder_dataset
from openrecog.data.shards import (
    ShardIndex,
    ShardStream,
    build_shard_loader,
    write_shards,
    write_shards_from_source,
)

NUM_IMAGES = 12
PER_CLASS = 3
# First-seen order differs from sorted order, so the test can tell which one was used.
CLASS_LABELS = ["zeta", "alpha", "mid", "beta"]

_resize = v2.Compose([v2.ToImage(), v2.Resize((8, 8)), v2.ToDtype(torch.float32, scale=True)])


def noisy_transform(image: Image.Image) -> torch.Tensor:
    """Tiny random noise: views differ, but the colour (which encodes the sample) survives."""
    tensor = _resize(image)
    return tensor + torch.rand(()) * 0.004


def sample_ids(images: torch.Tensor) -> list[int]:
    """Sample number of each row, read back from its red channel (10 per sample)."""
    return (images[:, 0].mean(dim=(1, 2)) * 255 / 10).round().long().tolist()


def make_images(folder: Path) -> list[tuple[Path, str]]:
    """Solid images whose red value encodes their number; PNG and JPEG alternate."""
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(NUM_IMAGES):
        path = folder / f"img{i}.{'png' if i % 2 else 'jpg'}"
        Image.new("RGB", (24, 24), (10 * i, 90, 160)).save(path)
        items.append((path, CLASS_LABELS[i // PER_CLASS]))
    return items


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    out = tmp_path / "shards"
    write_shards(make_images(tmp_path / "src"), out, max_count=4)
    return out


@pytest.fixture
def instance_dir(tmp_path: Path) -> Path:
    out = tmp_path / "instances"
    write_shards(make_images(tmp_path / "src"), out, max_count=5, instance_as_class=True)
    return out


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_write_shards_index_and_original_bytes(tmp_path) -> None:
    items = make_images(tmp_path / "src")
    broken = tmp_path / "src" / "broken.png"
    broken.write_bytes(b"not an image")
    notes = tmp_path / "src" / "notes.txt"
    notes.write_text("not an image extension")
    out = tmp_path / "shards"
    index = write_shards(
        iter(items[:5] + [(broken, "zeta"), (notes, "zeta")] + items[5:]), out, max_count=4
    )

    doc = json.loads((out / "index.json").read_text())
    assert doc["format"] == "openrecog-shards" and doc["version"] == 1
    assert doc["num_samples"] == NUM_IMAGES and doc["num_classes"] == 4
    assert doc["class_names"] == CLASS_LABELS  # first-seen order
    assert [s["samples"] for s in doc["shards"]] == [4, 4, 4]
    assert [s["file"] for s in doc["shards"]] == [f"shard-00000{i}.tar" for i in range(3)]
    assert doc["skipped"] == 2
    reasons = {Path(s["path"]).name: s["reason"] for s in doc["skipped_examples"]}
    assert reasons == {
        "broken.png": "not a recognised image format",
        "notes.txt": "not an image file extension",
    }
    assert [s.reason for s in index.skipped] == list(reasons.values())
    assert not list(out.glob("*.tmp"))

    members: dict[str, bytes] = {}
    for shard in sorted(out.glob("shard-*.tar")):
        members.update(tar_members(shard))
    assert len(members) == 3 * NUM_IMAGES
    for number, (path, label) in enumerate(items):
        key = f"{number:09d}"
        assert members[f"{key}{path.suffix}"] == path.read_bytes()  # stored unchanged
        assert members[f"{key}.cls"] == str(CLASS_LABELS.index(label)).encode()
        assert members[f"{key}.label"] == label.encode()

    loaded = ShardIndex.load(out)
    assert loaded.num_classes == 4 and loaded.class_names == CLASS_LABELS
    assert loaded.num_skipped == 2 and len(loaded.urls) == 3
    assert ShardIndex.load(out / "index.json").shards == loaded.shards


def test_class_names_fixed_vocabulary_and_overwrite(tmp_path, shard_dir) -> None:
    items = make_images(tmp_path / "src")
    with pytest.raises(DatasetError, match="already holds a shard set"):
        write_shards(items, shard_dir)
    names = ["alpha", "beta", "zeta"]  # "mid" is not in the vocabulary
    index = write_shards(items, shard_dir, class_names=names, overwrite=True)
    assert index.num_samples == NUM_IMAGES - PER_CLASS and index.class_names == names
    assert {s.reason for s in index.skipped} == {"label 'mid' is not in class_names"}
    assert sorted(p.name for p in shard_dir.iterdir()) == ["index.json", "shard-000000.tar"]
    members = tar_members(shard_dir / "shard-000000.tar")
    assert members["000000000.cls"] == b"2"  # zeta is class 2 of the given names


def test_nothing_usable_is_an_error(tmp_path) -> None:
    (tmp_path / "bad.png").write_bytes(b"junk")
    with pytest.raises(DatasetError, match="no usable images"):
        write_shards([(tmp_path / "bad.png", "a")], tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())


def test_loader_batches_keep_views_together(shard_dir) -> None:
    loader = build_shard_loader(shard_dir, noisy_transform, batch_size=12, views=3, seed=1)
    assert loader.dataset.num_classes == 4
    for images, labels in islice(loader, 6):
        assert images.shape == (12, 3, 8, 8) and images.dtype == torch.float32
        assert labels.shape == (12,) and labels.dtype == torch.int64
        ids = sample_ids(images)
        assert [i // PER_CLASS for i in ids] == labels.tolist()  # correct label per image
        groups = torch.tensor(ids).view(4, 3)
        assert (groups == groups[:, :1]).all()  # the 3 views of a sample are adjacent
        assert not torch.equal(images[0], images[1])  # ...and differently augmented


def test_batch_size_must_be_a_multiple_of_views(shard_dir) -> None:
    with pytest.raises(ValueError, match="multiple of views"):
        build_shard_loader(shard_dir, noisy_transform, batch_size=10, views=3)
    with pytest.raises(ValueError, match="rank 2 is not in"):
        build_shard_loader(shard_dir, noisy_transform, batch_size=4, rank=2, world_size=2)


def test_two_workers(shard_dir) -> None:
    loader = build_shard_loader(shard_dir, noisy_transform, batch_size=8, views=2, num_workers=2)
    batches = list(islice(loader, 6))
    for images, labels in batches:
        ids = sample_ids(images)
        assert images.shape == (8, 3, 8, 8)
        assert [i // PER_CLASS for i in ids] == labels.tolist()
        assert ids[0::2] == ids[1::2]
    # Batches alternate between the two workers, which read differently seeded streams.
    assert not torch.equal(batches[0][0], batches[1][0])


def first_batches(shard_dir: Path, n: int = 3, **kwargs) -> list[torch.Tensor]:
    loader = build_shard_loader(shard_dir, noisy_transform, batch_size=8, views=2, **kwargs)
    return [images for images, _ in islice(loader, n)]


def test_seeds_ranks_and_resume(shard_dir) -> None:
    base = first_batches(shard_dir, seed=3)
    again = first_batches(shard_dir, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(base, again, strict=True))
    rank1 = first_batches(shard_dir, seed=3, rank=1, world_size=2)
    resumed = first_batches(shard_dir, seed=3, start_step=100)
    for other in (rank1, resumed):
        assert any(not torch.equal(a, b) for a, b in zip(base, other, strict=True))


def test_reiterating_continues_with_new_data(shard_dir) -> None:
    stream = ShardStream(shard_dir, noisy_transform, views=2, batch_size=8)
    first = next(iter(stream))[0]
    second = next(iter(stream))[0]
    assert not torch.equal(first, second)


def test_instance_as_class(instance_dir) -> None:
    doc = json.loads((instance_dir / "index.json").read_text())
    assert doc["num_classes"] == doc["num_samples"] == NUM_IMAGES
    assert doc["instance_as_class"] is True
    assert "class_names" not in doc and "class_names_omitted" in doc
    assert [s["samples"] for s in doc["shards"]] == [5, 5, 2]
    index = ShardIndex.load(instance_dir)
    assert index.class_names is None and index.num_classes == NUM_IMAGES
    loader = build_shard_loader(index, noisy_transform, batch_size=8, views=2)
    for images, labels in islice(loader, 4):
        assert sample_ids(images) == labels.tolist()


def test_corrupt_member_is_skipped_at_read_time(instance_dir) -> None:
    shard = instance_dir / "shard-000000.tar"
    members = tar_members(shard)
    bad = "000000001.png"
    assert bad in members
    members[bad] = members[bad][:40]  # a truncated image inside the tar
    with tarfile.open(shard, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    loader = build_shard_loader(instance_dir, noisy_transform, batch_size=8, views=2, seed=5)
    with pytest.warns(RuntimeWarning, match="skipping unreadable training data"):
        labels = torch.cat([labels for _, labels in islice(loader, 20)])
    assert 1 not in labels.tolist()
    assert len(set(labels.tolist())) == NUM_IMAGES - 1


def test_stream_of_only_broken_images_fails_instead_of_hanging(tmp_path, monkeypatch) -> None:
    path = tmp_path / "truncated.png"
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (1, 2, 3)).save(buffer, format="PNG")
    path.write_bytes(buffer.getvalue()[:60])  # header intact: passes the write-time check
    write_shards([(path, "a")], tmp_path / "out")
    monkeypatch.setattr(shards, "MAX_CONSECUTIVE_ERRORS", 5)
    loader = build_shard_loader(tmp_path / "out", noisy_transform, batch_size=2)
    with pytest.warns(RuntimeWarning), pytest.raises(DatasetError, match="5 consecutive"):
        next(iter(loader))


def test_bad_index_errors(tmp_path, shard_dir) -> None:
    with pytest.raises(DatasetError, match="shard folder not found"):
        ShardIndex.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no shard index found"):
        build_shard_loader(tmp_path / "empty", noisy_transform, batch_size=4)

    index_path = shard_dir / "index.json"
    doc = json.loads(index_path.read_text())
    index_path.write_text("{not json")
    with pytest.raises(DatasetError, match="unreadable shard index"):
        ShardIndex.load(shard_dir)
    index_path.write_text(json.dumps({**doc, "format": "something-else"}))
    with pytest.raises(DatasetError, match="not a shard index"):
        ShardIndex.load(shard_dir)
    index_path.write_text(json.dumps({**doc, "version": 99}))
    with pytest.raises(DatasetError, match="version 99 is not supported"):
        ShardIndex.load(shard_dir)
    index_path.write_text(json.dumps({**doc, "num_samples": 99}))
    with pytest.raises(DatasetError, match="add up to 12"):
        ShardIndex.load(shard_dir)
    index_path.write_text(json.dumps({k: v for k, v in doc.items() if k != "shards"}))
    with pytest.raises(DatasetError, match="malformed shard index"):
        ShardIndex.load(shard_dir)
    index_path.write_text(json.dumps(doc))
    (shard_dir / "shard-000001.tar").unlink()
    with pytest.raises(DatasetError, match=r"1 shard file\(s\) missing: shard-000001.tar"):
        ShardIndex.load(shard_dir)


def test_write_from_folder_and_csv(tmp_path, pattern_folder) -> None:
    index = write_shards_from_source(pattern_folder, tmp_path / "folder", max_count=10)
    assert index.num_samples == 24 and len(index.shards) == 3
    assert index.class_names == folder_dataset(pattern_folder).class_names

    rows = ["path,label,split"]
    for path in sorted(pattern_folder.rglob("*.png")):
        split = "test" if path.parent.name == "class_5" else "train"
        rows.append(f"{path.relative_to(pattern_folder)},{path.parent.name},{split}")
    (pattern_folder / "labels.csv").write_text("\n".join(rows))
    train = write_shards_from_source(pattern_folder, tmp_path / "csv", split="train")
    assert train.num_samples == 20 and train.num_classes == 5
    instances = write_shards_from_source(
        pattern_folder, tmp_path / "inst", split="test", instance_as_class=True
    )
    assert instances.num_classes == instances.num_samples == 4
    with pytest.raises(DatasetError, match="needs labels.csv"):
        write_shards_from_source(pattern_folder, tmp_path / "x", layout="folder", split="train")
