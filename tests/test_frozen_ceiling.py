"""bench/frozen_ceiling.py: its shrinkage LDA and the neck inputs it rebuilds from tap parts."""

import numpy as np
import pytest
import torch
from PIL import Image

from openrecog.config import TapGate
from openrecog.models import create_model
from openrecog.models.encoder import ImageEncoder
from tests.bench_scripts import load_bench_script
from tests.test_taps import CONFIG


def _ceiling_module():
    return load_bench_script("frozen_ceiling")


def _scatter(x: np.ndarray, labels: np.ndarray, shrinkage: float) -> tuple[np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    within = sum(
        np.cov(x[labels == c].T, bias=True) * np.mean(labels == c) for c in np.unique(labels)
    )
    between = sum(
        np.mean(labels == c)
        * np.outer(x[labels == c].mean(0) - mean, x[labels == c].mean(0) - mean)
        for c in np.unique(labels)
    )
    dim = x.shape[1]
    return (1 - shrinkage) * within + shrinkage * np.trace(within) / dim * np.eye(dim), between


@pytest.mark.parametrize("shrinkage", [0.0, 0.5])
def test_shrinkage_lda_axes_solve_the_generalised_eigenproblem(shrinkage: float) -> None:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 30)
    centres = rng.normal(size=(4, 6)) * 3
    x = centres[labels] + rng.normal(size=(120, 6)) * np.linspace(0.2, 2.0, 6)
    axes = _ceiling_module().shrinkage_lda(x, list(labels), shrinkage)
    within, between = _scatter(x, labels, shrinkage)
    assert axes.shape == (3, 6)  # classes - 1 discriminant axes
    np.testing.assert_allclose(axes @ within @ axes.T, np.eye(3), atol=1e-8)
    gains = np.diag(axes @ between @ axes.T)
    np.testing.assert_allclose(axes @ between @ axes.T, np.diag(gains), atol=1e-8)
    assert np.all(np.diff(gains) <= 1e-12)  # most discriminant first
    np.testing.assert_allclose(between @ axes.T, within @ axes.T * gains, atol=1e-8)


def test_shrinkage_lda_separates_classes_that_raw_distances_mix() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 40)
    x = rng.normal(size=(120, 8)) * np.array([10.0] * 7 + [0.1])  # large nuisance axes
    x[:, 7] += labels  # the class lives on the quietest axis
    axes = _ceiling_module().shrinkage_lda(x, list(labels), 0.0)
    z = x @ axes[:1].T
    assert np.corrcoef(z[:, 0], labels)[0, 1] ** 2 > 0.95


def test_neck_inputs_rebuilt_from_tap_parts_are_what_the_neck_reads() -> None:
    config = CONFIG.model_copy(update={"tap_gate": TapGate(low=0.5, high=2.0)})
    torch.manual_seed(0)
    model = create_model(config, pretrained=False).eval()
    model.taps.gate_weight.normal_()  # a non-trivial gate: every image gets its own weight
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(3)]
    ceiling = _ceiling_module()
    parts = ceiling.tap_parts(model, [(image, 0) for image in images])
    batch = torch.stack([ImageEncoder(model).transform(image) for image in images])
    with torch.no_grad():
        expected = model.forward_features(batch).flatten(1).numpy()
        gap = torch.nn.functional.normalize(
            model.backbone.forward_features(batch).mean(dim=(2, 3)), dim=1
        ).numpy()
    np.testing.assert_allclose(ceiling.neck_inputs(model, parts), expected, atol=1e-5)
    np.testing.assert_allclose(ceiling.gap_part(model, parts), gap, atol=1e-5)
