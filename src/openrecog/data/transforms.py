"""Image → tensor pipelines for training (augmented) and inference (deterministic)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from PIL import Image
from torchvision.transforms import v2

from openrecog.config import AugmentConfig

# v2.JPEG uses torchvision's image codec, deprecated in favour of TorchCodec; it still works
# and torchcodec is not a dependency, so the per-call warning is only noise.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding", category=DeprecationWarning
)


def build_eval_transform(
    image_size: int, mean: list[float], std: list[float]
) -> Callable[[Image.Image], torch.Tensor]:
    """Resize (squash) to ``image_size``², to float tensor, normalise.

    Squashing rather than center-cropping keeps the whole document page in view; the
    aspect distortion is the same at registration and query time.
    """
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize((image_size, image_size), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def build_train_transform(
    image_size: int, mean: list[float], std: list[float], cfg: AugmentConfig
) -> Callable[[Image.Image], torch.Tensor]:
    """The configurable training augmentation pipeline (see :class:`AugmentConfig`).

    ``cfg.preset`` other than ``custom`` selects a named list instead (:data:`PRESETS`).
    """
    if cfg.preset != "custom":
        return PRESETS[cfg.preset](image_size, mean, std)
    steps: list[Callable] = [v2.ToImage()]
    if cfg.rotate_degrees > 0:
        steps.append(v2.RandomRotation(cfg.rotate_degrees, fill=255, expand=False))
    if cfg.perspective > 0:
        steps.append(v2.RandomPerspective(distortion_scale=cfg.perspective, p=0.5, fill=255))
    if cfg.random_resized_crop:
        steps.append(
            v2.RandomResizedCrop(
                (image_size, image_size), scale=cfg.scale, ratio=cfg.ratio, antialias=True
            )
        )
    else:
        steps.append(v2.Resize((image_size, image_size), antialias=True))
    if cfg.hflip > 0:
        steps.append(v2.RandomHorizontalFlip(cfg.hflip))
    if cfg.color_jitter > 0:
        j = cfg.color_jitter
        steps.append(v2.RandomApply([v2.ColorJitter(j, j, j, min(0.1, j / 3))], p=0.8))
    if cfg.grayscale > 0:
        steps.append(v2.RandomGrayscale(cfg.grayscale))
    if cfg.blur > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=cfg.blur))
    if cfg.jpeg_quality is not None and cfg.jpeg_prob > 0:
        steps.append(v2.RandomApply([v2.JPEG(list(cfg.jpeg_quality))], p=cfg.jpeg_prob))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if cfg.random_erasing > 0:
        steps.append(v2.RandomErasing(p=cfg.random_erasing, value=0))
    return v2.Compose(steps)


def build_cp2_transform(
    image_size: int, mean: list[float], std: list[float]
) -> Callable[[Image.Image], torch.Tensor]:
    """The CP2 report's augmentation list, in its order, at ``image_size`` (128 in the report).

    Horizontal flip; random crop with 4 px padding; rotation up to 30°; colour jitter;
    grayscale with p = 0.2; affine translation up to 25 %; perspective with distortion 0.3 at
    p = 0.5; normalisation (the cp2 backbones carry the report's mean/std as their default).
    The report gives no jitter strengths; 0.2 (hue 0.05) is torchvision's usual mild
    setting, in its spirit of augmentation "not set too hard" for a small model. MixUp is a
    batch-level step: ``train.mixup_alpha`` / ``train.stages[].mixup_alpha``.
    """
    return v2.Compose(
        [
            v2.ToImage(),
            # The report's images already had the crop size; other sets are squashed to it.
            v2.Resize((image_size, image_size), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomCrop(image_size, padding=4),
            v2.RandomRotation(30),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05),
            v2.RandomGrayscale(0.2),
            v2.RandomAffine(degrees=0, translate=(0.25, 0.25)),
            v2.RandomPerspective(distortion_scale=0.3, p=0.5),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )


# Named augmentation lists selected by ``data.augment.preset``.
PRESETS: dict[str, Callable[[int, list[float], list[float]], Callable]] = {
    "cp2": build_cp2_transform,
}
