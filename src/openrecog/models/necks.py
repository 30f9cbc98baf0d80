"""Necks: turn a backbone feature map into an embedding vector.

The three designs compared in the DocClassifier discussion:

* ``flatten`` – flatten the whole ``C×H×W`` map, then ``Linear`` (most information, most
  parameters);
* ``gap`` – global average pooling, then ``Linear`` (cheap, loses spatial layout);
* ``squeeze`` – ``1×1`` conv to ``C/4`` channels, flatten, ``Linear`` (keeps layout at a
  quarter of the cost of ``flatten``).

The flat features reach the embedding through a projection (``linear | mlp | bn_linear``):
``linear`` is DocClassifier's single ``Linear``; ``mlp`` (``Linear → Dropout → Linear``) and
``bn_linear`` (``BatchNorm1d(affine=False) → Linear``) are GUIE heads. Each is followed by a
configurable normalisation (``none | bn | ln | ln_bn``); ``ln_bn`` (LayerNorm then
BatchNorm) is what pushed DocClassifier past 90 %.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

NeckName = Literal["flatten", "gap", "squeeze"]
NormName = Literal["none", "bn", "ln", "ln_bn"]
ProjectionName = Literal["linear", "mlp", "bn_linear"]

NECKS: tuple[str, ...] = ("flatten", "gap", "squeeze")
NORMS: tuple[str, ...] = ("none", "bn", "ln", "ln_bn")
PROJECTIONS: tuple[str, ...] = ("linear", "mlp", "bn_linear")


def create_norm(name: str, dim: int) -> nn.Module:
    """Build the embedding normalisation layer ``name`` for vectors of size ``dim``."""
    if name == "none":
        return nn.Identity()
    if name == "bn":
        return nn.BatchNorm1d(dim)
    if name == "ln":
        return nn.LayerNorm(dim)
    if name == "ln_bn":
        return nn.Sequential(nn.LayerNorm(dim), nn.BatchNorm1d(dim))
    raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(NORMS)}")


def create_projection(
    name: str, in_dim: int, out_dim: int, hidden_dim: int = 1024, dropout: float = 0.0
) -> nn.Module:
    """Build the projection ``name`` from ``in_dim`` flat features to ``out_dim``.

    ``linear`` is a bare ``nn.Linear`` (its state-dict keys are those of every artifact
    written before the other kinds existed). In the other kinds ``dropout`` sits right
    before the last ``Linear``, as it does before the ``linear`` projection.
    """
    if name == "linear":
        return nn.Linear(in_dim, out_dim)
    # Dropout(0) is kept rather than Identity so the layer indices, and with them the
    # state-dict keys, do not depend on the dropout rate (init_from may change it).
    if name == "mlp":
        return nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim)
        )
    if name == "bn_linear":
        # Dropout after the BN, not before it: BN statistics gathered on dropped-out
        # features would not match the full features it normalises at inference.
        return nn.Sequential(
            nn.BatchNorm1d(in_dim, affine=False), nn.Dropout(dropout), nn.Linear(in_dim, out_dim)
        )
    raise ValueError(f"unknown projection {name!r}; choose one of {', '.join(PROJECTIONS)}")


class Neck(nn.Module):
    """Feature map ``(B, C, H, W)`` → embedding ``(B, dim)`` (not yet L2-normalised)."""

    def __init__(
        self,
        kind: str,
        in_channels: int,
        feature_size: tuple[int, int],
        dim: int | None,
        norm: str = "ln_bn",
        dropout: float = 0.0,
        squeeze_channels: int | None = None,
        projection: str = "linear",
        hidden_dim: int = 1024,
    ) -> None:
        super().__init__()
        if kind not in NECKS:
            raise ValueError(f"unknown neck {kind!r}; choose one of {', '.join(NECKS)}")
        if projection not in PROJECTIONS:
            raise ValueError(
                f"unknown projection {projection!r}; choose one of {', '.join(PROJECTIONS)}"
            )
        if dim is None and projection != "linear":
            raise ValueError(
                f"projection={projection} needs an embedding_dim; embedding_dim=None (raw "
                "features) has no projection"
            )
        self.kind = kind
        self.projection = projection
        h, w = feature_size
        if kind == "gap":
            self.reduce: nn.Module = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            flat = in_channels
        elif kind == "flatten":
            self.reduce = nn.Flatten()
            flat = in_channels * h * w
        else:
            # DocClassifier squeezes to C/4; fewer channels shrink the Linear after the
            # flatten, which dominates the model size at 224 px (C/4 x 7 x 7 x dim weights).
            squeezed = squeeze_channels or max(1, in_channels // 4)
            self.reduce = nn.Sequential(
                nn.Conv2d(in_channels, squeezed, kernel_size=1, bias=False),
                nn.BatchNorm2d(squeezed),
                nn.ReLU(inplace=True),
                nn.Flatten(),
            )
            flat = squeezed * h * w
        # The other projections place their dropout themselves (it must not run twice).
        pre_dropout = dropout > 0 and projection == "linear"
        self.dropout = nn.Dropout(dropout) if pre_dropout else nn.Identity()
        if dim is None:
            # Off-the-shelf features (the GUIE baseline): no projection, no norm.
            if kind != "gap":
                raise ValueError("embedding_dim=None (raw features) is only allowed with neck=gap")
            self.fc: nn.Module = nn.Identity()
            self.norm: nn.Module = nn.Identity()
            self.out_dim = flat
        else:
            # One attribute for the whole projection: "fc" keeps the linear keys unchanged.
            self.fc = create_projection(projection, flat, dim, hidden_dim, dropout)
            self.norm = create_norm(norm, dim)
            self.out_dim = dim

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Project a feature map to an (unnormalised) embedding."""
        return self.norm(self.fc(self.dropout(self.reduce(features))))
