"""Synthetic document templates as a training/evaluation dataset without files.

Each template is a class. ``__getitem__`` renders a fixed instance (for evaluation and
galleries); ``get_view`` renders a fresh instance — new field text, new photo degradation —
from a seed, which is how the trainer sees many views of one template.
"""

from __future__ import annotations

import random
from functools import lru_cache

from PIL import Image
from torch.utils.data import Dataset

from openrecog.data.synthetic import make_template, render


class SyntheticTemplateViews(Dataset):
    """``num_classes`` templates × ``images_per_class`` rendered instances.

    Args:
        num_classes: number of templates (classes).
        images_per_class: fixed instances per template returned by ``__getitem__``.
        seed: generator seed; templates are ``make_template(start_index + c, seed)``.
        image_size: longer side of the rendered image.
        start_index: first template index (use disjoint ranges for train and test).
    """

    def __init__(
        self,
        num_classes: int,
        images_per_class: int,
        seed: int,
        image_size: int,
        start_index: int = 0,
    ) -> None:
        self.num_classes = num_classes
        self.images_per_class = images_per_class
        self.seed = seed
        self.image_size = image_size
        self.start_index = start_index
        self.labels = [c for c in range(num_classes) for _ in range(images_per_class)]
        self.class_names = [f"tpl_{start_index + c:07d}" for c in range(num_classes)]

    def __len__(self) -> int:
        return len(self.labels)

    @lru_cache(maxsize=4096)  # noqa: B019 - templates are small and reused for every view
    def _template(self, label: int):
        return make_template(self.start_index + label, self.seed)

    def _render(self, label: int, rng_seed: int) -> Image.Image:
        # Render at ~1.5x the model input: enough detail, and keeps generation cheap.
        size = max(self.image_size * 3 // 2, 96)
        return render(self._template(label), random.Random(rng_seed), degrade=True, size=size)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        """The fixed instance ``index`` (deterministic)."""
        label = self.labels[index]
        return self._render(label, hash((self.seed, self.start_index, index)) & 0x7FFFFFFF), label

    def get_view(self, index: int, seed: int) -> tuple[Image.Image, int]:
        """A fresh instance of item ``index``'s template, drawn from ``seed``."""
        label = self.labels[index]
        return self._render(label, seed), label
