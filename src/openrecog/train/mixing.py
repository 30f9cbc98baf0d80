"""MixUp and CutMix of training batches for margin-loss heads (USI, CP2).

A mixed batch keeps two label vectors and a weight ``lam``; the loss is
``lam · L(y_a) + (1 − lam) · L(y_b)``, which equals the cross-entropy against the mixed
one-hot target for a softmax head. timm's ``Mixup`` builds dense ``(B, num_classes)`` soft
targets instead, which margin heads (and PartialFC's class sampling) cannot take, and draws
from the global RNG; here every draw comes from a generator the caller seeds per step
(``numpy.random.default_rng([seed, step])``), so a resumed run mixes exactly as an
uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MixedBatch:
    """Images after mixing, both label vectors, and the weight of ``labels_a``."""

    images: torch.Tensor
    labels_a: torch.Tensor
    labels_b: torch.Tensor
    lam: float

    @property
    def mixed(self) -> bool:
        """True if the batch was actually mixed."""
        return self.lam < 1.0


def mix_batch(
    images: torch.Tensor,
    labels: torch.Tensor,
    mixup_alpha: float,
    cutmix_alpha: float,
    prob: float,
    rng: np.random.Generator,
) -> MixedBatch:
    """Mix a batch with a shuffled copy of itself (MixUp or CutMix, never both at once).

    With both alphas set, each mixed batch picks one of the two at random (as timm does).
    ``lam`` ~ Beta(α, α); for CutMix it is corrected to the exact pasted area.

    Args:
        images: ``(B, C, H, W)`` batch.
        labels: ``(B,)`` class ids.
        mixup_alpha: MixUp Beta parameter, 0 disables MixUp.
        cutmix_alpha: CutMix Beta parameter, 0 disables CutMix.
        prob: Probability that this batch is mixed at all.
        rng: Generator all random draws come from.
    """
    unmixed = MixedBatch(images, labels, labels, 1.0)
    if (mixup_alpha <= 0 and cutmix_alpha <= 0) or prob <= 0:
        return unmixed
    if rng.random() >= prob:
        return unmixed
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < 0.5)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(images.shape[0])).to(images.device)
    labels_b = labels[perm]
    if not use_cutmix:
        mixed = images * lam + images[perm] * (1.0 - lam)
        return MixedBatch(mixed, labels, labels_b, lam)
    h, w = images.shape[-2:]
    cut = (1.0 - lam) ** 0.5
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    mixed = images.clone()
    mixed[..., y0:y1, x0:x1] = images[perm][..., y0:y1, x0:x1]
    lam = 1.0 - (y1 - y0) * (x1 - x0) / float(h * w)
    return MixedBatch(mixed, labels, labels_b, lam)
