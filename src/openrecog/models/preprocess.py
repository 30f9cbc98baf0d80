"""Convert a batch prepared for one model into the input another model expects.

Two models with different mean/std or input size can share one decoded, resized and
normalised batch (a distillation teacher, the members of an ensemble): undo the first
model's normalisation, apply the second's, and resize if the sizes differ.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def convert_preprocessing(
    images: torch.Tensor,
    source_mean: Sequence[float],
    source_std: Sequence[float],
    target_mean: Sequence[float],
    target_std: Sequence[float],
    image_size: int | None = None,
) -> torch.Tensor:
    """Re-normalise ``images`` ``(B, 3, H, W)`` from source to target mean/std and resize.

    The resize (bilinear with antialiasing) runs only if ``image_size`` is given and differs
    from the batch's size; the re-normalisation only if the statistics differ, so a batch
    that already fits is returned unchanged (bit for bit).
    """
    x = images
    if list(source_mean) != list(target_mean) or list(source_std) != list(target_std):
        s_mean, s_std, t_mean, t_std = (
            torch.tensor(list(v), device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
            for v in (source_mean, source_std, target_mean, target_std)
        )
        x = (x * s_std + s_mean - t_mean) / t_std
    if image_size and tuple(x.shape[-2:]) != (image_size, image_size):
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        )
    return x
