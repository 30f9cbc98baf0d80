"""Multi-level features: the last map's GAP joined to grid-pooled inner maps.

Receipts and forms are told apart by layout and print (mid-level, spatial), photographs by
semantics (the last, globally pooled map); the frozen-feature probe bench/feature_taps.py
and the CP2 report's multi-level concat both point at joining the two. Each part is L2-normalised
and scaled by its tap's weight, so the inner maps' many cells do not drown the global vector
whatever the raw activation scales. The result is a ``(B, D, 1, 1)`` map, so a ``gap`` neck,
the PCA start of the neck and the distillation all apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from openrecog.config import FeatureTap


class MultiLevelPool(nn.Module):
    """``(last map, inner maps)`` → ``(B, C_last + Σ C_i · grid_i², 1, 1)``; no parameters."""

    def __init__(self, taps: Sequence[FeatureTap]) -> None:
        super().__init__()
        # forward_intermediates returns the inner maps in network order.
        ordered = sorted(taps, key=lambda tap: tap.index)
        self.indices = [tap.index for tap in ordered]
        self.grids = [tap.grid for tap in ordered]
        self.weights = [tap.weight for tap in ordered]

    def forward(self, last: torch.Tensor, inner: Sequence[torch.Tensor]) -> torch.Tensor:
        """Join the pooled maps (each L2-normalised, inner ones scaled by their weight)."""
        parts = [F.normalize(last.mean(dim=(2, 3)), dim=1)]
        for feature_map, grid, weight in zip(inner, self.grids, self.weights, strict=True):
            pooled = F.adaptive_avg_pool2d(feature_map, grid).flatten(1)
            parts.append(weight * F.normalize(pooled, dim=1))
        return torch.cat(parts, dim=1)[:, :, None, None]
