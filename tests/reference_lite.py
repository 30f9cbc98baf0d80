"""An independent functional EfficientNet-Lite that runs a lukemelas-format state dict as is.

Written from the TF reference (SAME padding, BN eps 1e-3, ReLU6, no squeeze-excitation) so
the key mapping onto timm can be checked against the weights' own structure.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Stride of the first block of each of the 7 stages (identical for lite0..lite4).
STAGE_STRIDES = [1, 2, 2, 2, 1, 2, 1]
BN_EPS = 1e-3


def _same_pad(x: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    pads = []
    for size in (x.shape[3], x.shape[2]):
        total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


def _conv(x, w, stride=1, groups=1):
    return F.conv2d(_same_pad(x, w.shape[-1], stride), w, stride=stride, groups=groups)


def _bn(x, sd, prefix):
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        training=False,
        eps=BN_EPS,
    )


def reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """ImageNet logits of a lukemelas EfficientNet-Lite state dict."""
    x = F.relu6(_bn(_conv(x, sd["_conv_stem.weight"], stride=2), sd, "_bn0"))
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    stage, prev_out = -1, None
    for b in range(n_blocks):
        p = f"_blocks.{b}"
        out_ch = sd[f"{p}._project_conv.weight"].shape[0]
        first = out_ch != prev_out
        if first:
            stage += 1
        stride = STAGE_STRIDES[stage] if first else 1
        inp = x
        if f"{p}._expand_conv.weight" in sd:
            x = F.relu6(_bn(_conv(x, sd[f"{p}._expand_conv.weight"]), sd, f"{p}._bn0"))
        dw = sd[f"{p}._depthwise_conv.weight"]
        x = F.relu6(_bn(_conv(x, dw, stride=stride, groups=dw.shape[0]), sd, f"{p}._bn1"))
        x = _bn(_conv(x, sd[f"{p}._project_conv.weight"]), sd, f"{p}._bn2")
        if stride == 1 and inp.shape[1] == out_ch:
            x = x + inp
        prev_out = out_ch
    x = F.relu6(_bn(_conv(x, sd["_conv_head.weight"]), sd, "_bn1"))
    x = x.mean(dim=(2, 3))
    return F.linear(x, sd["_fc.weight"], sd["_fc.bias"])
