"""Exact inner-product search with FAISS ``IndexFlatIP`` behind an id map."""

from __future__ import annotations

from typing import Self

import faiss
import numpy as np

from openrecog.index._common import (
    as_ids,
    as_vectors,
    check_dim,
    check_k,
    check_new_ids,
    construct,
    pack,
    unpack,
)


class FlatIndex:
    """Exact search (``IndexIDMap2(IndexFlatIP)``): right for galleries up to ~1M items.

    ``IndexIDMap2`` keeps an id → position table, so removal by id is supported. Scores are
    inner products (cosine similarity for L2-normalised vectors); empty result slots have id
    -1 and the score FAISS gives them (the lowest float32).

    Args:
        dim: vector dimension.
    """

    kind = "flat"

    def __init__(self, dim: int) -> None:
        self.dim = check_dim(dim)
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        # IndexIDMap2's reverse map is not reachable from Python, and scanning id_map on
        # every add is O(N): a set makes the duplicate-id check O(batch).
        self._ids: set[int] = set()

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ids

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors under new ids.

        Args:
            vectors: ``(N, dim)`` float32, L2-normalised.
            ids: ``N`` non-negative int64 ids not already in the index.

        Raises:
            ValueError: wrong shape, non-finite values, or duplicate/negative ids.
        """
        vectors = as_vectors(vectors, self.dim)
        ids = as_ids(ids, len(vectors))
        check_new_ids(ids, self._ids)
        if len(ids):
            self._index.add_with_ids(vectors, ids)
            self._ids.update(ids.tolist())

    def remove(self, ids: np.ndarray) -> int:
        """Remove vectors by id; unknown ids are ignored.

        Args:
            ids: int64 ids.

        Returns:
            How many vectors were removed.
        """
        known = [i for i in set(as_ids(ids).tolist()) if i in self._ids]
        if not known:
            return 0
        # IDSelectorBatch answers is_member in O(1); IDSelectorArray would make the
        # removal scan O(ntotal * len(ids)).
        removed = int(self._index.remove_ids(faiss.IDSelectorBatch(np.array(known, np.int64))))
        self._ids.difference_update(known)
        return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` by inner product.

        Args:
            queries: ``(Q, dim)`` float32.
            k: neighbours per query (>= 1).

        Returns:
            ``(scores, ids)``, each ``(Q, k)``, best first; missing slots have id -1.

        Raises:
            ValueError: wrong query shape or ``k < 1``.
        """
        queries = as_vectors(queries, self.dim, "queries")
        k = check_k(k)
        scores, ids = self._index.search(queries, k)
        return scores, ids

    def reset(self) -> None:
        """Remove everything."""
        self._index.reset()
        self._ids.clear()

    def ids(self) -> np.ndarray:
        """Stored ids.

        Returns:
            Sorted int64 array.
        """
        return np.sort(np.fromiter(self._ids, dtype=np.int64, count=len(self._ids)))

    def reconstruct_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored vector with its id (exact copies).

        Returns:
            ``(vectors (N, dim) float32, ids (N,) int64)`` in storage order.
        """
        n = len(self)
        if not n:
            return np.empty((0, self.dim), np.float32), np.empty(0, np.int64)
        inner = faiss.downcast_index(self._index.index)
        return inner.reconstruct_n(0, n), faiss.vector_to_array(self._index.id_map).copy()

    def to_bytes(self) -> bytes:
        """Serialise the index (FAISS blob plus a small header).

        Returns:
            Bytes that :meth:`from_bytes` or ``openrecog.index.index_from_bytes`` load.
        """
        return pack(self.kind, {"dim": self.dim}, {"faiss": faiss.serialize_index(self._index)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Load an index written by :meth:`to_bytes`.

        Args:
            data: the serialised index.

        Returns:
            The index.

        Raises:
            ValueError: the data is not a serialised :class:`FlatIndex`.
        """
        _, params, arrays = unpack(data, cls.kind)
        index = construct(cls, params)
        index._index = faiss.deserialize_index(arrays["faiss"])
        index._ids = set(faiss.vector_to_array(index._index.id_map).tolist())
        return index
