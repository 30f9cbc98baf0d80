import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from openrecog.cli.main import WeightsDtype, app
from openrecog.models import ArtifactError, create_model, load_model, save_artifact
from openrecog.models.artifact import CONFIG_FILE, WEIGHTS_FILE
from openrecog.models.compression import (
    INT8_SCALE_SUFFIX,
    WEIGHTS_DTYPES,
    dequantize_state_dict,
    embedding_min_cosine,
    quantize_int8,
    quantize_state_dict,
)
from openrecog.storage import sha256_file

runner = CliRunner()


@pytest.fixture(scope="module")
def model():
    # lite0_squeeze at 64 px, random init: small and fast, yet its embeddings of different
    # random images differ clearly (pairwise cosine ~0.9), so the fidelity check means something.
    torch.manual_seed(0)
    return create_model("lite0_squeeze", pretrained=False, image_size=64).eval()


@pytest.fixture(scope="module")
def artifacts(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("artifacts")
    return {
        dtype: save_artifact(model, root / dtype, metadata={"threshold": 0.7}, weights_dtype=dtype)
        for dtype in WEIGHTS_DTYPES
    }


def images(n: int = 8, size: int = 64) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


def weights_size(path) -> int:
    return (path / WEIGHTS_FILE).stat().st_size


def test_quantize_int8_is_symmetric_per_output_channel() -> None:
    w = torch.randn(4, 3, 3, 3)
    w[1] *= 100  # very different channel ranges get their own scales
    w[2] = 0  # an all-zero channel must not divide by zero
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert scale.dtype == torch.float32 and scale.shape == (4,)
    expected = w.abs().reshape(4, -1).amax(dim=1) / 127
    torch.testing.assert_close(scale[[0, 1, 3]], expected[[0, 1, 3]])
    assert scale[2] == 1 and (q[2] == 0).all()
    assert q.abs().max() == 127 and q.min() >= -127
    error = (q.float() * scale.view(-1, 1, 1, 1) - w).abs().reshape(4, -1).amax(dim=1)
    assert (error <= scale / 2 + 1e-6).all()
    with pytest.raises(ValueError, match="NaN or infinite"):
        quantize_int8(torch.full((2, 600), float("inf")))


def test_quantize_state_dict_rules() -> None:
    state = {
        "conv.weight": torch.randn(32, 16, 3, 3),  # 4608 elements, ndim 4 -> int8
        "fc.weight": torch.randn(16, 64),  # exactly 1024 -> int8
        "small.weight": torch.randn(8, 8),  # 64 elements -> float16
        "long.bias": torch.randn(4096),  # 1-D -> float16
        "bn.num_batches_tracked": torch.tensor(7),  # integer -> untouched
    }
    q = quantize_state_dict(state, "int8")
    assert set(q) == set(state) | {
        f"conv.weight{INT8_SCALE_SUFFIX}",
        f"fc.weight{INT8_SCALE_SUFFIX}",
    }
    assert q["conv.weight"].dtype == q["fc.weight"].dtype == torch.int8
    assert q[f"conv.weight{INT8_SCALE_SUFFIX}"].shape == (32,)
    assert q[f"fc.weight{INT8_SCALE_SUFFIX}"].dtype == torch.float32
    assert q["small.weight"].dtype == q["long.bias"].dtype == torch.float16
    assert q["bn.num_batches_tracked"].dtype == torch.int64
    back = dequantize_state_dict(q)
    assert set(back) == set(state)
    assert all(back[k].dtype == state[k].dtype for k in state)
    torch.testing.assert_close(back["conv.weight"], state["conv.weight"], rtol=0, atol=0.02)

    half = quantize_state_dict(state, "float16")
    assert set(half) == set(state)
    assert all(half[k].dtype == torch.float16 for k in state if k != "bn.num_batches_tracked")
    assert half["bn.num_batches_tracked"].dtype == torch.int64
    big = quantize_state_dict({"bn.running_var": torch.tensor([1e6, 1.0])}, "float16")
    assert big["bn.running_var"].dtype == torch.float32  # would overflow float16: kept exact

    same = quantize_state_dict(state, "float32")
    assert all(torch.equal(same[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="allowed: float32, float16, int8"):
        quantize_state_dict(state, "int4")


def test_dequantize_rejects_inconsistent_int8() -> None:
    q = quantize_state_dict({"w": torch.randn(8, 256)}, "int8")
    with pytest.raises(ValueError, match="has no scale"):
        dequantize_state_dict({"w": q["w"]})
    with pytest.raises(ValueError, match="has no int8 tensor"):
        dequantize_state_dict({f"w{INT8_SCALE_SUFFIX}": q[f"w{INT8_SCALE_SUFFIX}"]})


@pytest.mark.parametrize(
    ("dtype", "min_ratio", "min_cosine"), [("float16", 1.9, 0.9999), ("int8", 3.0, 0.99)]
)
def test_round_trip_is_smaller_and_close(model, artifacts, dtype, min_ratio, min_cosine) -> None:
    path = artifacts[dtype]
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["weights_dtype"] == dtype and config["metadata"] == {"threshold": 0.7}
    # measured: float16 2.00x, int8 3.81x smaller than float32
    assert weights_size(artifacts["float32"]) / weights_size(path) >= min_ratio

    stored = load_file(str(path / WEIGHTS_FILE))
    assert stored["backbone.bn1.num_batches_tracked"].dtype == torch.int64
    assert stored["backbone.bn1.weight"].dtype == torch.float16
    assert stored["backbone.conv_stem.weight"].dtype == torch.float16  # 864 < 1024 elements
    assert stored["backbone.conv_head.weight"].dtype == (
        torch.int8 if dtype == "int8" else torch.float16
    )

    loaded = load_model(path)
    assert not loaded.training and loaded.artifact_weights_dtype == dtype
    assert loaded.artifact_metadata["threshold"] == 0.7
    assert all(v.dtype == torch.float32 for v in loaded.parameters())
    x = images()
    with torch.no_grad():
        reference, out = model(x), loaded(x)
    assert out.dtype == torch.float32
    # The check is not vacuous: different images embed clearly apart (measured min ~0.90) ...
    assert (reference @ reference.T).min() < 0.98
    # ... while the reloaded model stays close (measured min: float16 0.999997, int8 0.9988).
    assert (reference * out).sum(dim=1).min() >= min_cosine
    again = load_model(path).state_dict()  # dequantisation is deterministic
    assert all(torch.equal(again[k], v) for k, v in loaded.state_dict().items())


def test_float32_is_unchanged_and_old_artifacts_load(model, artifacts) -> None:
    path = artifacts["float32"]
    plain = path.parent / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(plain))
    assert sha256_file(path / WEIGHTS_FILE) == sha256_file(plain)  # byte-compatible weights
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["weights_dtype"] == "float32"
    del config["weights_dtype"]  # an artifact written before the key existed
    (path / CONFIG_FILE).write_text(json.dumps(config))
    loaded = load_model(path)
    assert loaded.artifact_weights_dtype == "float32"
    x = images(2)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_only_lossless_save_claims_the_artifact(tmp_path) -> None:
    model = create_model("docclassifier_lcnet050", image_size=64)
    save_artifact(model, tmp_path / "q", weights_dtype="int8")
    assert getattr(model, "artifact_sha256", None) is None
    path = save_artifact(model, tmp_path / "f")
    assert model.artifact_sha256 == json.loads((path / CONFIG_FILE).read_text())["weights_sha256"]


def test_corrupted_int8_artifact_fails_checksum(model, tmp_path) -> None:
    path = save_artifact(model, tmp_path / "m", weights_dtype="int8")
    with open(path / WEIGHTS_FILE, "r+b") as handle:
        handle.seek(-100, 2)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match="checksum"):
        load_model(path)


def test_unknown_weights_dtype(model, tmp_path) -> None:
    with pytest.raises(ValueError, match="allowed: float32, float16, int8"):
        save_artifact(model, tmp_path / "bad", weights_dtype="int4")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.iterdir())
    path = save_artifact(model, tmp_path / "m", weights_dtype="int8")
    config = json.loads((path / CONFIG_FILE).read_text())
    config["weights_dtype"] = "int4"
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="unknown weights_dtype 'int4'"):
        load_model(path)


def test_embedding_min_cosine_is_deterministic(model) -> None:
    assert embedding_min_cosine(model, model, 64) == pytest.approx(1.0, abs=1e-6)
    model.train()
    other = create_model("lite0_squeeze", pretrained=False, image_size=64)
    first = embedding_min_cosine(model, other, 64)
    assert first == embedding_min_cosine(model, other, 64) and first < 0.99
    assert model.training  # mode restored
    model.eval()


def test_cli_export(artifacts, tmp_path) -> None:
    assert [w.value for w in WeightsDtype] == list(WEIGHTS_DTYPES)
    source, out = artifacts["float32"], tmp_path / "small"
    result = runner.invoke(app, ["export", str(source), str(out), "--weights", "int8"])
    assert result.exit_code == 0, result.output
    size = float(re.search(r"([\d.]+) MB", result.output).group(1))
    cosine = float(re.search(r"min cosine .*: ([\d.]+)", result.output).group(1))
    assert size * 1e6 <= weights_size(source) / 3 + 10_000 and cosine >= 0.99
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["weights_dtype"] == "int8"
    assert config["metadata"] == {
        "threshold": 0.7,
        "exported_from": str(source),
        "weights_dtype": "int8",
    }
    assert load_model(out).artifact_metadata["threshold"] == 0.7

    refused = runner.invoke(app, ["export", str(source), str(out), "--weights", "float16"])
    assert refused.exit_code == 2
    assert refused.output.startswith("error: ") and "--force" in refused.output
    assert "Traceback" not in refused.output
    assert json.loads((out / CONFIG_FILE).read_text())["weights_dtype"] == "int8"  # untouched

    forced = runner.invoke(
        app, ["export", str(source), str(out), "--weights", "float16", "--force"]
    )
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / CONFIG_FILE).read_text())["weights_dtype"] == "float16"


def test_cli_export_errors(artifacts, tmp_path) -> None:
    source = str(artifacts["float32"])
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    cases = [
        ["export", source, str(precious), "--force"],  # not an artifact: never replaced
        ["export", "no-such-model", str(tmp_path / "x")],
    ]
    for args in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("error: ") and "Traceback" not in result.output
    assert (precious / "notes.txt").read_text() == "keep me"
    bad = runner.invoke(app, ["export", source, str(tmp_path / "y"), "--weights", "int4"])
    assert bad.exit_code == 2 and not (tmp_path / "y").exists()
