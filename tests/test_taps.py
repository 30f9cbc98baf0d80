"""Multi-level features (``model.taps``): joined vectors, errors, artifacts, ONNX, training."""

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from openrecog.config import FeatureTap, ModelConfig, TapGate
from openrecog.models import create_model, load_artifact, save_artifact
from openrecog.models.onnx_export import MIN_PARITY_COSINE, export_onnx
from openrecog.models.taps import MultiLevelPool, fit_tap_gate
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


def test_tap_parts_are_the_unweighted_pieces_of_the_joined_vector() -> None:
    torch.manual_seed(0)
    model = create_model(CONFIG, pretrained=False).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        parts = model.forward_tap_parts(images)
        joined = model.forward_features(images).flatten(1)
    widths = model.tap_part_widths()
    assert widths == [model.backbone.num_features, 32, 48 * 4]
    assert [part.shape[1] for part in parts] == widths
    for part in parts:
        torch.testing.assert_close(part.norm(dim=1), torch.ones(2))
    weights = [1.0, 2.0, 0.5]  # the GAP, then the taps in network order (index 2, then 3)
    for piece, part, weight in zip(joined.split(widths, dim=1), parts, weights, strict=True):
        torch.testing.assert_close(piece, weight * part)


def test_tap_parts_of_a_model_without_taps_are_a_clear_error() -> None:
    model = create_model(ModelConfig(**{**CONFIG.model_dump(), "taps": []}), pretrained=False)
    with pytest.raises(ValueError, match="no model.taps"):
        model.forward_tap_parts(torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match="no model.taps"):
        model.tap_part_widths()


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


GATE = {"low": 0.5, "high": 3.0}


def _gated_pool() -> MultiLevelPool:
    return MultiLevelPool([FeatureTap(**tap) for tap in TAPS], TapGate(**GATE), last_channels=10)


def test_gate_scales_the_taps_between_low_and_high() -> None:
    pool = _gated_pool()
    pool.gate_weight.copy_(torch.linspace(-1, 1, 10))
    pool.gate_bias.fill_(0.3)
    last = torch.randn(4, 10, 2, 2)
    inner = [torch.randn(4, 4, 8, 8), torch.randn(4, 6, 4, 4)]
    flat = pool(last, inner).flatten(1)
    gap = F.normalize(last.mean(dim=(2, 3)), dim=1)
    p = torch.sigmoid(gap @ pool.gate_weight + 0.3)
    factor = 0.5 + 2.5 * p
    # Joined as [gap, 2·factor·tap2, 0.5·factor·tap3], then L2-normalised as a whole.
    length = torch.sqrt(1 + (2.0 * factor) ** 2 + (0.5 * factor) ** 2)
    torch.testing.assert_close(flat.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(flat[:, :10], gap / length[:, None])
    torch.testing.assert_close(flat[:, 10:14].norm(dim=1), 2.0 * factor / length)
    torch.testing.assert_close(flat[:, 14:].norm(dim=1), 0.5 * factor / length)
    # An unfitted gate says 0.5 for every image: the middle of the range.
    torch.testing.assert_close(_gated_pool().main_probability(gap), torch.full((4,), 0.5))


def test_fit_tap_gate_reaches_the_logistic_regression_optimum() -> None:
    generator = torch.Generator().manual_seed(0)
    centre = F.normalize(torch.randn(10, generator=generator), dim=0)
    x = F.normalize(torch.randn(60, 10, generator=generator), dim=1)
    y = torch.zeros(60)
    y[:25] = 1.0
    x[:25] = F.normalize(x[:25] + 1.5 * centre, dim=1)  # the main kind leans one way
    pool = _gated_pool()
    stats = fit_tap_gate(pool, x, y)
    assert stats["gate_accuracy"] > 0.9
    assert stats["gate_main_fraction"] == pytest.approx(25 / 60)
    # scikit-learn's objective ½‖w‖² + C·Σ log-loss is stationary at the optimum:
    # w = C·Σ (y − p) x and Σ (y − p) = 0 (the bias is not penalised).
    p = pool.main_probability(x).double()
    residual = (y.double() - p)[:, None] * x.double()
    torch.testing.assert_close(
        pool.gate_weight.double(), GATE_C * residual.sum(0), rtol=0, atol=1e-4
    )
    assert abs(float((y.double() - p).sum())) < 1e-4


GATE_C = 1.0


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (torch.randn(5, 10), torch.ones(5), "both kinds"),
        (torch.randn(5, 9), torch.tensor([0, 1, 0, 1, 0]), r"\(N, 10\) features"),
    ],
)
def test_fit_tap_gate_refuses_what_it_cannot_fit(x, y, message) -> None:
    with pytest.raises(ValueError, match=message):
        fit_tap_gate(_gated_pool(), x, y)


def test_a_gate_without_taps_is_refused_by_the_config() -> None:
    with pytest.raises(ValidationError, match="model.tap_gate scales the model.taps"):
        ModelConfig(**{**CONFIG.model_dump(), "taps": [], "tap_gate": GATE})


def test_artifact_and_onnx_keep_the_gate(tmp_path) -> None:
    torch.manual_seed(2)
    model = create_model(ModelConfig(**{**CONFIG.model_dump(), "tap_gate": GATE}), pretrained=False)
    model.eval()
    model.taps.gate_weight.normal_()
    model.taps.gate_bias.fill_(-0.2)
    folder = save_artifact(model, tmp_path / "gated", weights_dtype="int8")
    loaded = load_artifact(folder).eval()
    assert loaded.config.tap_gate == model.config.tap_gate
    # Stored as float16 vectors, not int8 matrices: the gate survives int8 storage closely.
    torch.testing.assert_close(
        loaded.taps.gate_weight, model.taps.gate_weight, rtol=1e-3, atol=1e-3
    )
    report = export_onnx(loaded, tmp_path / "gated.onnx", batch_sizes=(1, 3))
    assert report.parity.min_cosine >= MIN_PARITY_COSINE


def _unlike_folder(root) -> None:
    """Flat grey-level images with noise: nothing like the coloured patterns."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "flat").mkdir(parents=True)
    for i in range(12):
        pixels = np.full((64, 64, 3), 20 * i, np.uint8) + rng.integers(0, 10, (64, 64, 3))
        Image.fromarray(pixels.astype(np.uint8)).save(root / "flat" / f"{i}.png")


def test_training_fits_the_gate_before_the_pca_start(pattern_folder, tmp_path) -> None:
    extra = tmp_path / "extra"
    _unlike_folder(extra)
    overrides = {
        "model.taps": '[{"index": 2, "grid": 2}]',
        "model.tap_gate": '{"low": 0.4, "high": 2.5, "l2": 1000}',  # random features: weak prior
        "data.extra_folders": [str(extra)],
        "train.freeze_backbone_steps": 2,
        "train.max_steps": 2,
        "train.neck_init_images": 36,
        "train.neck_init_whiten": True,
        "train.neck_init_whiten_power": 0.5,
        "model.embedding_dim": 16,
    }
    cfg = tiny_config(pattern_folder, tmp_path, **{**overrides, "train.name": "gate"})
    trainer = Trainer(cfg)
    assert trainer.neck_init["images"] == 36
    assert trainer.neck_init["gate_main_fraction"] == pytest.approx(24 / 36)
    assert trainer.neck_init["gate_accuracy"] > 0.9
    taps = trainer.model.taps
    assert taps.gate_weight.abs().sum() > 0
    # Patterns (main data) get more of the tap than the flat extra images.
    model = trainer.model.eval()
    main_image = trainer.train_base[0][0]
    extra_image = trainer.train_base[len(trainer.train_base) - 1][0]
    from openrecog.models.encoder import ImageEncoder

    encoder = ImageEncoder(model, batch_size=2)
    batch = torch.stack([encoder.transform(main_image), encoder.transform(extra_image)])
    with torch.no_grad():
        last, inner = model.backbone.forward_intermediates(batch, indices=taps.indices)
        p = taps.main_probability(taps.pooled_parts(last, inner)[0])
    assert p[0] > 0.5 > p[1]
    result = trainer.fit()
    loaded = load_artifact(result.run_dir / "last")
    torch.testing.assert_close(loaded.taps.gate_weight, taps.gate_weight, rtol=1e-3, atol=1e-3)
    # Without extra folders there is nothing to tell apart.
    no_extra = {**overrides, "data.extra_folders": "[]"}
    with pytest.raises(ValueError, match="set data.extra_folders"):
        tiny_config(pattern_folder, tmp_path, **no_extra)
    no_whiten = {**overrides, "train.neck_init_whiten": False}
    with pytest.raises(ValueError, match="set train.neck_init_images"):
        tiny_config(pattern_folder, tmp_path, **{**no_whiten, "train.neck_init_images": 0})
