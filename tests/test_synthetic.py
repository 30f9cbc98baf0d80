import csv
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from openrecog.data import synthetic as syn


def _gray_small(img: Image.Image, side: int = 32) -> np.ndarray:
    return np.asarray(
        img.convert("L").resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32
    )


def _index_of_kind(kind: str, seed: int = 0) -> int:
    for i in range(200):
        if syn.make_template(i, seed).kind == kind:
            return i
    raise AssertionError(f"no {kind} template in the first 200")


def test_template_is_deterministic_and_hashable():
    a = syn.make_template(7, seed=3)
    b = syn.make_template(7, seed=3)
    assert a == b
    assert hash(a) == hash(b)
    assert a.name == f"tpl_00007_{a.kind}"
    assert a.kind in syn.KINDS
    assert 1 <= len({f.path for f in a.fonts}) <= 3
    assert syn.make_template(7, seed=4) != a
    assert syn.make_template(8, seed=3) != a


@pytest.mark.parametrize("degrade", [False, True])
def test_render_is_deterministic(degrade):
    tpl = syn.make_template(11)
    a = syn.render(tpl, random.Random(5), degrade=degrade)
    b = syn.render(tpl, random.Random(5), degrade=degrade)
    assert a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("degrade", [False, True])
def test_render_size_keeps_aspect(degrade):
    for index in range(5):
        tpl = syn.make_template(index)
        img = syn.render(tpl, random.Random(0), degrade=degrade, size=200)
        assert img.mode == "RGB"
        assert max(img.size) == 200
        aspect = tpl.width / tpl.height
        assert abs(img.width / img.height - aspect) < 0.02
    full = syn.render(syn.make_template(0), random.Random(0), degrade=False)
    assert max(full.size) == syn.BASE_LONG_SIDE


def test_all_kinds_and_page_shapes():
    templates = [syn.make_template(i) for i in range(50)]
    assert {t.kind for t in templates} == set(syn.KINDS)
    for t in templates:
        if t.kind == "receipt":
            assert t.height > 1.8 * t.width
        elif t.kind == "id_card":
            assert t.width > 1.4 * t.height
        else:
            assert 1.25 < t.height / t.width < 1.5
    assert len({t.title for t in templates}) > 45


def test_different_templates_look_different():
    imgs = [
        _gray_small(syn.render(syn.make_template(i), random.Random(0), degrade=False))
        for i in range(6)
    ]
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert np.abs(imgs[i] - imgs[j]).mean() > 1.0


def test_instances_vary_but_stay_closer_than_other_templates():
    n_templates, n_instances = 8, 3
    feats = []
    for t in range(n_templates):
        tpl = syn.make_template(t, seed=1)
        raw = [
            syn.render(tpl, random.Random(1000 * t + k), degrade=False) for k in range(n_instances)
        ]
        # Field contents must change from one instance to the next.
        assert not np.array_equal(np.asarray(raw[0]), np.asarray(raw[1]))
        feats.append([_gray_small(im) for im in raw])
    within, between = [], []
    for t in range(n_templates):
        for k in range(n_instances):
            for t2 in range(t, n_templates):
                for k2 in range(n_instances):
                    if (t2, k2) <= (t, k):
                        continue
                    d = float(np.abs(feats[t][k] - feats[t2][k2]).mean())
                    (within if t == t2 else between).append(d)
    assert np.mean(within) < 0.5 * np.mean(between)


def test_degraded_instances_still_resemble_their_template():
    # Degradations shift brightness, so compare contrast-normalised thumbnails by correlation.
    def norm(img):
        a = _gray_small(img, 16).ravel()
        a -= a.mean()
        return a / (a.std() + 1e-6)

    n = 8
    clean = np.stack(
        [norm(syn.render(syn.make_template(t), random.Random(t), degrade=False)) for t in range(n)]
    )
    noisy = np.stack(
        [norm(syn.render(syn.make_template(t), random.Random(t + 50))) for t in range(n)]
    )
    corr = noisy @ clean.T / clean.shape[1]
    own = np.diag(corr).mean()
    other = (corr.sum() - np.trace(corr)) / (n * (n - 1))
    assert own > other + 0.2


def test_generate_folder(tmp_path: Path):
    root = syn.generate_folder(tmp_path / "ds", num_classes=3, images_per_class=2, seed=0, size=96)
    assert root == tmp_path / "ds"
    files = sorted(root.rglob("*.jpg"))
    assert len(files) == 6
    with (root / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert set(rows[0]) == {"path", "label", "split"}
    names = {syn.make_template(i).name for i in range(3)}
    assert {r["label"] for r in rows} == names
    assert {r["split"] for r in rows} == {"train"}
    for r in rows:
        p = root / r["path"]
        assert p.is_file()
        assert p.parent.name == r["label"]
        with Image.open(p) as im:
            assert max(im.size) == 96
            assert im.mode == "RGB"

    # Appending a disjoint class range with another split keeps a single header.
    syn.generate_folder(
        root,
        num_classes=2,
        images_per_class=1,
        start_index=3,
        size=96,
        split="query",
        progress=True,
    )
    lines = (root / "labels.csv").read_text().splitlines()
    assert lines[0] == "path,label,split"
    assert sum(line.startswith("path,") for line in lines) == 1
    assert len(lines) == 1 + 6 + 2
    assert lines[-1].endswith(",query")
    # Re-running does not duplicate rows.
    syn.generate_folder(root, num_classes=3, images_per_class=2, size=96)
    assert len((root / "labels.csv").read_text().splitlines()) == 9


def test_generate_folder_is_deterministic(tmp_path: Path):
    a = syn.generate_folder(tmp_path / "a", num_classes=2, images_per_class=2, seed=5, size=80)
    b = syn.generate_folder(tmp_path / "b", num_classes=2, images_per_class=2, seed=5, size=80)
    fa = sorted(p.relative_to(a) for p in a.rglob("*.jpg"))
    fb = sorted(p.relative_to(b) for p in b.rglob("*.jpg"))
    assert fa == fb
    for rel in fa:
        assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / "labels.csv").read_text() == (b / "labels.csv").read_text()


def test_dataset():
    ds = syn.SyntheticDocumentDataset(num_classes=3, images_per_class=2, seed=2, size=64)
    assert len(ds) == 6
    assert ds.num_classes == 3
    assert ds.labels == [0, 0, 1, 1, 2, 2]
    assert ds.class_names == [syn.make_template(i, 2).name for i in range(3)]
    img, label = ds[3]
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert max(img.size) == 64
    assert label == 1
    again, _ = ds[3]
    assert np.array_equal(np.asarray(img), np.asarray(again))
    assert ds[-1][1] == 2
    with pytest.raises(IndexError):
        ds[6]
    # Two instances of one class are different renders.
    assert not np.array_equal(np.asarray(ds[0][0]), np.asarray(ds[1][0]))


def test_dataset_transform_and_start_index():
    ds = syn.SyntheticDocumentDataset(
        2, 1, start_index=10, size=48, degrade=False, transform=lambda im: np.asarray(im).shape
    )
    shape, label = ds[1]
    assert label == 1
    assert len(shape) == 3 and shape[2] == 3
    assert ds.class_names[0] == syn.make_template(10).name


def test_find_fonts_returns_existing_files():
    fonts = syn.find_fonts()
    assert fonts == sorted(fonts, key=str)
    for p in fonts:
        assert isinstance(p, Path)
        assert p.is_file()
        assert p.suffix.lower() in (".ttf", ".otf")


def test_font_fallback_without_system_fonts(monkeypatch):
    monkeypatch.setattr(syn, "find_fonts", lambda: [])
    for kind in syn.KINDS:
        tpl = syn.make_template(_index_of_kind(kind))
        assert all(f.path is None for f in tpl.fonts)
        img = syn.render(tpl, random.Random(0), degrade=True, size=128)
        assert img.mode == "RGB"
        arr = np.asarray(img.convert("L"), dtype=np.float32)
        assert arr.std() > 5  # something was actually drawn
