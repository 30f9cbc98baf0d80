from collections import Counter

import pytest
import torch

from openrecog.config import AugmentConfig
from openrecog.data.datasets import AugmentedDataset, DatasetError, csv_dataset, folder_dataset
from openrecog.data.samplers import ClassBalancedBatchSampler
from openrecog.data.transforms import build_train_transform


def test_folder_dataset_skips_bad_files(pattern_folder) -> None:
    (pattern_folder / "class_0" / "broken.jpg").write_bytes(b"not an image")
    (pattern_folder / "class_0" / "notes.txt").write_text("ignored: not an image extension")
    dataset = folder_dataset(pattern_folder)
    assert len(dataset) == 24
    assert dataset.num_classes == 6
    assert [s.reason for s in dataset.skipped] == ["not a recognised image format"]
    image, label = dataset[0]
    assert image.mode == "RGB"
    assert label == 0


def test_files_at_top_level_are_classes_by_stem(tmp_path) -> None:
    from tests.conftest import draw_pattern

    draw_pattern(1, 0).save(tmp_path / "invoice_acme.png")
    draw_pattern(2, 0).save(tmp_path / "receipt_bob.jpg")
    dataset = folder_dataset(tmp_path)
    assert "invoice_acme" in dataset.class_names
    assert "receipt_bob" in dataset.class_names


def test_empty_and_missing_folders(tmp_path) -> None:
    with pytest.raises(DatasetError, match="folder not found"):
        folder_dataset(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no image files"):
        folder_dataset(tmp_path / "empty")


def test_csv_dataset_with_splits(tmp_path, pattern_folder) -> None:
    rows = ["path,label,split"]
    for _i, path in enumerate(sorted(pattern_folder.rglob("*.png"))):
        split = "test" if path.parent.name in {"class_4", "class_5"} else "train"
        rows.append(f"{path.relative_to(pattern_folder)},{path.parent.name},{split}")
    (pattern_folder / "labels.csv").write_text("\n".join(rows))
    train = csv_dataset(pattern_folder, split="train")
    test = csv_dataset(pattern_folder, split="test")
    assert train.num_classes == 4 and test.num_classes == 2
    assert not set(train.class_names) & set(test.class_names)
    with pytest.raises(DatasetError, match="no rows"):
        csv_dataset(pattern_folder, split="val")


def test_instance_as_class_and_min_filter(pattern_folder) -> None:
    dataset = folder_dataset(pattern_folder)
    instances = dataset.instance_as_class()
    assert instances.num_classes == len(dataset) == len(set(instances.labels))
    (pattern_folder / "class_0" / "1.png").unlink()
    (pattern_folder / "class_0" / "2.png").unlink()
    (pattern_folder / "class_0" / "3.png").unlink()
    filtered = folder_dataset(pattern_folder).filter_min_images(2)
    assert filtered.num_classes == 5


def test_sampler_puts_m_per_class_in_each_batch() -> None:
    labels = [c for c in range(10) for _ in range(3)] + [10]  # class 10 has a single image
    sampler = ClassBalancedBatchSampler(labels, batch_size=8, m_per_class=4, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5  # 11 classes // 2 per batch, last dropped
    for batch in batches:
        counts = Counter(labels[i] for i, _ in batch)
        assert len(counts) == 2 and set(counts.values()) == {4}
    seen = {labels[i] for b in batches for i, _ in b}
    assert len(seen) == 10


def test_sampler_resume_reproduces_the_rest_of_the_epoch() -> None:
    labels = [c for c in range(20) for _ in range(2)]
    full = ClassBalancedBatchSampler(labels, 8, 2, seed=3)
    full.set_epoch(1)
    expected = list(full)
    resumed = ClassBalancedBatchSampler(labels, 8, 2, seed=3)
    resumed.load_state_dict({"epoch": 1, "start_batch": 2, "seed": 3})
    assert list(resumed) == expected[2:]
    full.set_epoch(2)
    assert list(full) != expected  # new order each epoch


def test_augmented_views_are_seeded(pattern_folder) -> None:
    dataset = AugmentedDataset(
        folder_dataset(pattern_folder),
        build_train_transform(64, [0.5] * 3, [0.5] * 3, AugmentConfig()),
    )
    a, _ = dataset[(0, 11)]
    b, _ = dataset[(0, 11)]
    c, _ = dataset[(0, 12)]
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (3, 64, 64)
