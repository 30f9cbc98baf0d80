import json

import pytest
from typer.testing import CliRunner

from openrecog.cli.main import app
from openrecog.models import create_model, save_artifact
from tests.conftest import draw_pattern

runner = CliRunner()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "m"
    return save_artifact(create_model("lite0_gap_imagenet", image_size=64), path)


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def test_register_classify_search_remove(model_dir, pattern_folder, tmp_path) -> None:
    gallery = tmp_path / "gallery"
    result = invoke("register", gallery, pattern_folder, "--model", model_dir, "--threshold", "0.1")
    assert result.exit_code == 0, result.output
    assert "registered 24 images" in result.output
    query = tmp_path / "q.png"
    draw_pattern(3, 9).save(query)
    result = invoke("classify", gallery, query, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)[0]["label"] == "class_3"
    result = invoke("search", gallery, query, "-k", "3")
    assert result.exit_code == 0 and len(result.output.strip().splitlines()) == 3
    result = invoke("remove", gallery, "--label", "class_3")
    assert result.exit_code == 0 and "removed 4" in result.output
    info = json.loads(invoke("info", gallery).output)
    assert info["items"] == 20 and info["classes"] == 5


def test_errors_are_one_line_without_traceback(model_dir, pattern_folder, tmp_path) -> None:
    cases = [
        ("train", "train.epochz=3"),
        ("register", tmp_path / "g", tmp_path / "missing", "--model", model_dir),
        ("register", tmp_path / "g2", pattern_folder),  # new gallery without --model
        ("classify", tmp_path / "nope", pattern_folder / "class_0" / "0.png"),
        ("eval", "no-such-model", "--data", pattern_folder),
        ("remove", tmp_path / "nope"),
    ]
    for args in cases:
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert "Traceback" not in result.output
        assert result.output.startswith("error: "), result.output


def test_classify_reports_unreadable_images(model_dir, pattern_folder, tmp_path) -> None:
    gallery = tmp_path / "g"
    assert invoke("register", gallery, pattern_folder, "--model", model_dir).exit_code == 0
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"GIF89a broken")
    result = invoke("classify", gallery, bad)
    assert result.exit_code == 1
    assert "bad.jpg" in result.output and "Traceback" not in result.output


def test_eval_command_writes_json(model_dir, pattern_folder, tmp_path) -> None:
    out = tmp_path / "m.json"
    result = invoke("eval", model_dir, "--data", pattern_folder, "--json", out)
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert 0 <= metrics["map@5"] <= 1 and "tpr@fpr=1e-03" in metrics


def test_models_lists_registry() -> None:
    result = invoke("models")
    assert result.exit_code == 0 and "lite0_squeeze" in result.output


def test_train_module_entry_point(tmp_path) -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "openrecog.train", "train.epochz=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "train.epochz: unknown key" in result.stderr


def test_pca_command_writes_a_smaller_model(pattern_folder, tmp_path) -> None:
    from openrecog.models import load_model

    source = save_artifact(
        create_model("lite0_squeeze", pretrained=False, image_size=64, embedding_dim=32).eval(),
        tmp_path / "base",
    )
    out = tmp_path / "pca"
    result = invoke("pca", source, out, "--dim", "8", "--data", pattern_folder)
    assert result.exit_code == 0, result.output
    assert "32-d -> 8-d" in result.output
    reduced = load_model(out)
    assert reduced.embedding_dim == 8
    assert reduced.artifact_metadata["pca_fit"]["fit_images"] == 24
    again = invoke("pca", source, out, "--dim", "8", "--data", pattern_folder)
    assert again.exit_code == 2 and "already exists" in again.output
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    refused = invoke("pca", source, other, "--dim", "8", "--data", pattern_folder, "--force")
    assert refused.exit_code == 2 and "not a model artifact" in refused.output
    assert (other / "keep.txt").read_text() == "user data"
    neither = invoke("pca", source, tmp_path / "x")
    assert neither.exit_code == 2 and "exactly one of" in neither.output
