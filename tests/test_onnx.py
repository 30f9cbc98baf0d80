import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from openrecog.cli.main import app
from openrecog.config import ModelConfig
from openrecog.gallery import Gallery
from openrecog.models import ArtifactError, create_model, load_artifact, save_artifact
from openrecog.models.artifact import CONFIG_FILE
from openrecog.models.encoder import ImageEncoder
from openrecog.models.onnx_engine import ONNX_FILE, ONNX_INT8_FILE, OnnxEngine
from openrecog.models.onnx_export import MIN_PARITY_COSINE, export_onnx, parity_inputs
from openrecog.storage import sha256_file
from tests.conftest import draw_pattern

runner = CliRunner()

# timm's test_efficientnet: the EfficientNet block structure of the shipped model at a
# fraction of the nodes, so one export takes ~5 s on two cores instead of ~15 s.
CONFIG = ModelConfig(
    backbone="test_efficientnet", pretrained=False, image_size=64, neck="gap", embedding_dim=32
)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model(CONFIG, pretrained=False).eval()
    return save_artifact(model, tmp_path_factory.mktemp("src") / "model", weights_dtype="float16")


@pytest.fixture(scope="module")
def exported(source, tmp_path_factory):
    """``openrecog export SOURCE OUT --int8-onnx``: (artifact folder, CLI output)."""
    out = tmp_path_factory.mktemp("exported") / "model"
    result = runner.invoke(app, ["export", str(source), str(out), "--int8-onnx"])
    assert result.exit_code == 0, result.output
    return out, result.output


def images(n: int) -> list:
    return [draw_pattern(kind % 6, kind) for kind in range(n)]


def test_cli_export_prints_parity_and_records_the_files(exported) -> None:
    out, output = exported
    assert "onnx: model.onnx" in output and "min cosine" in output
    assert "onnx int8: model.int8.onnx" in output and "MatMulInteger" in output
    config = json.loads((out / CONFIG_FILE).read_text())
    section = config["onnx"]
    assert section["opset"] == 18 and "dynamo=True" in section["exporter"]
    assert section["weights_sha256"] == config["weights_sha256"]
    assert section["fp32"]["file"] == ONNX_FILE
    assert section["fp32"]["sha256"] == sha256_file(out / ONNX_FILE)
    assert section["int8"]["sha256"] == sha256_file(out / ONNX_INT8_FILE)
    parity = section["fp32"]["parity"]
    assert parity["min_cosine"] >= MIN_PARITY_COSINE and parity["max_abs_diff"] < 1e-4
    assert parity["batch_sizes"] == [1, 2, 5] and parity["images"] == 16
    # int8: reported, not enforced; dynamic quantisation only touches the projection.
    assert section["int8"]["quantized_ops"] == {"MatMulInteger": 1}
    assert 0.9 < section["int8"]["parity"]["min_cosine"] <= 1.0 + 1e-6
    assert "onnx" not in config["metadata"]  # copied forward by other commands


def test_dynamic_batch_gives_the_same_rows(exported) -> None:
    out, _ = exported
    engine = OnnxEngine(out / ONNX_FILE)
    assert engine.embedding_dim == 32 and engine.image_size == 64
    batch = parity_inputs(64, [0.5] * 3, [0.5] * 3, batch_sizes=[5])[1]
    together = engine.run(batch)
    one_by_one = np.concatenate([engine.run(batch[i : i + 1]) for i in range(5)])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="batch"):
        engine.run(batch[:, :, :32])


def test_encoder_picks_onnxruntime_for_an_exported_artifact(exported, source) -> None:
    out, _ = exported
    model = load_artifact(out)
    auto = ImageEncoder(model, device="cpu")
    assert auto.engine_name == "onnxruntime" and auto.embedding_dim == 32
    torch_encoder = ImageEncoder(model, device="cpu", engine="torch")
    assert torch_encoder.engine_name == "torch"
    pictures = images(7)
    np.testing.assert_allclose(auto.encode(pictures), torch_encoder.encode(pictures), atol=1e-4)
    int8 = ImageEncoder(model, device="cpu", engine="onnx-int8")
    assert int8.engine_name == "onnxruntime-int8"
    cosine = (int8.encode(pictures) * torch_encoder.encode(pictures)).sum(axis=1)
    assert cosine.min() > 0.9
    # No ONNX in the artifact, or not from an artifact at all: PyTorch.
    assert ImageEncoder(load_artifact(source), device="cpu").engine_name == "torch"
    assert ImageEncoder(create_model(CONFIG, pretrained=False)).engine_name == "torch"
    with pytest.raises(ValueError, match="no fp32 ONNX export"):
        ImageEncoder(load_artifact(source), device="cpu", engine="onnx")
    with pytest.raises(ValueError, match="unknown engine"):
        ImageEncoder(model, engine="tensorrt")
    # The graph has no TTA: a model switched to TTA after loading must not use it.
    changed = load_artifact(out).set_tta("flip")
    assert ImageEncoder(changed, device="cpu").engine_name == "torch"


def test_weights_changed_after_loading_leave_the_artifact_behind(
    exported, pattern_folder, tmp_path
) -> None:
    """A model trained, interpolated or reloaded in place is no longer its artifact."""
    out, _ = exported
    pictures = images(5)
    original = ImageEncoder(load_artifact(out), device="cpu").encode(pictures)
    for change in ("data", "load_state_dict"):
        model = load_artifact(out)
        weight = model.neck.fc.weight
        if change == "data":  # how EMA and weight-averaging code writes, unseen by autograd
            weight.data.mul_(-1.0)
        else:
            state = model.state_dict()
            state["neck.fc.weight"] = -state["neck.fc.weight"]
            model.load_state_dict(state)
        encoder = ImageEncoder(model, device="cpu")
        assert encoder.engine_name == "torch", change
        changed = encoder.encode(pictures)
        assert np.abs(changed - original).max() > 0.1, change
        with pytest.raises(ValueError, match="other weights"):
            ImageEncoder(model, device="cpu", engine="onnx")
        # A saved gallery stores the changed weights, not links to the artifact's files.
        gallery = Gallery(model, threshold=0.0, device="cpu")
        gallery.register_folder(pattern_folder)
        gallery.save(tmp_path / change)
        assert not (tmp_path / change / "model" / ONNX_FILE).exists()
        reloaded = Gallery.load(tmp_path / change, device="cpu")
        np.testing.assert_allclose(reloaded.encoder.encode(pictures), changed, atol=1e-5)
    # Loading, moving and switching to eval mode change nothing: still onnxruntime.
    unchanged = load_artifact(out).to("cpu").eval()
    assert ImageEncoder(unchanged, device="cpu").engine_name == "onnxruntime"


def test_cli_export_at_another_image_size(source, tmp_path) -> None:
    out = tmp_path / "at96"
    result = runner.invoke(app, ["export", str(source), str(out), "--image-size", "96", "--onnx"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / CONFIG_FILE).read_text())["model"]["image_size"] == 96
    model = load_artifact(out)
    encoder = ImageEncoder(model, device="cpu")
    assert encoder.engine_name == "onnxruntime" and encoder.onnx_engine.image_size == 96
    pictures = images(4)
    np.testing.assert_allclose(
        encoder.encode(pictures),
        ImageEncoder(model, device="cpu", engine="torch").encode(pictures),
        atol=1e-4,
    )
    squeeze = save_artifact(
        create_model(CONFIG.model_copy(update={"neck": "squeeze"}), pretrained=False).eval(),
        tmp_path / "squeeze",
    )
    result = runner.invoke(
        app, ["export", str(squeeze), str(tmp_path / "s96"), "--image-size", "96"]
    )
    assert result.exit_code != 0 and "only a gap neck" in result.output
    assert not (tmp_path / "s96").exists()


def test_tampered_onnx_is_refused(exported, tmp_path) -> None:
    out, _ = exported
    copy = shutil.copytree(out, tmp_path / "copy")
    data = bytearray((copy / ONNX_FILE).read_bytes())
    data[-100] ^= 0xFF
    (copy / ONNX_FILE).write_bytes(bytes(data))
    model = load_artifact(copy)  # the weights are intact
    with pytest.raises(ArtifactError, match="checksum mismatch"):
        ImageEncoder(model, device="cpu")  # auto does not skip a tampered file
    with pytest.raises(ValueError, match="pass expected_sha256"):
        OnnxEngine(shutil.copy(copy / ONNX_FILE, tmp_path / "loose.onnx"))
    # A recorded file that is missing (a gallery's copy keeps config + weights): PyTorch.
    (copy / ONNX_FILE).unlink()
    assert ImageEncoder(load_artifact(copy), device="cpu").engine_name == "torch"


def test_gallery_on_an_exported_artifact_uses_onnxruntime(exported, pattern_folder) -> None:
    out, _ = exported
    gallery = Gallery(load_artifact(out), threshold=0.0, device="cpu")
    assert gallery.encoder.engine_name == "onnxruntime"
    report = gallery.register_folder(pattern_folder)
    assert len(report.added) == 24
    label, score = gallery.classify(pattern_folder / "class_2" / "1.png")
    assert label == "class_2" and score > 0.999
    assert Gallery(load_artifact(out), engine="torch").encoder.engine_name == "torch"


def test_tta_runs_inside_the_graph_and_bad_parity_is_refused(tmp_path) -> None:
    torch.manual_seed(1)
    model = create_model(CONFIG, pretrained=False, tta="flip").eval()
    report = export_onnx(model, tmp_path / "tta.onnx", batch_sizes=(1, 3))
    assert report.parity.min_cosine >= MIN_PARITY_COSINE
    # The flip really is in the graph: a flipped image embeds the same.
    engine = OnnxEngine(report.path, expected_sha256=report.sha256)
    batch = parity_inputs(64, [0.5] * 3, [0.5] * 3, batch_sizes=[2])[1]
    np.testing.assert_allclose(engine.run(batch), engine.run(batch[..., ::-1]), atol=1e-5)
    with pytest.raises(
        ValueError, match=r"does not match PyTorch: min cosine [01]\.\d+, max abs diff"
    ):
        export_onnx(model, tmp_path / "strict.onnx", batch_sizes=(2,), min_cosine=1.5)
    assert not (tmp_path / "strict.onnx").exists()
    assert not list(tmp_path.glob(".*.tmp"))


def test_int8_artifact_exports_its_int8_weights_losslessly(tmp_path) -> None:
    import onnx

    from openrecog.models.onnx_export import (
        add_onnx_to_artifact,
        restore_float_weights,
        store_int8_weights,
    )

    torch.manual_seed(2)
    model = create_model(CONFIG, pretrained=False).eval()
    folder = save_artifact(model, tmp_path / "int8", weights_dtype="int8")
    report = add_onnx_to_artifact(folder, int8=True)
    # Every weight the artifact stores as int8 is stored as int8 in the graph too (BatchNorm
    # folding keeps them int8 per output channel), so the export is exact, not approximate.
    assert report.fp32.int8_weights > 0
    assert report.fp32.parity.max_abs_diff < 1e-5
    graph = onnx.load(str(report.fp32.path))
    dequantize = [n for n in graph.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dequantize) == report.fp32.int8_weights
    # Undoing it gives back a graph without them, which dynamic quantisation can read.
    assert restore_float_weights(graph) == report.fp32.int8_weights
    assert not [n for n in graph.graph.node if n.op_type == "DequantizeLinear"]
    assert report.int8.quantized_ops == {"MatMulInteger": 1}
    # float32 weights are never int8 per channel: nothing is changed.
    fp32 = export_onnx(model, tmp_path / "float.onnx", batch_sizes=(2,))
    assert fp32.int8_weights == 0
    assert store_int8_weights(onnx.load(str(fp32.path))) == 0


def test_saved_gallery_keeps_the_onnx_export(exported, pattern_folder, tmp_path) -> None:
    out, _ = exported
    gallery = Gallery(load_artifact(out), threshold=0.0, device="cpu")
    gallery.register_folder(pattern_folder)
    gallery.save(tmp_path / "g")
    assert (tmp_path / "g" / "model" / ONNX_FILE).is_file()
    reloaded = Gallery.load(tmp_path / "g", device="cpu")
    assert reloaded.encoder.engine_name == "onnxruntime"
    assert reloaded.classify(pattern_folder / "class_3" / "0.png")[0] == "class_3"
    reloaded.save(tmp_path / "g")  # saving again over itself keeps it too
    assert Gallery.load(tmp_path / "g", device="cpu").encoder.engine_name == "onnxruntime"
    # A model changed after loading is saved anew, without an ONNX file that no longer fits.
    changed = Gallery(load_artifact(out).set_tta("flip"), device="cpu")
    changed.save(tmp_path / "tta")
    assert not (tmp_path / "tta" / "model" / ONNX_FILE).exists()


def test_pca_onnx_and_the_server_reports_its_engine(exported, pattern_folder, tmp_path) -> None:
    from fastapi.testclient import TestClient

    from openrecog.serve import ServeSettings, create_app

    out, _ = exported
    reduced = tmp_path / "pca"
    args = ["pca", str(out), str(reduced), "--dim", "8", "--data", str(pattern_folder), "--onnx"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "onnx: model.onnx" in result.output
    model = load_artifact(reduced)
    encoder = ImageEncoder(model, device="cpu")
    assert encoder.engine_name == "onnxruntime" and encoder.embedding_dim == 8
    gallery = Gallery(model, threshold=0.0, device="cpu")
    gallery.register_folder(pattern_folder)
    client = TestClient(create_app(gallery, None, ServeSettings()))
    assert client.get("/health").json()["engine"] == "onnxruntime"
    picture = (pattern_folder / "class_1" / "2.png").read_bytes()
    answer = client.post("/classify", files={"file": ("q.png", picture, "image/png")}).json()
    assert answer["label"] == "class_1"


def test_server_engine_settings_reach_onnxruntime(exported, pattern_folder, tmp_path) -> None:
    out, _ = exported
    gallery = Gallery(load_artifact(out), threshold=0.0, device="cpu")
    gallery.register_folder(pattern_folder)
    gallery.save(tmp_path / "g")
    served = Gallery.load(tmp_path / "g", device="cpu", threads=1, spinning=False)
    options = served.encoder.onnx_engine.session.get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    default = gallery.encoder.onnx_engine.session.get_session_options()
    with pytest.raises(RuntimeError, match="allow_spinning"):  # not set: onnxruntime spins
        default.get_session_config_entry("session.intra_op.allow_spinning")
    picture = pattern_folder / "class_3" / "0.png"
    np.testing.assert_allclose(
        served.encoder.encode([picture]), gallery.encoder.encode([picture]), atol=1e-5
    )


def test_cli_serve_runs_one_quiet_onnxruntime_thread_per_request(
    exported, pattern_folder, tmp_path, monkeypatch
) -> None:
    import uvicorn

    out, _ = exported
    Gallery(load_artifact(out), threshold=0.0, device="cpu").save(tmp_path / "g")
    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda web, **kw: apps.append(web))
    torch_threads = torch.get_num_threads()
    try:
        for extra in ([], ["--threads", "2"]):
            result = runner.invoke(app, ["serve", str(tmp_path / "g"), *extra])
            assert result.exit_code == 0, result.output
        assert torch.get_num_threads() == 1  # torch only preprocesses in the server
    finally:
        torch.set_num_threads(torch_threads)  # the server's setting, not the test session's
    threads = []
    for web in apps:
        session = web.state.service.gallery.encoder.onnx_engine.session
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
        threads.append(options.intra_op_num_threads)
    assert threads == [1, 2]
