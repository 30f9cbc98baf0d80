"""Labelled image datasets: class-per-folder, ``labels.csv`` and instance-as-class.

Every dataset here exposes ``labels`` (one int per item), ``class_names`` and
``__getitem__(i) -> (PIL image, label)``; augmentation is applied by
:class:`AugmentedDataset`, which the samplers drive with per-sample seeds.
"""

from __future__ import annotations

import bisect
import csv
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from openrecog.data.images import check_image, is_image_file, list_image_files, load_image


class DatasetError(ValueError):
    """A dataset that cannot be used as given; the message says what to fix."""


@dataclass
class SkippedFile:
    """A file left out of a dataset and why."""

    path: str
    reason: str


@dataclass
class ImageListDataset(Dataset):
    """A list of ``(path, label)`` with class names; loads images lazily as RGB."""

    paths: list[Path]
    labels: list[int]
    class_names: list[str]
    skipped: list[SkippedFile] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        """Load image ``index`` as RGB with its label."""
        return load_image(self.paths[index]), self.labels[index]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.class_names)

    def class_counts(self) -> Counter:
        """Images per class index."""
        return Counter(self.labels)

    def filter_min_images(self, min_images: int) -> ImageListDataset:
        """Drop classes with fewer than ``min_images`` images (re-indexing the rest)."""
        counts = self.class_counts()
        keep = [c for c in range(self.num_classes) if counts[c] >= min_images]
        return self._subset_classes(keep)

    def limit_images_per_class(self, max_images: int, seed: int = 0) -> ImageListDataset:
        """Keep at most ``max_images`` per class, a seeded random subset of each larger class."""
        rng = random.Random(seed)
        by_class: dict[int, list[int]] = {}
        for index, label in enumerate(self.labels):
            by_class.setdefault(label, []).append(index)
        keep = sorted(
            i
            for members in by_class.values()
            for i in (members if len(members) <= max_images else rng.sample(members, max_images))
        )
        return ImageListDataset(
            [self.paths[i] for i in keep],
            [self.labels[i] for i in keep],
            list(self.class_names),
            self.skipped,
        )

    def instance_as_class(self) -> ImageListDataset:
        """The same images, each its own class (DocClassifier's instance discrimination)."""
        names = [
            f"{self.class_names[lab]}/{p.name}"
            for p, lab in zip(self.paths, self.labels, strict=False)
        ]
        return ImageListDataset(list(self.paths), list(range(len(self.paths))), names, self.skipped)

    def _subset_classes(self, keep: list[int]) -> ImageListDataset:
        remap = {old: new for new, old in enumerate(keep)}
        pairs = [
            (p, remap[lab]) for p, lab in zip(self.paths, self.labels, strict=False) if lab in remap
        ]
        return ImageListDataset(
            [p for p, _ in pairs],
            [lab for _, lab in pairs],
            [self.class_names[c] for c in keep],
            self.skipped,
        )


def dataset_from_items(items: list[tuple[Path, str]], check: bool, where: str) -> ImageListDataset:
    """Dataset of ``(path, label)`` pairs; with ``check``, unreadable files are skipped."""
    skipped: list[SkippedFile] = []
    good: list[tuple[Path, str]] = []
    for path, label in items:
        reason = check_image(path) if check else None
        if reason:
            skipped.append(SkippedFile(str(path), reason))
        else:
            good.append((path, label))
    if not good:
        detail = f" ({len(skipped)} unreadable files skipped)" if skipped else ""
        raise DatasetError(f"{where}: no usable images found{detail}")
    class_names = sorted({label for _, label in good})
    index = {name: i for i, name in enumerate(class_names)}
    return ImageListDataset(
        [p for p, _ in good], [index[lab] for _, lab in good], class_names, skipped
    )


def labelled_image_files(root: str | Path) -> list[tuple[Path, str]]:
    """``(path, label)`` for ``root/<class>/**/<image>`` and ``root/<image>`` (label = stem).

    Files directly in ``root`` are classes of their own, named by file stem (the DocClassifier
    "one file per class" layout). Hidden files and folders are ignored.

    Raises:
        DatasetError: ``root`` is missing or holds no image files.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: folder not found")
    items: list[tuple[Path, str]] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            items.extend((p, entry.name) for p in list_image_files(entry))
        elif entry.is_file() and is_image_file(entry):
            items.append((entry, entry.stem))
    if not items:
        raise DatasetError(f"{root}: no image files found (expected <class>/<image> or <image>)")
    return items


def folder_dataset(root: str | Path, check: bool = True) -> ImageListDataset:
    """Class-per-folder dataset (layout of :func:`labelled_image_files`).

    Unreadable files are skipped and listed in ``skipped``.
    """
    return dataset_from_items(labelled_image_files(root), check, str(root))


def csv_dataset(root: str | Path, split: str | None = None, check: bool = True) -> ImageListDataset:
    """Dataset from ``root/labels.csv`` with columns ``path,label[,split]``.

    ``split`` keeps only rows whose ``split`` column matches (e.g. ``train``/``test``).
    """
    root = Path(root)
    csv_path = root / "labels.csv" if root.is_dir() else root
    base = csv_path.parent
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: labels.csv not found")
    with open(csv_path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or [])
        if not {"path", "label"} <= columns:
            raise DatasetError(
                f"{csv_path}: needs columns path,label[,split]; has {sorted(columns)}"
            )
        if split is not None and "split" not in columns:
            raise DatasetError(f"{csv_path}: no split column, cannot select split {split!r}")
        rows = [r for r in reader if split is None or r.get("split") == split]
    if not rows:
        raise DatasetError(f"{csv_path}: no rows for split {split!r}")
    items = [(base / r["path"], r["label"]) for r in rows]
    return dataset_from_items(items, check, str(csv_path))


class ConcatClassDataset(Dataset):
    """Several labelled datasets as one, with class indices offset so they never collide.

    Items keep their source's ``get_view`` (fresh synthetic renders) where it has one.
    """

    def __init__(self, parts: list[Dataset]) -> None:
        if not parts:
            raise DatasetError("nothing to concatenate: no datasets given")
        self.parts = parts
        self.labels: list[int] = []
        self.class_names: list[str] = []
        self._starts: list[int] = []  # first global index of each part
        self._offsets: list[int] = []  # first global class of each part
        for part in parts:
            self._starts.append(len(self.labels))
            self._offsets.append(len(self.class_names))
            self.labels.extend(self._offsets[-1] + lab for lab in part.labels)  # type: ignore[attr-defined]
            self.class_names.extend(part.class_names)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.labels)

    def _locate(self, index: int) -> tuple[int, int]:
        if not 0 <= index < len(self.labels):
            raise IndexError(index)
        part = bisect.bisect_right(self._starts, index) - 1
        return part, index - self._starts[part]

    def part_of(self, index: int) -> int:
        """Which of the concatenated datasets item ``index`` comes from (0: the first)."""
        return self._locate(index)[0]

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        """Item ``index`` with its global label."""
        part, local = self._locate(index)
        image, label = self.parts[part][local]
        return image, label + self._offsets[part]

    def get_view(self, index: int, seed: int) -> tuple[Image.Image, int]:
        """A view of item ``index``: a fresh render where the source can make one."""
        part, local = self._locate(index)
        image, label = load_view(self.parts[part], local, seed)
        return image, label + self._offsets[part]


def load_view(dataset: Dataset, index: int, seed: int) -> tuple[Image.Image, int]:
    """Item ``index`` of ``dataset``, freshly generated from ``seed`` if it can do that.

    Generated data (``get_view``) renders a new instance per view (new text, same template);
    file datasets return their stored image.
    """
    if hasattr(dataset, "get_view"):
        return dataset.get_view(index, seed)
    return dataset[index]


class AugmentedDataset(Dataset):
    """Applies a random transform with a per-sample seed, making every view reproducible.

    Samplers yield ``(index, seed)`` keys; seeding the transform from the key (instead of the
    global RNG) makes augmentation independent of worker count and lets a resumed run see
    exactly the views an uninterrupted run would have seen.
    """

    def __init__(self, base: Dataset, transform: Callable[[Image.Image], torch.Tensor]) -> None:
        self.base = base
        self.transform = transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        """Load item ``index`` and transform it under ``seed``."""
        index, seed = key if isinstance(key, tuple) else (key, key)
        image, label = load_view(self.base, index, seed)
        py_state = random.getstate()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            try:
                tensor = self.transform(image)
            finally:
                random.setstate(py_state)
        return tensor, label
