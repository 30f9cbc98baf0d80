import numpy as np
import pytest

from openrecog.data.images import ImageLoadError
from openrecog.gallery import UNKNOWN, Gallery, GalleryError
from openrecog.models import create_model
from tests.conftest import draw_pattern


@pytest.fixture(scope="module")
def model():
    return create_model("lite0_gap_imagenet", image_size=96)


def test_register_classify_search_remove(model, pattern_folder) -> None:
    gallery = Gallery(model, threshold=0.0)
    report = gallery.register_folder(pattern_folder)
    assert len(report.added) == 24 and not report.skipped
    assert gallery.classes() == {f"class_{k}": 4 for k in range(6)}
    label, score = gallery.classify(draw_pattern(2, 9))
    assert label == "class_2" and score > 0.5
    hits = gallery.search(pattern_folder / "class_3" / "0.png", k=3)
    assert hits[0].label == "class_3" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    gallery.remove(hits[0].item_id)
    assert len(gallery) == 23
    assert gallery.remove_class("class_3") == 3
    assert "class_3" not in gallery.classes()
    with pytest.raises(GalleryError, match="no item"):
        gallery.remove(hits[0].item_id)


def test_unknown_below_threshold(model, pattern_folder) -> None:
    gallery = Gallery(model, threshold=0.999)
    gallery.register(pattern_folder / "class_0" / "0.png", "circle")
    label, score = gallery.classify(draw_pattern(5, 1))
    assert label == UNKNOWN and score < 0.999


def test_save_load_round_trip(model, pattern_folder, tmp_path) -> None:
    gallery = Gallery(model, threshold=0.42)
    gallery.register_folder(pattern_folder)
    gallery.remove(0)
    path = gallery.save(tmp_path / "g")
    loaded = Gallery.load(path)
    assert loaded.threshold == 0.42
    assert loaded.items() == gallery.items()
    query = draw_pattern(4, 7)
    assert loaded.search(query, k=5) == gallery.search(query, k=5)
    new_id = loaded.register(draw_pattern(1, 8), "class_1")
    assert new_id == 24  # ids never reused after removal
    loaded.save(path)  # overwrite in place, model files reused
    assert len(Gallery.load(path)) == 24
    assert not [p for p in tmp_path.iterdir() if p.name not in {"g", "classes"}]  # no temp dirs


def test_corrupted_gallery_is_detected(model, pattern_folder, tmp_path) -> None:
    gallery = Gallery(model)
    gallery.register_folder(pattern_folder)
    path = gallery.save(tmp_path / "g")
    items = (path / "items.json").read_text().replace("class_1", "class_X")
    (path / "items.json").write_text(items)
    with pytest.raises(GalleryError, match="checksum"):
        Gallery.load(path)
    with pytest.raises(GalleryError, match="not a gallery"):
        Gallery.load(tmp_path)


def test_bad_inputs_are_clear(model, pattern_folder, tmp_path) -> None:
    gallery = Gallery(model)
    with pytest.raises(GalleryError, match="empty"):
        gallery.classify(draw_pattern(0, 0))
    with pytest.raises(ImageLoadError):
        gallery.register(b"not an image", "x")
    assert len(gallery) == 0
    for label in ["", "  ", "unknown", "a\nb", "x" * 300]:
        with pytest.raises(GalleryError):
            gallery.register(draw_pattern(0, 0), label)
    (pattern_folder / "class_0" / "bad.png").write_bytes(b"\x89PNG broken")
    report = gallery.register_folder(pattern_folder)
    assert len(report.added) == 24 and len(report.skipped) == 1
    with pytest.raises(GalleryError, match="folder not found"):
        gallery.register_folder(tmp_path / "nope")
    with pytest.raises(GalleryError, match="shape"):
        gallery.add_embeddings(np.zeros((1, 3), np.float32), ["a"])
