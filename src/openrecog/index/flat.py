"""Exact inner-product search with FAISS ``IndexFlatIP`` behind an id map."""

from __future__ import annotations

import faiss
import numpy as np


def _as_matrix(vectors: np.ndarray, dim: int) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None]
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (N, {dim}), got {vectors.shape}")
    return vectors


class FlatIndex:
    """Exact search (``IndexIDMap2(IndexFlatIP)``): right for galleries up to ~1M items.

    ``IndexIDMap2`` keeps an id → position table, so removal by id is supported.
    """

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"index dimension must be positive, got {dim}")
        self.dim = dim
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors under ``ids`` (int64)."""
        vectors = _as_matrix(vectors, self.dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(vectors):
            raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
        if len(ids):
            self._index.add_with_ids(vectors, ids)

    def remove(self, ids: np.ndarray) -> int:
        """Remove by id; unknown ids are ignored."""
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if not len(ids):
            return 0
        return int(self._index.remove_ids(faiss.IDSelectorArray(ids)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by inner product (= cosine for normalised vectors)."""
        queries = _as_matrix(queries, self.dim)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        scores, ids = self._index.search(queries, k)
        return scores, ids

    def reset(self) -> None:
        """Remove everything."""
        self._index.reset()


def create_index(spec: str, dim: int) -> FlatIndex:
    """Build an index from a FAISS-style spec string (``"Flat"``)."""
    if spec.lower() in {"flat", "flatip", "exact"}:
        return FlatIndex(dim)
    raise ValueError(f"unknown index spec {spec!r}; available: Flat")
