"""Compact CNNs of the CP2 report, registered as timm models (``cp2_*``).

The report builds a CNN under a 5M-parameter budget for a 10-class natural-image task and
walks through a ladder of variants; each is a registered timm model here, so
``timm.create_model("cp2_dense", num_classes=10)`` is the report's classifier and
``model.backbone: cp2_dense`` an openrecog embedding backbone:

* ``cp2_deep`` – two residual stacks one after the other, ``x → res2(res1(x))`` (the report's
  "Deep"), with dropout in the convolution trunk;
* ``cp2_dropout`` – the two stacks side by side, ``y = cat[res1(x), res2(x)]`` (width matters
  more than depth at this size), still with trunk dropout;
* ``cp2_concat`` – the same without any dropout in the convolution trunk ("NoDropout": no
  dropout between a BatchNorm and the next convolution's BatchNorm);
* ``cp2_multilevel`` – plus the multi-level head: the outputs of the last layers are each
  projected to 32/64 dimensions and concatenated (``Linear1..5`` of the report's table);
* ``cp2_dense`` – plus the DenseNet-like stacks: before each residual block the sum of all
  earlier outputs of the stack is added (the report's "ResBlock-Modified"), its best model.

Layout (report Table 1, ``w`` = ``width`` = 64): conv 7×7 (3→w) → BN → act → max-pool →
stage 1 (concat: 2w channels) → conv 3×3 s2 (→2w) → BN → act → max-pool → 5 blocks at 2w →
conv 5×5 (2w→2w) → … → 3 blocks at 2w → conv 3×3 (2w→w) → … → 3 blocks at w. The total
stride is 32. Residual branches are ``conv → BN → act [→ dropout] → conv``, merged by
``mish(x + branch(x))``. The classifier (``num_classes > 0``) is the report's
``Linear(256) → BN → GELU → Dropout(0.3) → Linear(256) → BN → GELU → Dropout(0.2) → Linear``.

``forward_features`` returns a feature map (timm convention) so openrecog's necks apply;
for the multi-level variants that map is ``1×1``: the concatenated projections.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from timm.layers import SelectAdaptivePool2d, get_act_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

__all__ = ["CP2Net", "CP2_VARIANTS", "DenseResStack", "LevelProjection", "ResBranch", "ResStack"]

# The report's normalisation (CIFAR-like statistics of its data set), carried in the timm
# pretrained config so resolve_preprocessing() picks it up for every cp2 backbone.
CP2_MEAN = (125 / 255, 124 / 255, 115 / 255)
CP2_STD = (60 / 255, 59 / 255, 64 / 255)

# variant -> CP2Net keyword arguments (the ladder of the report, in its order).
CP2_VARIANTS: dict[str, dict[str, Any]] = {
    "cp2_deep": {"connection": "deep", "trunk_dropout": True},
    "cp2_dropout": {"connection": "concat", "trunk_dropout": True},
    "cp2_concat": {"connection": "concat"},
    "cp2_multilevel": {"connection": "concat", "multilevel": True},
    "cp2_dense": {"connection": "concat", "multilevel": True, "dense": True},
}

ActArg = str | type[nn.Module]


def _act(layer: ActArg) -> nn.Module:
    # timm's factory accepts names ("mish", "silu", "gelu", "identity") and classes alike.
    return get_act_layer(layer)()


class ResBranch(nn.Module):
    """The report's ResBlock branch: ``conv → BN → act [→ Dropout2d] → conv`` (same padding).

    The second convolution has no BatchNorm: the branch is added to its input before the
    merge activation, as in the report.
    """

    def __init__(
        self, channels: int, kernel_size: int, act_layer: ActArg, drop_rate: float = 0.0
    ) -> None:
        super().__init__()
        padding = (kernel_size - 1) // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel_size, padding=padding)
        self.bn = nn.BatchNorm2d(channels)
        self.act = _act(act_layer)
        self.drop = nn.Dropout2d(drop_rate) if drop_rate > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(channels, channels, kernel_size, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the branch output (same shape as ``x``)."""
        return self.conv2(self.drop(self.act(self.bn(self.conv1(x)))))


class ResStack(nn.Module):
    """``num_blocks`` residual branches in turn: ``x ← act(x + branch_i(x))`` (``PassThrough``).

    With ``between_drop > 0`` (the report's dropout variants) a ``Dropout2d`` follows every
    second block.
    """

    def __init__(
        self,
        channels: int,
        num_blocks: int,
        kernel_size: int,
        act_layer: ActArg,
        merge_act_layer: ActArg,
        branch_drop: float = 0.0,
        between_drop: float = 0.0,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            ResBranch(channels, kernel_size, act_layer, branch_drop) for _ in range(num_blocks)
        )
        self.merge_act = _act(merge_act_layer)
        self.drops = nn.ModuleList(
            nn.Dropout2d(between_drop) if between_drop > 0 and i % 2 else nn.Identity()
            for i in range(num_blocks)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pass ``x`` through every block with its residual connection."""
        for block, drop in zip(self.blocks, self.drops, strict=True):
            x = drop(self.merge_act(x + block(x)))
        return x


class DenseResStack(ResStack):
    """The report's "ResBlock-Modified": each block also sees the sum of all earlier outputs.

    Literally the report's ``PassThrough``::

        outputs = [x]
        for i, block in enumerate(blocks):
            for previous in outputs[:i]:      # every earlier output except the latest (= x)
                x = act(x + previous)
            x = act(x + block(x))
            outputs.append(x)

    With an identity activation the input of block ``i`` is exactly the sum of the stack's
    input and the outputs of blocks ``0 … i−1`` (DenseNet's aggregation, by sum instead of
    concatenation, so the width stays fixed).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pass ``x`` through every block, adding all earlier outputs first."""
        outputs = [x]
        for i, block in enumerate(self.blocks):
            for previous in outputs[:i]:
                x = self.merge_act(x + previous)
            x = self.merge_act(x + block(x))
            outputs.append(x)
        return x


class ConcatStacks(nn.Module):
    """``cat[res1(x), res2(x)]``: two stacks read the same input side by side."""

    def __init__(self, first: nn.Module, second: nn.Module) -> None:
        super().__init__()
        self.first = first
        self.second = second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate both stacks' outputs along the channels."""
        return torch.cat([self.first(x), self.second(x)], dim=1)


def down_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    act_layer: ActArg,
    stride: int = 1,
    drop_rate: float = 0.0,
) -> nn.Sequential:
    """The report's ``Conv → BatchNorm → (act) → MaxPool(2) [→ Dropout2d]`` transition."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding=(kernel_size - 1) // 2),
        nn.BatchNorm2d(out_channels),
        _act(act_layer),
        nn.MaxPool2d(2),
    ]
    if drop_rate > 0:
        layers.append(nn.Dropout2d(drop_rate))
    return nn.Sequential(*layers)


class LevelProjection(nn.Module):
    """One level of the multi-level head: pool to a ``grid × grid`` map, flatten, ``Linear``.

    The report projects "the last several layers' results" to 32/64 dimensions without saying
    how a map becomes a vector. Flattening the whole map would tie the model to one input
    size (and cost 8192×32 weights per level at 128 px); global pooling would make the last
    two levels see the same vector at 128 px. A small fixed grid keeps coarse layout at any
    input size.
    """

    def __init__(self, channels: int, dim: int, grid: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.fc = nn.Linear(channels * grid * grid, dim)
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the ``(B, dim)`` projection of a ``(B, C, H, W)`` map."""
        return self.fc(self.pool(x).flatten(1))


def classifier_mlp(
    in_features: int,
    num_classes: int,
    hidden: int,
    drop_rates: Sequence[float],
    act_layer: ActArg,
) -> nn.Sequential:
    """The report's classifier: ``(Linear → BN → act → Dropout) × 2 → Linear``.

    Here the dropout follows BatchNorm and activation and feeds a ``Linear``, as in the report's
    table; the no-dropout rule applies to the convolution trunk.
    """
    layers: list[nn.Module] = []
    width = in_features
    for rate in drop_rates:
        layers += [nn.Linear(width, hidden), nn.BatchNorm1d(hidden), _act(act_layer)]
        layers.append(nn.Dropout(rate))
        width = hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class CP2Net(nn.Module):
    """The CP2 report's compact CNN family (see the module docstring for the variants).

    Args:
        num_classes: classifier outputs; 0 leaves the classifier out (feature extractor).
        in_chans: input channels.
        width: base channel count ``w`` (64 in the report; stages use ``w`` and ``2w``).
        connection: ``deep`` (stacks in sequence) or ``concat`` (side by side).
        dense: DenseNet-like stacks (:class:`DenseResStack`) instead of plain residual ones.
        multilevel: the multi-level projection-and-concat head in :meth:`forward_features`.
        trunk_dropout: the report's dropout in the convolution trunk (0.15 / 0.25 after the
            transitions, 0.15 / 0.25 inside branches, 0.1 between blocks); off in the
            "NoDropout" variants.
        act_layer: activation inside branches and after transition convolutions (SiLU).
        merge_act_layer: activation after each residual merge (Mish, ``F.mish`` in the report).
        head_act_layer: activation of the classifier MLP (GELU).
        level_grid: pooled grid of the multi-level projections of feature maps.
        head_hidden: hidden width of the classifier MLP.
        head_drop_rates: dropout of each hidden classifier layer.
        global_pool: timm pooling type before the classifier (``""`` keeps the map).
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_chans: int = 3,
        width: int = 64,
        connection: str = "concat",
        dense: bool = False,
        multilevel: bool = False,
        trunk_dropout: bool = False,
        act_layer: ActArg = "silu",
        merge_act_layer: ActArg = "mish",
        head_act_layer: ActArg = "gelu",
        level_grid: int = 2,
        head_hidden: int = 256,
        head_drop_rates: Sequence[float] = (0.3, 0.2),
        global_pool: str = "avg",
    ) -> None:
        super().__init__()
        if connection not in ("deep", "concat"):
            raise ValueError(f"connection must be 'deep' or 'concat', not {connection!r}")
        if width < 4 or width % 2:
            raise ValueError(f"width must be an even number >= 4, not {width}")
        self.num_classes = num_classes
        self.connection, self.dense, self.multilevel = connection, dense, multilevel
        self.trunk_dropout = trunk_dropout
        self.head_hidden, self.head_drop_rates = head_hidden, tuple(head_drop_rates)
        self.head_act_layer = head_act_layer
        w = width
        d_small, d_big = (0.15, 0.25) if trunk_dropout else (0.0, 0.0)
        between = 0.1 if trunk_dropout else 0.0
        stack_cls = DenseResStack if dense else ResStack

        def stack(channels: int, blocks: int, kernel: int) -> ResStack:
            branch = d_small if channels < 128 else d_big
            return stack_cls(channels, blocks, kernel, act_layer, merge_act_layer, branch, between)

        self.stem = down_conv(in_chans, w, 7, act_layer, drop_rate=d_small)
        if connection == "deep":
            self.stage1: nn.Module = nn.Sequential(stack(w, 3, 3), stack(w, 3, 3))
            stage1_out = w
        else:
            self.stage1 = ConcatStacks(stack(w, 3, 3), stack(w, 3, 5))
            stage1_out = 2 * w
        self.down2 = down_conv(stage1_out, 2 * w, 3, act_layer, stride=2, drop_rate=d_big)
        self.stage2 = stack(2 * w, 5, 3)
        self.down3 = down_conv(2 * w, 2 * w, 5, act_layer, drop_rate=d_big)
        self.stage3 = stack(2 * w, 3, 3)
        self.down4 = down_conv(2 * w, w, 3, act_layer, drop_rate=d_big)
        self.stage4 = stack(w, 3, 3)
        self.levels: nn.ModuleList | None = None
        if multilevel:
            # Linear1..5 of the report: after conv3, res3, conv4, res4 and the final pool.
            self.levels = nn.ModuleList(
                [
                    LevelProjection(2 * w, w // 2, level_grid),
                    LevelProjection(2 * w, w // 2, level_grid),
                    LevelProjection(w, w, level_grid),
                    LevelProjection(w, w, level_grid),
                    LevelProjection(w, w, 1),
                ]
            )
            self.num_features = sum(level.out_dim for level in self.levels)
        else:
            self.num_features = w
        self.head_hidden_size = self.num_features
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head: nn.Module = self._make_head(num_classes)

    def _make_head(self, num_classes: int) -> nn.Module:
        if num_classes <= 0:
            return nn.Identity()
        return classifier_mlp(
            self.num_features,
            num_classes,
            self.head_hidden,
            self.head_drop_rates,
            self.head_act_layer,
        )

    def get_classifier(self) -> nn.Module:
        """The classifier module (timm API)."""
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier for ``num_classes`` outputs (timm API)."""
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head = self._make_head(num_classes)

    def group_matcher(self, coarse: bool = False) -> dict[str, Any]:
        """Parameter groups by depth, for timm's layer-wise learning-rate decay."""
        return {"stem": r"^stem", "blocks": [(r"^(stage|down)(\d+)", None), (r"^levels", None)]}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map ``(B, num_features, H/32, W/32)``; ``1×1`` for the multi-level variants."""
        x = self.stage1(self.stem(x))
        x = self.stage2(self.down2(x))
        if self.levels is None:
            x = self.stage3(self.down3(x))
            return self.stage4(self.down4(x))
        taps = [self.down3(x)]
        taps.append(self.stage3(taps[-1]))
        taps.append(self.down4(taps[-1]))
        taps.append(self.stage4(taps[-1]))
        taps.append(taps[-1])  # Linear5 reads the globally pooled last map (grid 1)
        vectors = [level(tap) for level, tap in zip(self.levels, taps, strict=True)]
        return torch.cat(vectors, dim=1)[:, :, None, None]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pool the feature map and apply the classifier (timm API)."""
        x = self.global_pool(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (or pooled features when ``num_classes == 0``)."""
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 10,
        "input_size": (3, 128, 128),
        "pool_size": (4, 4),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "mean": CP2_MEAN,
        "std": CP2_STD,
        "first_conv": "stem.0",
        "classifier": "head",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({name: _cfg() for name in CP2_VARIANTS})


def _create(variant: str, pretrained: bool, **kwargs: Any) -> CP2Net:
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights; build it with pretrained=False")
    return build_model_with_cfg(
        CP2Net, variant, pretrained=False, **{**CP2_VARIANTS[variant], **kwargs}
    )


@register_model
def cp2_deep(pretrained: bool = False, **kwargs: Any) -> CP2Net:
    """CP2 "Deep": residual stacks in sequence, trunk dropout."""
    return _create("cp2_deep", pretrained, **kwargs)


@register_model
def cp2_dropout(pretrained: bool = False, **kwargs: Any) -> CP2Net:
    """CP2 "Dropout": concatenated residual stacks, trunk dropout."""
    return _create("cp2_dropout", pretrained, **kwargs)


@register_model
def cp2_concat(pretrained: bool = False, **kwargs: Any) -> CP2Net:
    """CP2 "NoDropout-concat": concatenated residual stacks, no trunk dropout."""
    return _create("cp2_concat", pretrained, **kwargs)


@register_model
def cp2_multilevel(pretrained: bool = False, **kwargs: Any) -> CP2Net:
    """CP2 concat + the multi-level projection-and-concat head."""
    return _create("cp2_multilevel", pretrained, **kwargs)


@register_model
def cp2_dense(pretrained: bool = False, **kwargs: Any) -> CP2Net:
    """CP2's best: concat + multi-level head + DenseNet-like sum of earlier block outputs."""
    return _create("cp2_dense", pretrained, **kwargs)
