"""Shared fixtures: tiny generated data, offline only."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

torch.set_num_threads(min(2, os.cpu_count() or 1))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def draw_pattern(kind: int, variant: int, size: int = 96) -> Image.Image:
    """A simple image of class ``kind`` (shape + colour) with per-variant jitter."""
    rng = np.random.default_rng(kind * 1000 + variant)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(200, 256, 3)))
    draw = ImageDraw.Draw(image)
    colour = [
        (200, 30, 30),
        (30, 160, 30),
        (30, 30, 200),
        (200, 160, 0),
        (120, 0, 160),
        (0, 150, 150),
        (90, 90, 90),
        (230, 100, 0),
    ][kind % 8]
    jitter = int(rng.integers(-6, 7))
    c = size // 2 + jitter
    r = size // 3
    shape = kind % 4
    if shape == 0:
        draw.ellipse([c - r, c - r, c + r, c + r], fill=colour)
    elif shape == 1:
        draw.rectangle([c - r, c - r, c + r, c + r], fill=colour)
    elif shape == 2:
        draw.polygon([(c, c - r), (c - r, c + r), (c + r, c + r)], fill=colour)
    else:
        for i in range(0, size, 12):
            draw.line([(i + jitter, 0), (i + jitter, size)], fill=colour, width=4)
    return image


@pytest.fixture
def pattern_folder(tmp_path: Path) -> Path:
    """``classes/<class>/<n>.png``: 6 classes × 4 images."""
    root = tmp_path / "classes"
    for kind in range(6):
        folder = root / f"class_{kind}"
        folder.mkdir(parents=True)
        for variant in range(4):
            draw_pattern(kind, variant).save(folder / f"{variant}.png")
    return root
