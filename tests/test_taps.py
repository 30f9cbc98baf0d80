"""Multi-level features (``model.taps``): joined vectors, errors, artifacts, ONNX, training."""

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from openrecog.config import FeatureTap, ModelConfig
from openrecog.models import create_model, load_artifact, save_artifact
from openrecog.models.onnx_export import MIN_PARITY_COSINE, export_onnx
from openrecog.models.taps import MultiLevelPool
from openrecog.train import Trainer
from tests.test_trainer import tiny_config

# timm's test_efficientnet: feature indices 2 and 3 are 32 ch at stride 8, 48 ch at stride 16.
TAPS = [{"index": 3, "grid": 2, "weight": 0.5}, {"index": 2, "grid": 1, "weight": 2.0}]
CONFIG = ModelConfig(
    backbone="test_efficientnet",
    pretrained=False,
    image_size=64,
    neck="gap",
    embedding_dim=32,
    taps=TAPS,
)


def test_pool_joins_normalised_parts_in_network_order() -> None:
    pool = MultiLevelPool([FeatureTap(**tap) for tap in TAPS])
    assert pool.indices == [2, 3]
    last = torch.randn(3, 10, 2, 2) * 50
    inner = [torch.randn(3, 4, 8, 8), torch.randn(3, 6, 4, 4) * 0.01]
    joined = pool(last, inner)
    assert joined.shape == (3, 10 + 4 + 24, 1, 1)
    flat = joined.flatten(1)
    torch.testing.assert_close(flat[:, :10], F.normalize(last.mean(dim=(2, 3)), dim=1))
    # Whatever the raw scales, each part's length is its tap's weight.
    torch.testing.assert_close(flat[:, 10:14].norm(dim=1), torch.full((3,), 2.0))
    torch.testing.assert_close(flat[:, 14:].norm(dim=1), torch.full((3,), 0.5))
    cells = F.adaptive_avg_pool2d(inner[1], 2).flatten(1)
    torch.testing.assert_close(flat[:, 14:], 0.5 * F.normalize(cells, dim=1))


def test_embedder_with_taps_feeds_the_joined_vector_to_the_neck() -> None:
    torch.manual_seed(0)
    model = create_model(CONFIG, pretrained=False).eval()
    last_channels = model.backbone.num_features
    assert model.neck.fc.in_features == last_channels + 32 + 48 * 4
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        features = model.forward_features(images)
        plain = model.backbone.forward_features(images)
        embeddings = model(images)
    assert features.shape == (2, last_channels + 32 + 192, 1, 1)
    torch.testing.assert_close(
        features[:, :last_channels, 0, 0], F.normalize(plain.mean(dim=(2, 3)), dim=1)
    )
    assert embeddings.shape == (2, 32)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))
    # Pooling to fixed grids: any input size gives the same vector length.
    model.set_image_size(96)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 32)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"neck": "squeeze"}, "model.taps need model.neck=gap"),
        ({"taps": [{"index": 2}, {"index": 2, "grid": 3}]}, "each feature index at most once"),
        ({"taps": [{"index": 2, "grid": 0}]}, "greater than or equal to 1"),
        ({"taps": [{"index": 2, "weight": 0}]}, "greater than 0"),
    ],
)
def test_bad_taps_are_refused_by_the_config(fields, message) -> None:
    with pytest.raises(ValidationError, match=message):
        ModelConfig(**{**CONFIG.model_dump(), **fields})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"taps": [{"index": 7}]}, r"feature indices \[7\] do not fit 'test_efficientnet'"),
        (
            {"backbone": "cp2_concat", "taps": [{"index": 1}]},
            "needs timm's forward_intermediates",
        ),
    ],
)
def test_taps_the_backbone_cannot_give_are_a_clear_error(fields, message) -> None:
    with pytest.raises(ValueError, match=message):
        create_model(ModelConfig(**{**CONFIG.model_dump(), **fields}), pretrained=False)


def test_artifact_and_onnx_keep_the_taps(tmp_path) -> None:
    torch.manual_seed(1)
    model = create_model(CONFIG, pretrained=False).eval()
    folder = save_artifact(model, tmp_path / "taps", weights_dtype="float32")
    loaded = load_artifact(folder).eval()
    assert loaded.config.taps == model.config.taps
    images = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), model(images))
    report = export_onnx(loaded, tmp_path / "taps.onnx", batch_sizes=(1, 3))
    assert report.parity.min_cosine >= MIN_PARITY_COSINE


def test_a_frozen_trunk_with_taps_trains_only_the_neck(pattern_folder, tmp_path) -> None:
    cfg = tiny_config(
        pattern_folder,
        tmp_path,
        **{
            "train.name": "taps",
            "model.taps": '[{"index": 2, "grid": 2}]',
            "train.freeze_backbone_steps": 4,
            "train.max_steps": 4,
            "train.neck_init_images": 20,
            "model.embedding_dim": 16,
        },
    )
    trainer = Trainer(cfg)
    assert trainer.neck_init["images"] == 20
    before = {k: v.clone() for k, v in trainer.model.backbone.state_dict().items()}
    neck_before = trainer.model.neck.fc.weight.detach().clone()
    result = trainer.fit()
    for key, value in trainer.model.backbone.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert not torch.equal(neck_before, trainer.model.neck.fc.weight)
    assert load_artifact(result.run_dir / "last").config.taps == cfg.model.taps
