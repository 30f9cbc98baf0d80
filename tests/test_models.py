import itertools
import json

import pytest
import torch

from openrecog.config import ModelConfig
from openrecog.models import (
    NECKS,
    NORMS,
    ArtifactError,
    Embedder,
    create_model,
    list_models,
    load_model,
    save_artifact,
)
from openrecog.models.artifact import WEIGHTS_FILE

TINY = {"backbone": "lcnet_050", "pretrained": False, "image_size": 64}


@pytest.mark.parametrize(("neck", "norm"), list(itertools.product(NECKS, NORMS)))
def test_every_neck_and_norm_gives_unit_vectors(neck: str, norm: str) -> None:
    model = Embedder(ModelConfig(**TINY, neck=neck, norm=norm, embedding_dim=64))
    model.train()
    out = model(torch.randn(4, 3, 64, 64))
    assert out.shape == (4, 64)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=1), torch.ones(4))
    out.sum().backward()  # trainable end to end
    model.eval()
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 64)


def test_squeeze_neck_is_smaller_than_flatten() -> None:
    sizes = {
        neck: sum(p.numel() for p in Embedder(ModelConfig(**TINY, neck=neck)).neck.parameters())
        for neck in NECKS
    }
    assert sizes["gap"] < sizes["squeeze"] < sizes["flatten"]


def test_ln_bn_is_layernorm_then_batchnorm() -> None:
    model = Embedder(ModelConfig(**TINY, norm="ln_bn"))
    kinds = [type(m).__name__ for m in model.neck.norm]
    assert kinds == ["LayerNorm", "BatchNorm1d"]


def test_raw_gap_features_for_baselines() -> None:
    model = Embedder(ModelConfig(**TINY, neck="gap", norm="none", embedding_dim=None))
    assert model.embedding_dim == model.backbone.num_features
    with pytest.raises(ValueError, match="only allowed with neck=gap"):
        Embedder(ModelConfig(**TINY, neck="squeeze", embedding_dim=None))


def test_embedding_dim_is_validated() -> None:
    with pytest.raises(ValueError, match="embedding_dim"):
        ModelConfig(embedding_dim=8)


def test_unknown_backbone_and_missing_weights_are_clear() -> None:
    with pytest.raises(ValueError, match="unknown timm backbone"):
        Embedder(ModelConfig(backbone="no_such_net", pretrained=False))
    with pytest.raises(ValueError, match="no offline pretrained weights"):
        Embedder(ModelConfig(backbone="lcnet_050", pretrained=True))


def test_artifact_round_trip_is_exact(tmp_path) -> None:
    model = create_model("docclassifier_lcnet050", image_size=64).eval()
    x = torch.randn(2, 3, 64, 64)
    path = save_artifact(model, tmp_path / "m", metadata={"threshold": 0.7})
    loaded = load_model(path)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert loaded.artifact_metadata["threshold"] == 0.7
    config = json.loads((path / "config.json").read_text())
    assert config["preprocessing"]["image_size"] == 64
    assert not list(tmp_path.glob(".m.*"))  # no temp folder left behind


def test_artifact_tampering_is_detected(tmp_path) -> None:
    path = save_artifact(create_model("docclassifier_lcnet050", image_size=64), tmp_path / "m")
    with open(path / WEIGHTS_FILE, "r+b") as handle:
        handle.seek(200)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(ArtifactError, match="checksum"):
        load_model(path)


def test_load_model_errors(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="no model"):
        load_model("not-a-model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="not a model artifact"):
        load_model(tmp_path / "empty")


def test_registry_lists_named_configs() -> None:
    names = {m.name for m in list_models()}
    assert {"lite0_squeeze", "lite0_gap_imagenet", "docclassifier_lcnet050"} <= names
    model = create_model("lite0_squeeze", embedding_dim=64, image_size=96)
    assert model.embedding_dim == 64


def test_local_checkpoint_path(tmp_path) -> None:
    from safetensors.torch import save_file

    source = create_model("docclassifier_lcnet050", image_size=64)
    save_file(
        {k: v.contiguous() for k, v in source.backbone.state_dict().items()},
        str(tmp_path / "bb.safetensors"),
    )
    model = Embedder(ModelConfig(**{**TINY, "checkpoint": str(tmp_path / "bb.safetensors")}))
    torch.testing.assert_close(model.backbone.conv_stem.weight, source.backbone.conv_stem.weight)
    with pytest.raises(FileNotFoundError):
        Embedder(ModelConfig(**{**TINY, "checkpoint": str(tmp_path / "missing.pth")}))


def test_pca_model_reduces_dimension_and_round_trips(tmp_path) -> None:
    import numpy as np
    from PIL import Image

    from openrecog.data.datasets import ImageListDataset
    from openrecog.models import load_artifact, save_artifact
    from openrecog.models.pca import fit_pca_model

    base = create_model(
        ModelConfig(backbone="lcnet_050", pretrained=False, image_size=64, embedding_dim=32)
    ).eval()
    paths = []
    for i in range(40):
        path = tmp_path / f"{i}.png"
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    data = ImageListDataset(paths, list(range(40)), [str(i) for i in range(40)])
    reduced, stats = fit_pca_model(base, data, 8)
    assert reduced.embedding_dim == 8 and reduced.config.pca_dim == 8
    assert 0.0 < stats["explained_variance"] <= 1.0
    x = torch.randn(5, 3, 64, 64)
    with torch.no_grad():
        full, small = base(x), reduced(x)
        expected = torch.nn.functional.normalize(
            (full - reduced.pca.mean) @ reduced.pca.components.T, dim=-1
        )
    torch.testing.assert_close(small, expected, rtol=1e-4, atol=1e-5)
    comps = reduced.pca.components
    torch.testing.assert_close(comps @ comps.T, torch.eye(8), rtol=0, atol=1e-4)
    loaded = load_artifact(save_artifact(reduced, tmp_path / "pca"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), small)
    with pytest.raises(ValueError, match="already ends in a PCA"):
        fit_pca_model(reduced, data, 4)
    with pytest.raises(ValueError, match="pca_dim must be between"):
        create_model(
            ModelConfig(
                backbone="lcnet_050", pretrained=False, image_size=64, embedding_dim=32, pca_dim=33
            )
        )
