"""Image–caption pairs from a ``captions.csv`` (``path,text[,split]``) for cross-modal training."""

from __future__ import annotations

import csv
from pathlib import Path

from openrecog.data.datasets import DatasetError
from openrecog.data.images import load_image

CAPTIONS_FILE = "captions.csv"


class CaptionDataset:
    """Pairs ``(PIL image, caption)`` listed in ``root/captions.csv``.

    ``path`` is relative to ``root``; rows whose ``split`` differs from ``split`` are left out
    (a file without a ``split`` column holds one split).

    Args:
        root: folder with ``captions.csv``.
        split: split to keep, or None for all rows.

    Attributes:
        paths: the image files, in file order.
        texts: their captions.

    Raises:
        DatasetError: no file, missing columns, empty captions, files outside ``root`` or
            missing, or no row in the split.
    """

    def __init__(self, root: str | Path, split: str | None = None) -> None:
        self.root = Path(root)
        file = self.root / CAPTIONS_FILE
        if not file.is_file():
            raise DatasetError(f"{file} not found (columns: path,text[,split])")
        with open(file, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not {"path", "text"} <= set(reader.fieldnames or []):
                raise DatasetError(f"{file}: needs the columns path,text (has {reader.fieldnames})")
            rows = list(reader)
        self.paths: list[Path] = []
        self.texts: list[str] = []
        base = self.root.resolve()
        for line, row in enumerate(rows, start=2):
            if split is not None and row.get("split", split) != split:
                continue
            text = (row["text"] or "").strip()
            if not text:
                raise DatasetError(f"{file}:{line}: empty caption")
            path = (self.root / row["path"]).resolve()
            if not path.is_relative_to(base):
                raise DatasetError(f"{file}:{line}: {row['path']!r} is outside {self.root}")
            if not path.is_file():
                raise DatasetError(f"{file}:{line}: {row['path']} not found")
            self.paths.append(path)
            self.texts.append(text)
        if not self.paths:
            raise DatasetError(f"{file}: no pairs" + (f" in split {split!r}" if split else ""))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        """``(RGB PIL image, caption)``."""
        return load_image(self.paths[index]), self.texts[index]
