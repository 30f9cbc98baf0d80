"""Where a gallery keeps its items: in this process (FAISS) or in PostgreSQL (pgvector).

:class:`~openrecog.gallery.Gallery` validates inputs, embeds images and saves manifests; an
item store holds the ``(id, label, source, vector)`` items and searches them. Both stores
have the same methods:

- :class:`MemoryStore`: dicts plus a FAISS index; the gallery folder holds the embeddings.
- :class:`PgVectorStore`: a PostgreSQL table, the source of truth for every process that
  opens it; ids are allocated by the database and nothing is cached locally.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import numpy as np

from openrecog.gallery.errors import GalleryError
from openrecog.index import VectorIndex
from openrecog.index.pgvector import (
    PgVectorError,
    PgVectorIndex,
    canonical_pgvector_spec,
    pgvector_index_from_spec,
)

# One search result row: (item id, inner-product score, label).
SearchRow = tuple[int, float, str]


class ItemStore(Protocol):
    """What a gallery needs from its storage."""

    index: VectorIndex
    spec: str  # the index spec, safe to save and show (no password)

    def __len__(self) -> int:
        """Number of items."""
        ...

    def is_empty(self) -> bool:
        """Whether there is no item."""
        ...

    def add(self, vectors: np.ndarray, labels: Sequence[str], sources: Sequence[str]) -> list[int]:
        """Store validated items under new, never reused ids; returns the ids."""
        ...

    def remove(self, ids: Sequence[int]) -> int:
        """Remove items by id; returns how many existed."""
        ...

    def remove_label(self, label: str) -> int:
        """Remove every item of ``label``; returns how many."""
        ...

    def classes(self) -> dict[str, int]:
        """``{label: count}`` sorted by label."""
        ...

    def items(self) -> list[dict[str, Any]]:
        """Every item as ``{"item_id", "label", "source"}`` by increasing id."""
        ...

    def item(self, item_id: int) -> dict[str, Any] | None:
        """One item as ``{"item_id", "label", "source"}``, None if there is no such id."""
        ...

    def search(self, queries: np.ndarray, k: int) -> list[list[SearchRow]]:
        """Top-``k`` ``(id, score, label)`` per query, best first."""
        ...

    def close(self) -> None:
        """Release resources (database connection)."""
        ...


class MemoryStore:
    """Items in dicts, vectors in a FAISS index: the default, saved as files.

    Args:
        index: an empty vector index (from :func:`openrecog.index.create_index`).
        spec: the spec it was built from.
    """

    def __init__(self, index: VectorIndex, spec: str) -> None:
        self.index = index
        self.spec = spec
        self.labels: dict[int, str] = {}
        self.sources: dict[int, str] = {}
        self.vectors: dict[int, np.ndarray] = {}
        self.next_id = 0

    def __len__(self) -> int:
        return len(self.labels)

    def is_empty(self) -> bool:
        """Whether there is no item."""
        return not self.labels

    def add(self, vectors: np.ndarray, labels: Sequence[str], sources: Sequence[str]) -> list[int]:
        """Store items under the next ids; returns the ids."""
        ids = np.arange(self.next_id, self.next_id + len(vectors), dtype=np.int64)
        self.index.add(vectors, ids)
        for j, item_id in enumerate(ids.tolist()):
            self.labels[item_id] = labels[j]
            self.sources[item_id] = sources[j]
            self.vectors[item_id] = vectors[j]
        self.next_id += len(vectors)
        return ids.tolist()

    def restore(
        self,
        ids: np.ndarray,
        vectors: np.ndarray,
        items: Sequence[dict[str, Any]],
        next_id: int,
        index: VectorIndex | None = None,
    ) -> None:
        """Refill from a saved gallery (ids kept as saved).

        ``index``, if given, is the saved index already holding exactly these ids (a trained
        IVF-PQ or a built HNSW graph): it replaces the empty one instead of a rebuild.
        """
        if index is not None:
            self.index = index
        elif len(ids):
            self.index.add(vectors, ids)
        for item, item_id, vector in zip(items, ids.tolist(), vectors, strict=False):
            self.labels[item_id] = item["label"]
            self.sources[item_id] = item.get("source", "")
            self.vectors[item_id] = vector
        self.next_id = next_id

    def export(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ids, vectors)`` by increasing id, for saving."""
        ids = np.array(sorted(self.labels), dtype=np.int64)
        vectors = (
            np.stack([self.vectors[i] for i in ids.tolist()])
            if len(ids)
            else np.zeros((0, self.index.dim), np.float32)
        )
        return ids, vectors

    def remove(self, ids: Sequence[int]) -> int:
        """Remove items by id; unknown ids are ignored. Returns how many existed."""
        known = [i for i in ids if i in self.labels]
        if known:
            self.index.remove(np.array(known, dtype=np.int64))
        for item_id in known:
            del self.labels[item_id], self.vectors[item_id]
            self.sources.pop(item_id, None)
        return len(known)

    def remove_label(self, label: str) -> int:
        """Remove every item of ``label``; returns how many."""
        return self.remove([i for i, lab in self.labels.items() if lab == label])

    def classes(self) -> dict[str, int]:
        """``{label: count}`` sorted by label."""
        return dict(sorted(Counter(self.labels.values()).items()))

    def items(self) -> list[dict[str, Any]]:
        """Every item as ``{"item_id", "label", "source"}`` by increasing id."""
        return [
            {"item_id": i, "label": self.labels[i], "source": self.sources.get(i, "")}
            for i in sorted(self.labels)
        ]

    def item(self, item_id: int) -> dict[str, Any] | None:
        """One item as ``{"item_id", "label", "source"}``, None if there is no such id."""
        if item_id not in self.labels:
            return None
        return {
            "item_id": item_id,
            "label": self.labels[item_id],
            "source": self.sources.get(item_id, ""),
        }

    def search(self, queries: np.ndarray, k: int) -> list[list[SearchRow]]:
        """Top-``k`` ``(id, score, label)`` per query, best first."""
        scores, ids = self.index.search(queries, min(k, len(self)))
        return [
            [
                (int(i), float(s), self.labels[int(i)])
                for s, i in zip(row_s, row_i, strict=False)
                if i >= 0
            ]
            for row_s, row_i in zip(scores, ids, strict=False)
        ]

    def close(self) -> None:
        """Nothing to release."""


@contextmanager
def _gallery_errors() -> Iterator[None]:
    try:
        yield
    except PgVectorError as exc:
        raise GalleryError(str(exc)) from exc


class PgVectorStore:
    """Items in a PostgreSQL table shared with every other gallery opened on it.

    Every read goes to the database, so registrations and removals made by other
    processes are visible at once; the database allocates ids.

    Args:
        index: the connected table.
        spec: the spec it was opened from (recorded without password).
    """

    def __init__(self, index: PgVectorIndex, spec: str) -> None:
        self.index = index
        self.spec = canonical_pgvector_spec(spec)

    @classmethod
    def open(cls, spec: str, dim: int) -> PgVectorStore:
        """Connect to the table a ``pgvector+postgresql://...`` spec names (creating it).

        Raises:
            GalleryError: bad spec, unreachable database, or a table that does not fit.
        """
        with _gallery_errors():
            return cls(pgvector_index_from_spec(spec, dim), spec)

    def __len__(self) -> int:
        with _gallery_errors():
            return len(self.index)

    def is_empty(self) -> bool:
        """Whether the table holds no item."""
        with _gallery_errors():
            return self.index.is_empty()

    def add(self, vectors: np.ndarray, labels: Sequence[str], sources: Sequence[str]) -> list[int]:
        """Insert items under ids allocated by the database; returns the ids."""
        with _gallery_errors():
            return self.index.add_items(vectors, labels, sources)

    def remove(self, ids: Sequence[int]) -> int:
        """Remove items by id; returns how many existed."""
        with _gallery_errors():
            return self.index.remove(np.asarray(ids, dtype=np.int64))

    def remove_label(self, label: str) -> int:
        """Remove every item of ``label``; returns how many."""
        with _gallery_errors():
            return self.index.remove_label(label)

    def classes(self) -> dict[str, int]:
        """``{label: count}`` sorted by label."""
        with _gallery_errors():
            return self.index.classes()

    def items(self) -> list[dict[str, Any]]:
        """Every item as ``{"item_id", "label", "source"}`` by increasing id."""
        with _gallery_errors():
            rows = self.index.items()
        return [{"item_id": i, "label": label, "source": source} for i, label, source in rows]

    def item(self, item_id: int) -> dict[str, Any] | None:
        """One item as ``{"item_id", "label", "source"}``, None if there is no such id."""
        with _gallery_errors():
            found = self.index.labels_for([item_id])
        if item_id not in found:
            return None
        label, source = found[item_id]
        return {"item_id": item_id, "label": label, "source": source}

    def search(self, queries: np.ndarray, k: int) -> list[list[SearchRow]]:
        """Top-``k`` ``(id, score, label)`` per query, best first (labels from the same query)."""
        with _gallery_errors():
            return self.index.search_items(queries, k)

    def close(self) -> None:
        """Close the database connection."""
        self.index.close()
