"""Projection heads (mlp, bn_linear), test-time augmentation, input size and ensembles."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from openrecog.cli.main import app
from openrecog.config import ModelConfig
from openrecog.models import (
    ArtifactError,
    Embedder,
    EnsembleEmbedder,
    fit_ensemble,
    load_artifact,
    load_model,
    save_artifact,
    tta_views,
)
from openrecog.models.artifact import CONFIG_FILE, WEIGHTS_FILE
from openrecog.models.encoder import ImageEncoder
from openrecog.models.preprocess import convert_preprocessing
from tests.conftest import draw_pattern

TINY = {"backbone": "lcnet_050", "pretrained": False, "image_size": 64}
# Member 1 of the ensembles: another input size and other normalisation statistics.
OTHER = {**TINY, "image_size": 80, "mean": (0.5, 0.4, 0.3), "std": (0.2, 0.3, 0.25)}
FIRST = {**TINY, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}

runner = CliRunner()


def calibrated(model: Embedder) -> Embedder:
    """``model`` in eval mode with BN statistics of random images.

    At random init with the default running statistics, lcnet's features vanish (~1e-7) and
    every image gets the same embedding (the projection's bias), which would make any
    "this option changes the output" check vacuous.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the calibration batch
    size = model.config.image_size
    model.train()
    with torch.no_grad():
        model.forward_unnormalized(images(16, size, seed=99))
    return model.eval()


def tiny(seed: int = 0, **fields) -> Embedder:
    torch.manual_seed(seed)
    config = ModelConfig(**{**TINY, "neck": "gap", "embedding_dim": 32, **fields})
    return calibrated(Embedder(config))


def images(n: int = 3, size: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def randomize_bn_stats(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics, so an eval-mode BN visibly changes its input."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


# ----------------------------------------------------------------------------- projections
def test_linear_projection_keeps_its_layout_and_keys() -> None:
    model = tiny(dropout=0.2)
    assert type(model.neck.fc) is nn.Linear and isinstance(model.neck.dropout, nn.Dropout)
    keys = {k for k in model.neck.state_dict() if k.startswith("fc.")}
    assert keys == {"fc.weight", "fc.bias"}  # what every existing artifact stores


def test_mlp_projection_structure_and_computation() -> None:
    model = tiny(projection="mlp", hidden_dim=48, dropout=0.3)
    fc = model.neck.fc
    assert [type(m) for m in fc] == [nn.Linear, nn.Dropout, nn.Linear]
    assert (fc[0].out_features, fc[1].p, fc[2].in_features, fc[2].out_features) == (48, 0.3, 48, 32)
    # Dropout only between the Linears, not also before the projection.
    assert isinstance(model.neck.dropout, nn.Identity)
    assert sum(isinstance(m, nn.Dropout) for m in model.neck.modules()) == 1
    assert {k for k in model.neck.state_dict() if k.startswith("fc.")} == {
        "fc.0.weight",
        "fc.0.bias",
        "fc.2.weight",
        "fc.2.bias",
    }
    x = images()
    with torch.no_grad():
        pooled = model.neck.reduce(model.forward_features(x))
        by_hand = model.neck.norm(fc[2](fc[0](pooled)))
        out = model.forward_unnormalized(x)
    assert out.shape == (3, 32)
    torch.testing.assert_close(out, by_hand)
    model.train()
    torch.manual_seed(0)
    first = model.neck.fc(pooled)
    second = model.neck.fc(pooled)
    assert not torch.allclose(first, second)  # dropout is active in training


def test_bn_linear_projection_structure_and_computation() -> None:
    model = tiny(projection="bn_linear", dropout=0.1)
    fc = model.neck.fc
    assert [type(m) for m in fc] == [nn.BatchNorm1d, nn.Dropout, nn.Linear]
    assert not fc[0].affine and fc[0].weight is None and fc[0].num_features == 256
    assert isinstance(model.neck.dropout, nn.Identity)
    randomize_bn_stats(fc)
    x = images()
    with torch.no_grad():
        pooled = model.neck.reduce(model.forward_features(x))
        standardized = (pooled - fc[0].running_mean) / torch.sqrt(fc[0].running_var + fc[0].eps)
        by_hand = model.neck.norm(fc[2](standardized))
        out = model.forward_unnormalized(x)
        without_bn = model.neck.norm(fc[2](pooled))
    assert out.shape == (3, 32)
    torch.testing.assert_close(out, by_hand)
    assert not torch.allclose(out, without_bn, atol=1e-3)


def test_projections_give_different_embeddings() -> None:
    x = images()
    with torch.no_grad():
        linear = tiny()(x)
    assert (linear @ linear.T).min() < 0.9  # images embed apart: the checks below mean something
    outputs = {}
    for projection in ("linear", "mlp", "bn_linear"):
        model = tiny(seed=0, projection=projection)
        with torch.no_grad():
            outputs[projection] = model(x)
        assert outputs[projection].shape == (3, 32)
    assert not torch.allclose(outputs["linear"], outputs["mlp"], atol=1e-3)
    assert not torch.allclose(outputs["linear"], outputs["bn_linear"], atol=1e-3)


def test_projection_needs_an_embedding_dim() -> None:
    with pytest.raises(ValueError, match="projection=mlp needs an embedding_dim"):
        tiny(projection="mlp", embedding_dim=None, norm="none")


def test_pca_neck_init_rejects_non_linear_projections() -> None:
    from openrecog.train.trainer import init_neck_from_pca

    with pytest.raises(ValueError, match="neck_init_images"):
        init_neck_from_pca(tiny(projection="mlp"), None, 100)


# ----------------------------------------------------------------------------------- TTA
def test_tta_views_shapes_and_contents() -> None:
    x = images(2)
    assert tta_views(x, "none") is x
    flip = tta_views(x, "flip")
    assert flip.shape == (4, 3, 64, 64)
    assert torch.equal(flip[:2], x) and torch.equal(flip[2:], torch.flip(x, dims=[-1]))

    crops = tta_views(x, "crops")
    assert crops.shape == (12, 3, 64, 64) and torch.equal(crops[:2], x)

    def zoom(part: torch.Tensor) -> torch.Tensor:
        return F.interpolate(part, size=(64, 64), mode="bilinear", antialias=True)

    # 0.875 * 64 = 56-pixel crops: centre at offset 4, then the four corners.
    torch.testing.assert_close(crops[2:4], zoom(x[..., 4:60, 4:60]))
    torch.testing.assert_close(crops[4:6], zoom(x[..., :56, :56]))
    torch.testing.assert_close(crops[6:8], zoom(x[..., :56, 8:]))
    torch.testing.assert_close(crops[8:10], zoom(x[..., 8:, :56]))
    torch.testing.assert_close(crops[10:12], zoom(x[..., 8:, 8:]))
    assert not torch.allclose(crops[2:4], x, atol=0.1)

    both = tta_views(x, "flip_crops")
    assert both.shape == (14, 3, 64, 64)
    assert torch.equal(both[:12], crops) and torch.equal(both[12:], torch.flip(x, dims=[-1]))
    with pytest.raises(ValueError, match="unknown tta mode 'mirror'"):
        tta_views(x, "mirror")


def test_tta_none_is_the_plain_forward() -> None:
    model = tiny()
    x = images()
    with torch.no_grad():
        expected = F.normalize(model.forward_unnormalized(x).float(), dim=-1)
        torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


def test_flip_tta_averages_normalised_views() -> None:
    plain = tiny()
    model = tiny(tta="flip")
    model.load_state_dict(plain.state_dict())
    x = images()
    with torch.no_grad():
        u = model.forward_unnormalized
        views = F.normalize(u(x), dim=-1) + F.normalize(u(torch.flip(x, dims=[-1])), dim=-1)
        expected = F.normalize(views / 2, dim=-1)
        out = model(x)
        torch.testing.assert_close(out, expected)
        assert not torch.allclose(out, plain(x), atol=1e-3)  # TTA changes the embedding
        # Training paths ignore TTA.
        torch.testing.assert_close(u(x), plain.forward_unnormalized(x), rtol=0, atol=0)
        features = model.forward_features(x)
        torch.testing.assert_close(model.forward_head(features), plain.forward_head(features))


def test_crop_tta_differs_from_flip_tta() -> None:
    model = tiny(tta="crops")
    x = images()
    with torch.no_grad():
        crops = model(x)
        flips = model.set_tta("flip")(x)
        both = model.set_tta("flip_crops")(x)
    assert crops.shape == flips.shape == both.shape == (3, 32)
    torch.testing.assert_close(both.norm(dim=-1), torch.ones(3))
    assert not torch.allclose(crops, flips, atol=1e-4)
    assert not torch.allclose(crops, both, atol=1e-4)


def test_tta_averages_before_the_pca() -> None:
    model = tiny(pca_dim=8, tta="flip")
    g = torch.Generator().manual_seed(3)
    model.pca.mean.copy_(torch.randn(32, generator=g) * 0.1)
    model.pca.components.copy_(torch.linalg.qr(torch.randn(32, 8, generator=g))[0].T)
    x = images()
    with torch.no_grad():
        views = [x, torch.flip(x, dims=[-1])]
        necks = [F.normalize(model.neck(model.forward_features(v)), dim=-1) for v in views]
        average = F.normalize((necks[0] + necks[1]) / 2, dim=-1)
        expected = F.normalize((average - model.pca.mean) @ model.pca.components.T, dim=-1)
        out = model(x)
        after_pca = sum(F.normalize(model.pca(n), dim=-1) for n in necks)
    assert out.shape == (3, 8)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, F.normalize(after_pca, dim=-1), atol=1e-4)


def test_set_tta_updates_config_and_artifact(tmp_path) -> None:
    model = tiny()
    assert model.set_tta("flip") is model and model.config.tta == "flip"
    with pytest.raises(ValueError, match="unknown tta mode"):
        model.set_tta("rotate")
    assert model.config.tta == "flip"
    path = save_artifact(model, tmp_path / "m")
    assert json.loads((path / CONFIG_FILE).read_text())["model"]["tta"] == "flip"
    loaded = load_artifact(path)
    assert loaded.config.tta == "flip"
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_set_image_size_runs_a_gap_model_at_another_resolution(tmp_path) -> None:
    model = tiny()
    pictures = [draw_pattern(k, k) for k in range(3)]
    at_64 = ImageEncoder(model, device="cpu").encode(pictures)
    assert model.set_image_size(96) is model and model.config.image_size == 96
    # The encoder now prepares 96-px inputs: the same as a model built at 96 with these weights.
    built_at_96 = Embedder(model.config.model_copy(), load_pretrained=False)
    built_at_96.load_state_dict(model.state_dict())
    at_96 = ImageEncoder(model, device="cpu").encode(pictures)
    np.testing.assert_allclose(
        at_96, ImageEncoder(built_at_96.eval(), device="cpu").encode(pictures)
    )
    assert np.abs(at_96 - at_64).max() > 1e-3
    loaded = load_artifact(save_artifact(model, tmp_path / "m"))
    assert loaded.config.image_size == 96
    with pytest.raises(ValueError, match="greater than or equal to 32"):
        model.set_image_size(16)
    assert model.config.image_size == 96
    with pytest.raises(ValueError, match="only a gap neck"):
        tiny(neck="squeeze").set_image_size(96)


# ------------------------------------------------------------------------------ ensembles
def ensemble_members() -> list[Embedder]:
    torch.manual_seed(0)
    first = calibrated(Embedder(ModelConfig(**FIRST, neck="gap", embedding_dim=32)))
    torch.manual_seed(1)
    second = calibrated(Embedder(ModelConfig(**OTHER, neck="squeeze", embedding_dim=24)))
    return [first, second]


def test_ensemble_converts_input_and_concatenates() -> None:
    members = ensemble_members()
    ensemble = EnsembleEmbedder(members).eval()
    assert ensemble.embedding_dim == ensemble.concat_dim == 56
    assert ensemble.config.image_size == 64 and ensemble.config.pca_dim is None
    x = images()
    mean0, std0 = torch.tensor(FIRST["mean"]), torch.tensor(FIRST["std"])
    mean1, std1 = torch.tensor(OTHER["mean"]), torch.tensor(OTHER["std"])
    raw = x * std0.view(1, 3, 1, 1) + mean0.view(1, 3, 1, 1)
    converted = F.interpolate(
        (raw - mean1.view(1, 3, 1, 1)) / std1.view(1, 3, 1, 1),
        size=(80, 80),
        mode="bilinear",
        antialias=True,
    )
    with torch.no_grad():
        first = F.normalize(members[0](x), dim=-1)
        second = F.normalize(members[1](converted), dim=-1)
        expected = F.normalize(torch.cat([first, second], dim=-1), dim=-1)
        out = ensemble(x)
        unconverted = members[1](F.interpolate(x, size=(80, 80), mode="bilinear"))
    assert out.shape == (3, 56) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(second, unconverted, atol=1e-3)  # the conversion matters


def test_convert_preprocessing_is_a_no_op_for_matching_input() -> None:
    x = images()
    same = convert_preprocessing(x, [0.5] * 3, [0.2] * 3, [0.5] * 3, [0.2] * 3, 64)
    assert same is x
    with pytest.raises(ValueError, match="at least 2 models"):
        EnsembleEmbedder([tiny()])
    with pytest.raises(ValueError, match="below the concatenated embedding size 64"):
        EnsembleEmbedder([tiny(), tiny(1)], pca_dim=64)


def test_member_tta_applies_inside_the_ensemble() -> None:
    x = images()
    plain = EnsembleEmbedder([tiny(0), tiny(1)]).eval()
    flipped = EnsembleEmbedder([tiny(0), tiny(1)]).eval().set_tta("flip")
    assert flipped.config.tta == "flip"
    assert all(m.config.tta == "flip" for m in flipped.members)
    with torch.no_grad():
        expected = F.normalize(torch.cat([m(x) for m in flipped.members], dim=-1), dim=-1)
        torch.testing.assert_close(flipped(x), expected)
        assert not torch.allclose(flipped(x), plain(x), atol=1e-3)


@pytest.fixture
def fitted(pattern_folder):
    from openrecog.data.factory import instance_folder

    torch.manual_seed(0)
    ensemble, stats = fit_ensemble(ensemble_members(), instance_folder(str(pattern_folder)), 8)
    return ensemble, stats


def test_fit_ensemble_fits_the_pca(fitted) -> None:
    ensemble, stats = fitted
    assert ensemble.embedding_dim == 8 and ensemble.config.pca_dim == 8
    assert stats["fit_images"] == 24 and stats["concat_dim"] == 56
    assert 0.0 < stats["explained_variance"] <= 1.0
    comps = ensemble.pca.components.cpu()
    assert not torch.allclose(comps, torch.eye(8, 56), atol=0.1)  # fitted, not the init
    torch.testing.assert_close(comps @ comps.T, torch.eye(8), rtol=0, atol=1e-4)
    assert ensemble.pca.mean.abs().sum() > 0
    ensemble = ensemble.cpu()
    x = images()
    with torch.no_grad():
        # The PCA-free ensemble of the same members (checked by hand above) gives the input.
        concat = EnsembleEmbedder(list(ensemble.members))(x)
        centred = F.normalize(concat, dim=-1) - ensemble.pca.mean
        expected = F.normalize(centred @ ensemble.pca.components.T, dim=-1)
        out = ensemble(x)
    assert out.shape == (3, 8)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)


def test_ensemble_artifact_round_trip(fitted, tmp_path) -> None:
    ensemble = fitted[0].cpu()
    x = images()
    with torch.no_grad():
        reference = ensemble(x)
    path = save_artifact(ensemble, tmp_path / "ens", metadata={"threshold": 0.5})
    config = json.loads((path / CONFIG_FILE).read_text())
    assert config["ensemble"]["pca_dim"] == 8
    assert [m["image_size"] for m in config["ensemble"]["members"]] == [64, 80]
    assert config["model"]["pca_dim"] == 8 and config["embedding_dim"] == 8
    assert config["preprocessing"]["mean"] == list(FIRST["mean"])
    keys = set(load_file(str(path / WEIGHTS_FILE)))
    assert {"pca.mean", "pca.components"} <= keys
    assert all(k.startswith(("members.0.", "members.1.", "pca.")) for k in keys)

    loaded = load_model(path)
    assert isinstance(loaded, EnsembleEmbedder) and not loaded.training
    assert loaded.artifact_metadata["threshold"] == 0.5
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), reference, rtol=0, atol=0)

    small = load_model(save_artifact(ensemble, tmp_path / "int8", weights_dtype="int8"))
    assert small.artifact_weights_dtype == "int8"
    assert load_file(str(tmp_path / "int8" / WEIGHTS_FILE))["members.1.neck.fc.weight"].dtype == (
        torch.int8
    )
    with torch.no_grad():
        cosine = (small(x) * reference).sum(dim=-1)
    assert cosine.min() > 0.98

    with open(path / WEIGHTS_FILE, "r+b") as handle:
        handle.seek(300)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match="checksum"):
        load_model(path)


def test_bad_ensemble_section_is_an_artifact_error(tmp_path) -> None:
    path = save_artifact(EnsembleEmbedder([tiny(0), tiny(1)]), tmp_path / "e")
    config = json.loads((path / CONFIG_FILE).read_text())
    config["ensemble"]["pca_dim"] = 500
    (path / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="bad ensemble section"):
        load_model(path)


def test_cli_ensemble_and_export_tta(pattern_folder, tmp_path) -> None:
    first = save_artifact(tiny(0), tmp_path / "a")
    torch.manual_seed(1)
    other = calibrated(Embedder(ModelConfig(**OTHER, embedding_dim=24)))
    second = save_artifact(other, tmp_path / "b")
    out = tmp_path / "ens"
    args = ["ensemble", str(first), str(second), "--out", str(out), "--pca-dim", "8"]
    result = runner.invoke(app, [*args, "--data", str(pattern_folder)])
    assert result.exit_code == 0, result.output
    assert "56-d -> 8-d" in result.output
    model = load_model(out)
    assert isinstance(model, EnsembleEmbedder) and model.embedding_dim == 8
    assert model.artifact_metadata["pca_fit"]["fit_images"] == 24
    assert [m.config.image_size for m in model.members] == [64, 80]

    exported = tmp_path / "exp"
    result = runner.invoke(app, ["export", str(out), str(exported), "--tta", "flip"])
    assert result.exit_code == 0, result.output
    reloaded = load_model(exported)
    assert reloaded.config.tta == "flip"
    assert all(m.config.tta == "flip" for m in reloaded.members)


def test_cli_ensemble_errors(pattern_folder, tmp_path) -> None:
    first = str(save_artifact(tiny(0), tmp_path / "a"))
    pair = str(save_artifact(EnsembleEmbedder([tiny(0), tiny(1)]), tmp_path / "pair"))
    out = str(tmp_path / "ens")
    cases = [
        (["pca", pair, out, "--dim", "8", "--data", pattern_folder], "is an ensemble"),
        (["ensemble", first, "--out", out], "at least 2 models"),
        (["ensemble", first, "no-such-model", "--out", out], "no model 'no-such-model'"),
        (
            ["ensemble", first, first, "--out", out, "--pca-dim", "64", "--data", pattern_folder],
            "below the concatenated embedding size 64",
        ),
        (["ensemble", first, first, "--out", out, "--pca-dim", "8"], "exactly one of"),
        (["ensemble", first, first, "--out", out, "--data", pattern_folder], "add --pca-dim"),
        (["export", first, str(tmp_path / "x"), "--tta", "spin"], "spin"),
    ]
    for args, message in cases:
        result = runner.invoke(app, [str(a) for a in args])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "ens").exists()
    single = runner.invoke(app, ["ensemble", first, "--out", out])
    assert single.output.startswith("error: ")
