"""A gallery of labelled embeddings: register, remove, classify, search, save atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from openrecog.data.datasets import DatasetError, SkippedFile, labelled_image_files
from openrecog.data.images import ImageInput, ImageLoadError, load_image
from openrecog.index import create_index
from openrecog.models import Embedder, load_artifact, save_artifact
from openrecog.models.artifact import CONFIG_FILE, WEIGHTS_FILE, read_artifact_config
from openrecog.models.encoder import ImageEncoder
from openrecog.storage import read_json, recover_dir, replace_dir, sha256_file

UNKNOWN = "unknown"
GALLERY_FORMAT = "openrecog-gallery"
GALLERY_VERSION = 1
DEFAULT_THRESHOLD = 0.5
MAX_LABEL_LENGTH = 256


class GalleryError(ValueError):
    """A gallery operation that cannot be done; the message says why."""


@dataclass(frozen=True)
class Hit:
    """One search result."""

    label: str
    score: float
    item_id: int


@dataclass
class RegisterReport:
    """What a registration added and what it skipped."""

    added: list[int] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    num_classes: int = 0


def validate_label(label: str) -> str:
    """Check a class label: non-empty text without control characters, at most 256 chars."""
    if not isinstance(label, str):
        raise GalleryError(f"label must be a string, got {type(label).__name__}")
    cleaned = label.strip()
    if not cleaned:
        raise GalleryError("label must not be empty")
    if len(cleaned) > MAX_LABEL_LENGTH:
        raise GalleryError(f"label longer than {MAX_LABEL_LENGTH} characters")
    if any(ord(ch) < 32 for ch in cleaned):
        raise GalleryError(f"label {cleaned!r} contains control characters")
    if cleaned == UNKNOWN:
        raise GalleryError(f"{UNKNOWN!r} is reserved for rejected queries")
    return cleaned


class Gallery:
    """Labelled embeddings of example images, searchable by cosine similarity.

    Args:
        model: the embedding model (stored inside the gallery when saved).
        threshold: cosine score under which :meth:`classify` answers ``"unknown"``; defaults
            to the threshold calibrated at training time if the model carries one.
        index: index spec (``"Flat"``).
        batch_size: images per forward pass when registering.
        device: inference device.
    """

    def __init__(
        self,
        model: Embedder,
        threshold: float | None = None,
        index: str = "Flat",
        batch_size: int = 32,
        device: str = "auto",
    ) -> None:
        self.model = model
        self.encoder = ImageEncoder(model, batch_size=batch_size, device=device)
        self.dim = self.encoder.embedding_dim
        self.index_spec = index
        self.index = create_index(index, self.dim)
        model_threshold = getattr(model, "artifact_metadata", {}).get("threshold")
        self.threshold = float(
            threshold if threshold is not None else model_threshold or DEFAULT_THRESHOLD
        )
        self._labels: dict[int, str] = {}
        self._sources: dict[int, str] = {}
        self._vectors: dict[int, np.ndarray] = {}
        self._next_id = 0

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self._labels)

    def classes(self) -> dict[str, int]:
        """Registered labels with their item counts."""
        return dict(sorted(Counter(self._labels.values()).items()))

    def items(self) -> list[dict[str, Any]]:
        """Every item as ``{"item_id", "label", "source"}``."""
        return [
            {"item_id": i, "label": self._labels[i], "source": self._sources.get(i, "")}
            for i in sorted(self._labels)
        ]

    # ------------------------------------------------------------------ writing
    def add_embeddings(
        self, vectors: np.ndarray, labels: Sequence[str], sources: Sequence[str] | None = None
    ) -> list[int]:
        """Add precomputed L2-normalised embeddings with their labels; returns item ids."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise GalleryError(f"embeddings must have shape (N, {self.dim}), got {vectors.shape}")
        if len(labels) != len(vectors):
            raise GalleryError(f"{len(vectors)} embeddings but {len(labels)} labels")
        if not np.isfinite(vectors).all():
            raise GalleryError("embeddings contain NaN or infinity")
        clean = [validate_label(label) for label in labels]
        ids = np.arange(self._next_id, self._next_id + len(vectors), dtype=np.int64)
        self.index.add(vectors, ids)
        for j, item_id in enumerate(ids.tolist()):
            self._labels[item_id] = clean[j]
            self._sources[item_id] = sources[j] if sources else ""
            self._vectors[item_id] = vectors[j]
        self._next_id += len(vectors)
        return ids.tolist()

    def register(self, image: ImageInput, label: str, source: str | None = None) -> int:
        """Embed one image and add it under ``label``; returns its item id.

        Raises:
            ImageLoadError: the image cannot be read (nothing is added).
            GalleryError: the label is invalid.
        """
        label = validate_label(label)
        vector = self.encoder.encode([image])
        name = (
            source if source is not None else (str(image) if isinstance(image, str | Path) else "")
        )
        return self.add_embeddings(vector, [label], [name])[0]

    def register_many(
        self, images: Sequence[ImageInput], labels: Sequence[str], progress: bool = False
    ) -> RegisterReport:
        """Embed and add many images; unreadable ones are skipped and reported, not raised."""
        if len(images) != len(labels):
            raise GalleryError(f"{len(images)} images but {len(labels)} labels")
        clean = [validate_label(label) for label in labels]
        report = RegisterReport()
        loaded, kept_labels, sources = [], [], []
        for image, label in zip(images, clean, strict=False):
            name = str(image) if isinstance(image, str | Path) else "<image>"
            try:
                loaded.append(load_image(image))
            except ImageLoadError as exc:
                report.skipped.append(SkippedFile(name, str(exc).removeprefix(f"{name}: ")))
                continue
            kept_labels.append(label)
            sources.append(name)
        if loaded:
            vectors = self.encoder.encode(loaded, progress=progress)
            report.added = self.add_embeddings(vectors, kept_labels, sources)
        report.num_classes = len(set(kept_labels))
        return report

    def register_folder(self, folder: str | Path, progress: bool = False) -> RegisterReport:
        """Register ``folder/<class>/<images>`` and ``folder/<image>`` (class = file stem).

        Raises:
            GalleryError: the folder does not exist or holds no image files.
        """
        try:
            items = labelled_image_files(folder)
        except DatasetError as exc:
            raise GalleryError(str(exc)) from exc
        paths = [path for path, _ in items]
        labels = [label for _, label in items]
        return self.register_many(paths, labels, progress=progress)

    def remove(self, item_id: int) -> None:
        """Remove one item by id.

        Raises:
            GalleryError: no item has this id.
        """
        if item_id not in self._labels:
            raise GalleryError(f"no item with id {item_id}")
        self.index.remove(np.array([item_id], dtype=np.int64))
        del self._labels[item_id], self._vectors[item_id]
        self._sources.pop(item_id, None)

    def remove_class(self, label: str) -> int:
        """Remove every item of ``label``; returns how many were removed."""
        ids = [i for i, lab in self._labels.items() if lab == label]
        if not ids:
            raise GalleryError(f"no class {label!r} in the gallery")
        for item_id in ids:
            self.remove(item_id)
        return len(ids)

    # ------------------------------------------------------------------ reading
    def _require_items(self) -> None:
        if not self._labels:
            raise GalleryError("the gallery is empty: register images first")

    def search_embeddings(self, queries: np.ndarray, k: int = 5) -> list[list[Hit]]:
        """Top-``k`` hits for each query embedding."""
        self._require_items()
        scores, ids = self.index.search(queries, min(k, len(self)))
        return [
            [
                Hit(self._labels[int(i)], float(s), int(i))
                for s, i in zip(row_s, row_i, strict=False)
                if i >= 0
            ]
            for row_s, row_i in zip(scores, ids, strict=False)
        ]

    def search(self, image: ImageInput, k: int = 5) -> list[Hit]:
        """The ``k`` most similar registered items to ``image``, best first."""
        self._require_items()
        return self.search_embeddings(self.encoder.encode([image]), k)[0]

    def classify_embeddings(self, queries: np.ndarray) -> list[tuple[str, float]]:
        """Nearest-neighbour label per query, or ``"unknown"`` below the threshold."""
        results = []
        for hits in self.search_embeddings(queries, k=1):
            best = hits[0]
            results.append((best.label if best.score >= self.threshold else UNKNOWN, best.score))
        return results

    def classify(self, image: ImageInput) -> tuple[str, float]:
        """``(label, score)`` of the nearest registered item, or ``("unknown", score)``."""
        self._require_items()
        return self.classify_embeddings(self.encoder.encode([image]))[0]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> Path:
        """Write the gallery (model included) to ``path`` atomically.

        Everything goes to a temporary folder beside ``path`` that replaces it only when
        complete, so a crash leaves either the old gallery or the new one.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            self._write_model(tmp / "model", path / "model")
            ids = np.array(sorted(self._labels), dtype=np.int64)
            vectors = (
                np.stack([self._vectors[i] for i in ids.tolist()])
                if len(ids)
                else np.zeros((0, self.dim), np.float32)
            )
            save_file({"ids": ids, "embeddings": vectors}, str(tmp / "embeddings.safetensors"))
            items = [
                {"item_id": i, "label": self._labels[i], "source": self._sources.get(i, "")}
                for i in ids.tolist()
            ]
            (tmp / "items.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
            manifest = {
                "format": GALLERY_FORMAT,
                "version": GALLERY_VERSION,
                "threshold": self.threshold,
                "index": self.index_spec,
                "dim": self.dim,
                "next_id": self._next_id,
                "count": len(ids),
                "saved_at": time.time(),
                "sha256": {
                    "embeddings.safetensors": sha256_file(tmp / "embeddings.safetensors"),
                    "items.json": sha256_file(tmp / "items.json"),
                },
            }
            (tmp / "gallery.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            replace_dir(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    def _write_model(self, target: Path, existing: Path) -> None:
        # Reuse (hard-link) the model files of the previous save when the model is the same:
        # saves stay cheap while each saved gallery remains self-contained.
        digest = getattr(self.model, "artifact_sha256", None)
        try:
            if digest and read_artifact_config(existing).get("weights_sha256") == digest:
                target.mkdir()
                for name in (CONFIG_FILE, WEIGHTS_FILE):
                    os.link(existing / name, target / name)
                return
        except (OSError, ValueError):
            shutil.rmtree(target, ignore_errors=True)
        save_artifact(self.model, target, metadata=getattr(self.model, "artifact_metadata", {}))

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", batch_size: int = 32) -> Gallery:
        """Load a gallery saved by :meth:`save`, verifying its checksums.

        Raises:
            GalleryError: missing, incomplete or corrupted gallery folder.
        """
        path = Path(path)
        recover_dir(path)
        manifest_path = path / "gallery.json"
        if not manifest_path.is_file():
            raise GalleryError(f"{path}: not a gallery (no gallery.json)")
        manifest = read_json(manifest_path, GalleryError)
        if manifest.get("format") != GALLERY_FORMAT:
            raise GalleryError(f"{path}: not an {GALLERY_FORMAT} folder")
        for name, digest in manifest.get("sha256", {}).items():
            file = path / name
            if not file.is_file() or sha256_file(file) != digest:
                raise GalleryError(f"{file}: missing or checksum mismatch (corrupted gallery)")
        model = load_artifact(path / "model")
        gallery = cls(
            model,
            threshold=manifest["threshold"],
            index=manifest.get("index", "Flat"),
            device=device,
            batch_size=batch_size,
        )
        arrays = load_file(str(path / "embeddings.safetensors"))
        items = read_json(path / "items.json", GalleryError)
        ids, vectors = arrays["ids"], arrays["embeddings"]
        if len(items) != len(ids) or vectors.shape != (len(ids), gallery.dim):
            raise GalleryError(f"{path}: items and embeddings disagree (corrupted gallery)")
        if len(ids):
            gallery.index.add(vectors, ids)
        for item, item_id, vector in zip(items, ids.tolist(), vectors, strict=False):
            gallery._labels[item_id] = item["label"]
            gallery._sources[item_id] = item.get("source", "")
            gallery._vectors[item_id] = vector
        gallery._next_id = int(manifest.get("next_id", int(ids.max()) + 1 if len(ids) else 0))
        return gallery

    def info(self) -> dict[str, Any]:
        """A summary: counts, threshold, dimension, model."""
        return {
            "items": len(self),
            "classes": len(self.classes()),
            "threshold": self.threshold,
            "dim": self.dim,
            "index": self.index_spec,
            "model": self.model.config.model_dump(mode="json"),
        }
