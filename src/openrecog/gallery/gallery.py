"""A gallery of labelled embeddings: register, remove, classify, search, save atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from openrecog.data.datasets import DatasetError, SkippedFile, labelled_image_files
from openrecog.data.images import ImageInput, ImageLoadError
from openrecog.gallery.errors import GalleryError
from openrecog.gallery.store import ItemStore, MemoryStore, PgVectorStore
from openrecog.gallery.validate import check_items, check_manifest
from openrecog.index import FlatIndex, create_index, index_from_bytes
from openrecog.index.pgvector import is_pgvector_spec, redacted_dsn
from openrecog.models import Embedder, load_artifact, save_artifact
from openrecog.models.artifact import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    artifact_holds_model,
    loaded_weights_sha256,
    read_artifact_config,
)
from openrecog.models.encoder import ImageEncoder
from openrecog.models.onnx_engine import ONNX_VARIANTS, recorded_onnx
from openrecog.storage import read_json, recover_dir, replace_dir, sha256_file

UNKNOWN = "unknown"
GALLERY_FORMAT = "openrecog-gallery"
GALLERY_VERSION = 1
INDEX_FILE = "index.faiss"
DEFAULT_THRESHOLD = 0.5
MAX_LABEL_LENGTH = 256


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


def gallery_exists(path: str | Path) -> bool:
    """Whether ``path`` holds a saved gallery, restoring one whose last save was interrupted.

    Check with this, not for ``gallery.json``: a crash in the middle of a save leaves the
    gallery renamed aside, and a new gallery created in its place would hide it for good.
    """
    path = Path(path)
    recover_dir(path)
    return (path / "gallery.json").is_file()


class Gallery:
    """Labelled embeddings of example images, searchable by cosine similarity.

    Args:
        model: the embedding model (stored inside the gallery when saved).
        threshold: cosine score under which :meth:`classify` answers ``"unknown"``; defaults
            to the threshold calibrated at training time if the model carries one.
        index: index spec: a FAISS-style spec (``"Flat"``) keeps the items in this process
            and saves them in the gallery folder; ``"pgvector+postgresql://user@host:port/db
            ?table=NAME"`` keeps them in a PostgreSQL table (pgvector) shared by every
            gallery opened on it, e.g. by several servers. The password comes from
            ``PGPASSWORD`` or ``~/.pgpass``; one written in the spec is used but never saved.
        batch_size: images per forward pass when registering.
        device: inference device.
        engine: inference engine of the :class:`ImageEncoder` (``auto``: onnxruntime when
            the model's artifact has an ONNX export, else PyTorch).
        threads: onnxruntime intra-op threads (default: one per physical core).
        spinning: whether onnxruntime's idle threads spin-wait (see :class:`ImageEncoder`).

    Raises:
        GalleryError: a pgvector spec whose database cannot be reached or whose table does
            not fit (another dimension, not a gallery table).
    """

    def __init__(
        self,
        model: Embedder,
        threshold: float | None = None,
        index: str = "Flat",
        batch_size: int = 32,
        device: str = "auto",
        engine: str = "auto",
        threads: int | None = None,
        spinning: bool = True,
    ) -> None:
        self.model = model
        self.encoder = ImageEncoder(
            model,
            batch_size=batch_size,
            device=device,
            engine=engine,
            threads=threads,
            spinning=spinning,
        )
        self.dim = self.encoder.embedding_dim
        self._store: ItemStore = (
            PgVectorStore.open(index, self.dim)
            if is_pgvector_spec(index)
            else MemoryStore(create_index(index, self.dim), index)
        )
        self.index_spec = self._store.spec  # never holds a password
        self.index = self._store.index
        model_threshold = getattr(model, "artifact_metadata", {}).get("threshold")
        self.threshold = float(
            threshold if threshold is not None else model_threshold or DEFAULT_THRESHOLD
        )

    @property
    def shared(self) -> bool:
        """Whether the items live in a database that other processes may change too."""
        return isinstance(self._store, PgVectorStore)

    def close(self) -> None:
        """Release the database connection of a PostgreSQL gallery (no-op otherwise)."""
        self._store.close()

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self._store)

    def classes(self) -> dict[str, int]:
        """Registered labels with their item counts."""
        return self._store.classes()

    def items(self) -> list[dict[str, Any]]:
        """Every item as ``{"item_id", "label", "source"}``."""
        return self._store.items()

    def item(self, item_id: int) -> dict[str, Any] | None:
        """One item as ``{"item_id", "label", "source"}`` (a lookup, not a scan), or None."""
        return self._store.item(item_id)

    # ------------------------------------------------------------------ writing
    def add_embeddings(
        self, vectors: np.ndarray, labels: Sequence[str], sources: Sequence[str] | None = None
    ) -> list[int]:
        """Add precomputed L2-normalised embeddings with their labels; returns item ids.

        Ids are never reused after removal; with a PostgreSQL gallery they are allocated by
        the database, so galleries adding at the same time never collide.
        """
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise GalleryError(f"embeddings must have shape (N, {self.dim}), got {vectors.shape}")
        if len(labels) != len(vectors):
            raise GalleryError(f"{len(vectors)} embeddings but {len(labels)} labels")
        if not np.isfinite(vectors).all():
            raise GalleryError("embeddings contain NaN or infinity")
        clean = [validate_label(label) for label in labels]
        names = [str(sources[j]) if sources else "" for j in range(len(vectors))]
        return self._store.add(vectors, clean, names)

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
                loaded.append(self.encoder.load(image))
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
        if isinstance(item_id, bool) or not isinstance(item_id, int | np.integer):
            raise GalleryError(f"no item with id {item_id!r}")
        if not self._store.remove([int(item_id)]):
            raise GalleryError(f"no item with id {item_id}")

    def remove_class(self, label: str) -> int:
        """Remove every item of ``label``; returns how many were removed."""
        removed = self._store.remove_label(label)
        if not removed:
            raise GalleryError(f"no class {label!r} in the gallery")
        return removed

    # ------------------------------------------------------------------ reading
    def _require_items(self) -> None:
        if self._store.is_empty():
            raise GalleryError("the gallery is empty: register images first")

    def search_embeddings(self, queries: np.ndarray, k: int = 5) -> list[list[Hit]]:
        """Top-``k`` hits for each query embedding."""
        self._require_items()
        rows = self._store.search(queries, k)
        return [[Hit(label, score, item_id) for item_id, score, label in row] for row in rows]

    def search(self, image: ImageInput, k: int = 5) -> list[Hit]:
        """The ``k`` most similar registered items to ``image``, best first."""
        self._require_items()
        return self.search_embeddings(self.encoder.encode([image]), k)[0]

    def attach_text_encoder(self, text_encoder: Any) -> None:
        """Let :meth:`search_text` find images by caption with a cross-modal text side.

        Args:
            text_encoder: a :class:`~openrecog.models.crossmodal.TextEncoder` (see
                :func:`~openrecog.models.crossmodal.load_text_encoder`), trained together with
                this gallery's image model: the gallery must have been registered with that
                run's ``model/image``, whose embeddings are in the joint space.

        Raises:
            GalleryError: the text side belongs to another image model.
        """
        expected = getattr(text_encoder, "image_artifact_sha256", None)
        if expected is None or expected != loaded_weights_sha256(self.model):
            raise GalleryError(
                "this text model was trained with another image model than the gallery's: "
                "register the gallery with the image side of the same cross-modal run "
                "(--model RUN/model/image)"
            )
        self.text_encoder = text_encoder

    def search_text(self, text: str, k: int = 5) -> list[Hit]:
        """The ``k`` registered items that best fit the caption ``text``, best first.

        Raises:
            GalleryError: no text encoder attached (:meth:`attach_text_encoder`), an empty
                text, or an empty gallery.
        """
        encoder = getattr(self, "text_encoder", None)
        if encoder is None:
            raise GalleryError("no text model: attach one to search by text (--text-model)")
        if not text.strip():
            raise GalleryError("the text query is empty")
        self._require_items()
        return self.search_embeddings(encoder.encode([text]).numpy(), k)[0]

    def classify_embeddings(self, queries: np.ndarray) -> list[tuple[str, float]]:
        """Nearest-neighbour label per query, or ``"unknown"`` below the threshold."""
        results = []
        for hits in self.search_embeddings(queries, k=1):
            if not hits:  # a shared gallery emptied by another process since the check
                results.append((UNKNOWN, -1.0))
                continue
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
        complete, so a crash leaves either the old gallery or the new one. A PostgreSQL
        gallery keeps its items in the database: the folder then holds the model and a
        manifest naming the database (without password) and the table.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            self._write_model(tmp / "model", path / "model")
            if isinstance(self._store, MemoryStore):
                manifest = self._write_items(tmp, self._store)
            else:
                manifest = self._database_manifest(self._store)
            (tmp / "gallery.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
            replace_dir(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return path

    def _write_items(self, folder: Path, store: MemoryStore) -> dict[str, Any]:
        ids, vectors = store.export()
        save_file({"ids": ids, "embeddings": vectors}, str(folder / "embeddings.safetensors"))
        items = [
            {"item_id": i, "label": store.labels[i], "source": store.sources.get(i, "")}
            for i in ids.tolist()
        ]
        (folder / "items.json").write_text(json.dumps(items, ensure_ascii=False), encoding="utf-8")
        files = ["embeddings.safetensors", "items.json"]
        if not isinstance(store.index, FlatIndex) and hasattr(store.index, "to_bytes"):
            # Building an HNSW graph or training IVF-PQ on a large gallery takes minutes;
            # an exact index is rebuilt from the embeddings faster than it is read.
            (folder / INDEX_FILE).write_bytes(store.index.to_bytes())
            files.append(INDEX_FILE)
        return {
            "format": GALLERY_FORMAT,
            "version": GALLERY_VERSION,
            "threshold": self.threshold,
            "index": self.index_spec,
            "dim": self.dim,
            "next_id": store.next_id,
            "count": len(ids),
            "saved_at": time.time(),
            "sha256": {name: sha256_file(folder / name) for name in files},
        }

    def _database_manifest(self, store: PgVectorStore) -> dict[str, Any]:
        return {
            "format": GALLERY_FORMAT,
            "version": GALLERY_VERSION,
            "threshold": self.threshold,
            "index": self.index_spec,
            "backend": "pgvector",
            "dsn": store.index.dsn,  # already redacted by PgVectorIndex
            "table": store.index.table,
            "dim": self.dim,
            "count": len(store),  # at save time only: other processes may change it
            "saved_at": time.time(),
            "sha256": {},
        }

    def _write_model(self, target: Path, existing: Path) -> None:
        # An unchanged model is stored as the very files it was loaded from, hard-linked
        # where possible: saves stay cheap, each saved gallery stays self-contained, and it
        # keeps the artifact's ONNX export (so a reloaded gallery and the server run on
        # onnxruntime too) and its compact stored weights.
        for source in (existing, getattr(self.model, "artifact_path", None)):
            if source is not None and self._link_model_files(Path(source), target):
                return
        save_artifact(self.model, target, metadata=getattr(self.model, "artifact_metadata", {}))

    def _link_model_files(self, source: Path, target: Path) -> bool:
        """Link or copy the artifact ``source`` to ``target`` if it holds exactly our model."""
        try:
            # Not when e.g. its tta changed since it was loaded.
            if not artifact_holds_model(read_artifact_config(source), self.model):
                return False
            names = [CONFIG_FILE, WEIGHTS_FILE]
            for variant in ONNX_VARIANTS:
                if (record := recorded_onnx(source, variant)) is not None:
                    names.append(record["file"])
            target.mkdir()
            for name in names:
                try:
                    os.link(source / name, target / name)
                except OSError:  # another file system, or links not allowed
                    shutil.copy2(source / name, target / name)
            return True
        except (OSError, ValueError, KeyError, TypeError):
            shutil.rmtree(target, ignore_errors=True)
            return False

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str = "auto",
        batch_size: int = 32,
        index: str | None = None,
        engine: str = "auto",
        threads: int | None = None,
        spinning: bool = True,
    ) -> Gallery:
        """Load a gallery saved by :meth:`save`, verifying its checksums.

        A PostgreSQL gallery reconnects to its database (password from ``PGPASSWORD`` or
        ``~/.pgpass``) and sees the table as it is now, including changes made by others.

        Args:
            path: the gallery folder.
            device: inference device.
            batch_size: images per forward pass when registering.
            index: open with this index spec instead of the saved one: another FAISS spec
                for a gallery stored in files (rebuilt from the saved embeddings), or
                another ``pgvector+postgresql://`` spec for a PostgreSQL gallery (another
                host name for the same database, a DSN with a password, ...).
            engine: inference engine (see :class:`Gallery`).
            threads: onnxruntime intra-op threads (see :class:`Gallery`).
            spinning: whether onnxruntime's idle threads spin-wait (see :class:`Gallery`).

        Raises:
            GalleryError: missing, incomplete or corrupted gallery folder; an ``index``
                of the other kind; an unreachable database.
        """
        path = Path(path)
        recover_dir(path)
        manifest_path = path / "gallery.json"
        if not manifest_path.is_file():
            raise GalleryError(f"{path}: not a gallery (no gallery.json)")
        manifest = read_json(manifest_path, GalleryError)
        if not isinstance(manifest, dict) or manifest.get("format") != GALLERY_FORMAT:
            raise GalleryError(f"{path}: not an {GALLERY_FORMAT} folder")
        saved_spec = manifest.get("index", "Flat")
        if not isinstance(saved_spec, str):
            raise GalleryError(f"{manifest_path}: 'index' must be an index spec")
        in_database = manifest.get("backend") == "pgvector" or is_pgvector_spec(saved_spec)
        check_manifest(path, manifest, in_folder=not in_database)
        for name, digest in manifest.get("sha256", {}).items():
            file = path / name
            if not file.is_file() or sha256_file(file) != digest:
                raise GalleryError(f"{file}: missing or checksum mismatch (corrupted gallery)")
        spec = index if index is not None else saved_spec
        if is_pgvector_spec(spec) != in_database:
            where = f"in PostgreSQL ({saved_spec})" if in_database else "in the gallery folder"
            raise GalleryError(
                f"{path}: the items are stored {where}; "
                f"they cannot be opened with index {redacted_dsn(spec)!r}"
            )
        model = load_artifact(path / "model")
        gallery = cls(
            model,
            threshold=manifest["threshold"],
            index=spec,
            device=device,
            batch_size=batch_size,
            engine=engine,
            threads=threads,
            spinning=spinning,
        )
        if isinstance(gallery._store, MemoryStore):
            gallery._read_items(path, manifest, gallery._store, reuse_index=spec == saved_spec)
        return gallery

    def _read_items(
        self, path: Path, manifest: dict[str, Any], store: MemoryStore, reuse_index: bool
    ) -> None:
        try:
            arrays = load_file(str(path / "embeddings.safetensors"))
            ids, vectors = arrays["ids"], arrays["embeddings"]
        except Exception as exc:  # safetensors raises its own error types for bad files
            raise GalleryError(
                f"{path / 'embeddings.safetensors'}: unreadable embeddings ({exc!r})"
            ) from exc
        items = read_json(path / "items.json", GalleryError)
        items = check_items(path, items, ids, vectors, self.dim, validate_label)
        first_free = int(ids.max()) + 1 if len(ids) else 0
        next_id = manifest.get("next_id", first_free)
        if isinstance(next_id, bool) or not isinstance(next_id, int) or next_id < first_free:
            # A smaller next_id would hand out ids that are still in use.
            raise GalleryError(f"{path}/gallery.json: bad next_id (corrupted gallery)")
        saved_index = None
        if reuse_index and INDEX_FILE in manifest.get("sha256", {}):
            try:
                saved_index = index_from_bytes((path / INDEX_FILE).read_bytes())
            except (ValueError, RuntimeError) as exc:  # FAISS reports bad data as RuntimeError
                raise GalleryError(f"{path / INDEX_FILE}: unreadable index ({exc})") from exc
            if saved_index.dim != self.dim or not np.array_equal(
                np.sort(saved_index.ids()), np.sort(ids)
            ):
                raise GalleryError(f"{path}: saved index and items disagree (corrupted gallery)")
        store.restore(ids, vectors, items, next_id, index=saved_index)

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
