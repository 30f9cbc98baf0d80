"""Test-time augmentation: extra views of a preprocessed batch whose embeddings are averaged.

GUIE solutions averaged the embeddings of a horizontally flipped copy and of zoomed-in crops;
the views here work on tensors already resized and normalised for the model, so they cost
no extra decoding and run as one batched backbone pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

TTA_MODES: tuple[str, ...] = ("none", "flip", "crops", "flip_crops")

# The crops keep 87.5 % of each side (the usual 224/256 centre-crop ratio).
CROP_FRACTION = 0.875


def check_tta_mode(mode: str) -> str:
    """Return ``mode`` if it is a known TTA mode, else raise a ValueError naming the choices."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown tta mode {mode!r}; choose one of {', '.join(TTA_MODES)}")
    return mode


def num_tta_views(mode: str) -> int:
    """How many views :func:`tta_views` makes per image for ``mode``."""
    return {"none": 1, "flip": 2, "crops": 6, "flip_crops": 7}[check_tta_mode(mode)]


def _crops(images: torch.Tensor) -> torch.Tensor:
    """Centre and four corner crops of ``CROP_FRACTION`` of each side, resized back."""
    h, w = images.shape[-2:]
    ch, cw = round(h * CROP_FRACTION), round(w * CROP_FRACTION)
    top, left = (h - ch) // 2, (w - cw) // 2
    corners = [(top, left), (0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw)]
    crops = torch.cat([images[..., y : y + ch, x : x + cw] for y, x in corners])
    return F.interpolate(crops, size=(h, w), mode="bilinear", align_corners=False, antialias=True)


def tta_views(images: torch.Tensor, mode: str) -> torch.Tensor:
    """All views of ``images`` ``(B, C, H, W)`` for ``mode``, view-major ``(V·B, C, H, W)``.

    Views, in order: ``none`` – the input; ``flip`` – input, horizontal flip; ``crops`` –
    input, centre crop, then the top-left, top-right, bottom-left and bottom-right corner
    crops (each ``0.875`` of the side, resized back bilinearly); ``flip_crops`` – the
    ``crops`` views, then the flip. View ``v`` of image ``i`` is row ``v·B + i``.
    """
    check_tta_mode(mode)
    views = [images]
    if mode in ("crops", "flip_crops"):
        views.append(_crops(images))
    if mode in ("flip", "flip_crops"):
        views.append(torch.flip(images, dims=[-1]))
    return torch.cat(views) if len(views) > 1 else images
