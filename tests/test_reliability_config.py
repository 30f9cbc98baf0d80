"""Bad configs and awkward data: clear one-line errors, or it just works.

CLI mistakes print one ``error: ...`` line on stderr and exit 2, never a traceback; the
library raises its documented exceptions (``ConfigError``, ``DatasetError``,
``GalleryError``, all ``ValueError``). Classes with one image, duplicate files and mixed
image sizes are data, not errors.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from openrecog.config import ConfigError, load_config
from openrecog.data.datasets import DatasetError, folder_dataset
from openrecog.gallery import Gallery, GalleryError
from openrecog.models import save_artifact
from openrecog.serve import ServeSettings, create_app
from openrecog.train import Trainer
from tests.conftest import draw_pattern
from tests.reliability_tools import noise_image, tiny_model, torch_threads

runner = CliRunner()


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def _cli(*args: object):
    from openrecog.cli.main import app

    return runner.invoke(app, [str(a) for a in args])


def _assert_one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    for needle in needles:
        assert needle in result.output, result.output


YAML_CASES = {
    "unknown_section": ("trainer:\n  epochs: 3\n", "trainer: unknown key"),
    "unknown_key": ("model:\n  backbon: lcnet_050\n", "model.backbon: unknown key"),
    "wrong_type": ("train:\n  lr: fast\n", "train.lr"),
    "section_not_mapping": ("model: 3\n", "model"),
    "top_level_list": ("- a\n- b\n", "top level must be a mapping"),
    "not_yaml": ("model: {image_size: 32\n", "not valid YAML"),  # multi-line parser message
    "bad_choice": ("loss:\n  name: hinge\n", "loss.name"),
    "negative": ("train:\n  batch_size: -4\n", "train.batch_size"),
}


@pytest.mark.parametrize("case", sorted(YAML_CASES))
def test_bad_config_files_are_one_line_errors(case, tmp_path) -> None:
    text, needle = YAML_CASES[case]
    path = tmp_path / f"{case}.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle.split(":")[0]):
        load_config(path)
    _assert_one_line_error(_cli("train", path), needle)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.epochz=3", "train.epochz: unknown key"),
        ("train.batch_size=abc", "train.batch_size"),
        ("model.image_size=[1,2]", "model.image_size"),
        ("model.neck=donut", "model.neck"),
        ("nosuchsection.x=1", "nosuchsection: unknown key"),
        ("data.root=/no/such/folder", "/no/such/folder: folder not found"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, needle, tmp_path) -> None:
    # data.root=/x/y was taken for a config file path (its last part has no "=").
    result = _cli("train", override, "data.source=folder", f"train.output_dir={tmp_path}")
    _assert_one_line_error(result, needle)


def test_missing_config_file(tmp_path) -> None:
    _assert_one_line_error(_cli("train", tmp_path / "none.yaml"), "config file not found")


def _awkward_folder(root: Path) -> Path:
    """One image per class, a duplicated file (within and across classes), mixed sizes."""
    sizes = [(8, 8), (300, 40), (40, 300), (64, 64), (1, 1)]
    for kind, size in enumerate(sizes):
        folder = root / f"class_{kind}"
        folder.mkdir(parents=True)
        draw_pattern(kind, 0, size=64).resize(size).save(folder / "only.png")
    shutil.copy(root / "class_0" / "only.png", root / "class_0" / "copy.png")
    shutil.copy(root / "class_3" / "only.png", root / "class_1" / "same_as_class_3.png")
    return root


def test_one_image_classes_duplicates_and_mixed_sizes_train_and_register(model, tmp_path) -> None:
    root = _awkward_folder(tmp_path / "data")
    dataset = folder_dataset(root)
    assert len(dataset) == 7 and not dataset.skipped
    cfg = load_config(
        None,
        [
            "model.backbone=lcnet_050",
            "model.pretrained=false",
            "model.image_size=32",
            "model.embedding_dim=16",
            "data.source=folder",
            f"data.root={root}",
            "data.images_per_class=2",  # classes with one image are repeated as new views
            "train.batch_size=4",
            "train.max_steps=2",
            "train.progress=false",
            f"train.output_dir={tmp_path / 'runs'}",
            "eval.source=none",
        ],
    )
    assert Trainer(cfg).fit().steps == 2
    gallery = Gallery(model, threshold=0.0)
    report = gallery.register_folder(root)
    assert len(report.added) == 7 and not report.skipped
    assert gallery.classes() == {
        "class_0": 2,
        "class_1": 2,
        "class_2": 1,
        "class_3": 1,
        "class_4": 1,
    }
    hits = gallery.search(root / "class_0" / "only.png", k=2)
    assert [h.score for h in hits] == pytest.approx([1.0, 1.0], abs=1e-4)  # file and copy
    # an image registered under two labels: the answer is one of them, with score 1
    label, score = gallery.classify(root / "class_3" / "only.png")
    assert label in {"class_1", "class_3"} and score == pytest.approx(1.0, abs=1e-4)
    model_dir = save_artifact(model, tmp_path / "model")
    result = _cli("eval", model_dir, "--data", root)
    assert result.exit_code == 0, result.output  # one-image classes are galleries only


def test_unusable_training_data_is_a_clear_error(tmp_path) -> None:
    garbage = tmp_path / "garbage"
    for label in ("a", "b"):
        (garbage / label).mkdir(parents=True)
        (garbage / label / "x.png").write_text("not an image")
    single = tmp_path / "single"
    (single / "a").mkdir(parents=True)
    noise_image().save(single / "a" / "x.png")
    base = [
        "model.backbone=lcnet_050",
        "model.pretrained=false",
        "model.image_size=32",
        "data.source=folder",
        "train.max_steps=1",
        "train.progress=false",
        f"train.output_dir={tmp_path / 'runs'}",
        "eval.source=none",
    ]
    with pytest.raises(DatasetError, match="no usable images"):
        folder_dataset(garbage)
    _assert_one_line_error(_cli("train", *base, f"data.root={garbage}"), "no usable images")
    _assert_one_line_error(_cli("train", *base, f"data.root={single}"), "at least 2 classes")
    empty = tmp_path / "empty"
    empty.mkdir()
    _assert_one_line_error(_cli("train", *base, f"data.root={empty}"), "no image files found")


def test_empty_gallery_on_classify_everywhere(model, tmp_path) -> None:
    gallery = Gallery(model)
    query = tmp_path / "q.png"
    noise_image().save(query)
    for call in (lambda: gallery.classify(query), lambda: gallery.search(query, k=3)):
        with pytest.raises(GalleryError, match="the gallery is empty: register images first"):
            call()
    path = gallery.save(tmp_path / "g")
    for command in ("classify", "search"):
        _assert_one_line_error(_cli(command, path, query), "the gallery is empty")
    client = TestClient(create_app(Gallery.load(path), path, ServeSettings(api_key="k")))
    for route in ("/classify", "/search"):
        r = client.post(route, files={"file": ("q.png", query.read_bytes(), "image/png")})
        assert r.status_code == 409 and "the gallery is empty" in r.json()["detail"]
    r = client.post("/classify/batch", files=[("files", ("q.png", query.read_bytes()))])
    assert r.status_code == 409
    # registering into a folder without images, and removing from an empty gallery
    (tmp_path / "nothing").mkdir()
    _assert_one_line_error(_cli("register", path, tmp_path / "nothing"), "no image files found")
    _assert_one_line_error(_cli("remove", path, "--label", "x"), "no class 'x'")
    _assert_one_line_error(_cli("remove", path, "--id", "3"), "no item with id 3")


def test_serve_settings_reject_unknown_and_mistyped_options() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="extra"):
        ServeSettings(max_uploads=3)
    with pytest.raises(ValidationError, match="max_batch"):
        ServeSettings(max_batch="many")
    with pytest.raises(ValidationError, match="port"):
        ServeSettings(port=70000)
