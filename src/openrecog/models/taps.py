"""Multi-level features: the last map's GAP joined to grid-pooled inner maps.

Receipts and forms are told apart by layout and print (mid-level, spatial), photographs by
semantics (the last, globally pooled map); the frozen-feature probe bench/feature_taps.py
and the CP2 report's multi-level concat both point at joining the two. Each part is L2-normalised
and scaled by its tap's weight, so the inner maps' many cells do not drown the global vector
whatever the raw activation scales. The result is a ``(B, D, 1, 1)`` map, so a ``gap`` neck,
the PCA start of the neck and the distillation all apply unchanged.

With a :class:`~openrecog.config.TapGate` the taps' weight depends on the image: a logistic
classifier on the GAP part (fitted by :func:`fit_tap_gate` at the start of training) says
how much the image looks like the main training data, and the weight moves between the
gate's ``low`` and ``high`` with it. The classifier is two buffers, so it is stored, exported
to ONNX and quantised like any other weight, and it is not trained by the embedding loss.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from openrecog.config import FeatureTap, TapGate


class MultiLevelPool(nn.Module):
    """``(last map, inner maps)`` → ``(B, C_last + Σ C_i · grid_i², 1, 1)``.

    Without a gate it has no weights; with one, two buffers (the classifier on the GAP).
    """

    def __init__(
        self, taps: Sequence[FeatureTap], gate: TapGate | None = None, last_channels: int = 0
    ) -> None:
        super().__init__()
        # forward_intermediates returns the inner maps in network order.
        ordered = sorted(taps, key=lambda tap: tap.index)
        self.indices = [tap.index for tap in ordered]
        self.grids = [tap.grid for tap in ordered]
        self.weights = [tap.weight for tap in ordered]
        self.gate = gate
        if gate is not None:
            if last_channels < 1:
                raise ValueError("a tap gate needs the channels of the last feature map")
            # Zeros: an unfitted gate gives p = 0.5, the middle of its range, for every image.
            self.register_buffer("gate_weight", torch.zeros(last_channels))
            self.register_buffer("gate_bias", torch.zeros(1))

    def pooled_parts(self, last: torch.Tensor, inner: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The L2-normalised parts before any weight: GAP of ``last``, then each tap's cells."""
        parts = [F.normalize(last.mean(dim=(2, 3)), dim=1)]
        for feature_map, grid in zip(inner, self.grids, strict=True):
            pooled = F.adaptive_avg_pool2d(feature_map, grid).flatten(1)
            parts.append(F.normalize(pooled, dim=1))
        return parts

    def main_probability(self, gap: torch.Tensor) -> torch.Tensor:
        """``(B,)`` gate probability that images with L2-normalised GAP ``gap`` are main data."""
        if self.gate is None:
            raise ValueError("this MultiLevelPool has no tap gate")
        return torch.sigmoid(gap.float() @ self.gate_weight + self.gate_bias)

    def join(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """``(B, D)``: the parts of :meth:`pooled_parts`, the taps scaled by their weights.

        With a gate the joined vector is L2-normalised as a whole: its norm would otherwise
        follow the gate, and the neck's PCA start assumes one typical norm.
        """
        gap, cells = parts[0], parts[1:]
        factor = None
        if self.gate is not None:
            p = self.main_probability(gap).to(gap.dtype)
            factor = (self.gate.low + (self.gate.high - self.gate.low) * p)[:, None]
        scaled = [gap]
        for part, weight in zip(cells, self.weights, strict=True):
            scaled.append(weight * part if factor is None else weight * factor * part)
        joined = torch.cat(scaled, dim=1)
        return F.normalize(joined, dim=1) if self.gate is not None else joined

    def forward(self, last: torch.Tensor, inner: Sequence[torch.Tensor]) -> torch.Tensor:
        """Join the pooled maps (each L2-normalised, inner ones scaled by their weight)."""
        return self.join(self.pooled_parts(last, inner))[:, :, None, None]


@torch.no_grad()
def fit_tap_gate(
    pool: MultiLevelPool, gap: np.ndarray | torch.Tensor, is_main: np.ndarray | torch.Tensor
) -> dict[str, float]:
    """Fit ``pool``'s gate: L2-regularised logistic regression of ``is_main`` on ``gap``.

    ``gap`` are the L2-normalised GAP parts ``(N, C_last)`` of training images, ``is_main``
    1 for the main training data and 0 for ``extra_folders``. The objective is
    scikit-learn's ``LogisticRegression(C=gate.l2)`` (``½‖w‖² + C Σ log-loss``, bias not
    penalised), minimised with L-BFGS: one small convex fit does not justify a
    scikit-learn dependency. Returns the fit's training accuracy and class balance.
    """
    if pool.gate is None:
        raise ValueError("this MultiLevelPool has no tap gate to fit")
    x = torch.as_tensor(np.asarray(gap), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(is_main), dtype=torch.float64).flatten()
    if x.ndim != 2 or x.shape[1] != pool.gate_weight.numel() or len(y) != len(x):
        raise ValueError(
            f"tap gate fit needs (N, {pool.gate_weight.numel()}) features and N labels, got "
            f"{tuple(x.shape)} and {len(y)}"
        )
    kinds = int(y.sum())
    if kinds == 0 or kinds == len(y):
        raise ValueError(
            "the tap gate needs training images of both kinds (main data and "
            "data.extra_folders) to tell them apart"
        )
    weight = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias], max_iter=500, tolerance_grad=1e-9, line_search_fn="strong_wolfe"
    )
    c = pool.gate.l2

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        with torch.enable_grad():
            logits = x @ weight + bias
            loss = 0.5 * weight.pow(2).sum() + c * F.binary_cross_entropy_with_logits(
                logits, y, reduction="sum"
            )
            loss.backward()
        return loss

    optimizer.step(objective)
    pool.gate_weight.copy_(weight.detach().float())
    pool.gate_bias.copy_(bias.detach().float())
    p = torch.sigmoid(x @ weight.detach() + bias.detach())  # on the CPU, wherever pool is
    return {
        "gate_accuracy": float(((p > 0.5).double() == y).double().mean()),
        "gate_main_fraction": float(y.mean()),
    }
