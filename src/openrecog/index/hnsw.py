"""Approximate inner-product search with a FAISS HNSW graph, with removal by tombstones."""

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
    check_positive,
    construct,
    empty_result,
    pack,
    unpack,
)


class HNSWIndex:
    """HNSW graph search (FAISS ``IndexHNSWFlat``, inner-product metric).

    For galleries too large for exact search at the wanted latency whose raw vectors still
    fit in memory (about ``4 * dim + 8 * m`` bytes per vector). Scores are exact inner
    products of the vectors the graph finds; which vectors are found is approximate
    (recall grows with ``ef_search``).

    Removal (the documented rebuild path): FAISS HNSW graphs cannot delete nodes, so
    :meth:`remove` only marks the vectors as tombstones; searches skip them through a FAISS
    ``IDSelectorBitmap`` over live graph nodes, so a query still gets ``k`` live results
    whenever ``k`` live vectors exist. Dead nodes still cost memory and traversal time, so
    once tombstones exceed ``rebuild_fraction`` of the stored nodes, the live vectors are
    reconstructed and a fresh graph is built (:meth:`rebuild`, also public; it takes about
    as long as adding all live vectors again). A removed id can be added again at once.

    Args:
        dim: vector dimension.
        m: graph neighbours per node (FAISS ``M``): more means better recall, more memory.
        ef_construction: candidate list size while building: better graph, slower adds.
        ef_search: candidate list size while searching (raised to ``k`` when smaller);
            the attribute can be changed between searches to trade speed for recall.
        rebuild_fraction: tombstone share of stored nodes above which :meth:`remove`
            rebuilds the graph, in ``(0, 1]``; 1 never rebuilds automatically.
    """

    kind = "hnsw"

    def __init__(
        self,
        dim: int,
        m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 64,
        rebuild_fraction: float = 0.2,
    ) -> None:
        self.dim = check_dim(dim)
        self.m = check_positive("m", m)
        self.ef_construction = check_positive("ef_construction", ef_construction)
        self.ef_search = check_positive("ef_search", ef_search)
        if not 0.0 < float(rebuild_fraction) <= 1.0:
            raise ValueError(f"rebuild_fraction must be in (0, 1], got {rebuild_fraction!r}")
        self.rebuild_fraction = float(rebuild_fraction)
        self._index = self._new_graph()
        # Own id bookkeeping instead of IndexIDMap: tombstones must mark stored nodes, not
        # ids, so that a removed id can be re-added while its dead node is still in the
        # graph (IndexIDMap's selectors see only ids and could not tell the two apart).
        self._node_ids = np.empty(0, dtype=np.int64)  # graph node -> id (capacity-doubled)
        self._alive = np.empty(0, dtype=bool)  # graph node -> not a tombstone
        self._node_of: dict[int, int] = {}  # live id -> graph node
        self._selector: tuple[np.ndarray, faiss.IDSelectorBitmap] | None = None

    def _new_graph(self) -> faiss.IndexHNSWFlat:
        graph = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = self.ef_construction
        graph.hnsw.efSearch = self.ef_search
        return graph

    def __len__(self) -> int:
        return len(self._node_of)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._node_of

    @property
    def num_tombstones(self) -> int:
        """Removed vectors still stored in the graph (until the next rebuild)."""
        return int(self._index.ntotal) - len(self._node_of)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Insert vectors into the graph under new ids.

        Args:
            vectors: ``(N, dim)`` float32, L2-normalised.
            ids: ``N`` non-negative int64 ids not already live in the index (removed ids
                may be added again).

        Raises:
            ValueError: wrong shape, non-finite values, or duplicate/negative ids.
        """
        vectors = as_vectors(vectors, self.dim)
        ids = as_ids(ids, len(vectors))
        check_new_ids(ids, self._node_of)
        if not len(ids):
            return
        start = int(self._index.ntotal)
        self._index.add(vectors)
        self._reserve(start + len(ids))
        self._node_ids[start : start + len(ids)] = ids
        self._alive[start : start + len(ids)] = True
        self._node_of.update(zip(ids.tolist(), range(start, start + len(ids)), strict=True))
        self._selector = None

    def _reserve(self, size: int) -> None:
        # Doubling keeps single-vector adds O(1) amortised instead of copying the tables.
        if size <= len(self._node_ids):
            return
        capacity = max(size, 2 * len(self._node_ids), 1024)
        node_ids = np.full(capacity, -1, dtype=np.int64)
        node_ids[: len(self._node_ids)] = self._node_ids
        alive = np.zeros(capacity, dtype=bool)
        alive[: len(self._alive)] = self._alive
        self._node_ids, self._alive = node_ids, alive

    def remove(self, ids: np.ndarray) -> int:
        """Mark vectors as removed; rebuilds the graph when tombstones pile up.

        Args:
            ids: int64 ids; unknown ids are ignored.

        Returns:
            How many live vectors were removed.
        """
        nodes = [self._node_of.pop(i) for i in set(as_ids(ids).tolist()) if i in self._node_of]
        if not nodes:
            return 0
        self._alive[nodes] = False
        self._selector = None
        if self.num_tombstones > self.rebuild_fraction * int(self._index.ntotal):
            self.rebuild()
        return len(nodes)

    def rebuild(self) -> None:
        """Rebuild the graph from the live vectors, dropping all tombstones."""
        ntotal = int(self._index.ntotal)
        alive = self._alive[:ntotal]
        ids = self._node_ids[:ntotal][alive]
        vectors = self._index.reconstruct_n(0, ntotal)[alive] if len(ids) else None
        self.reset()
        if vectors is not None:
            self.add(vectors, ids)

    def _live_selector(self) -> faiss.IDSelectorBitmap:
        if self._selector is None:
            ntotal = int(self._index.ntotal)
            # faiss.IDSelectorBitmap reads bit (node & 7) of byte (node >> 3): little order.
            bits = np.packbits(self._alive[:ntotal], bitorder="little")
            # The bitmap array must outlive the selector, which only holds a pointer to it.
            self._selector = (bits, faiss.IDSelectorBitmap(bits))
        return self._selector[1]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Approximate top-``k`` by inner product among live vectors.

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
        live = len(self._node_of)
        if not live:
            return empty_result(len(queries), k)
        selector = self._live_selector() if self.num_tombstones else None
        params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, k), sel=selector)
        scores, nodes = self._index.search(queries, k, params=params)
        # The greedy graph walk can stop with fewer than k results when k is close to the
        # number of live vectors (or many neighbours are tombstones). Those rare rows fall
        # back to an exact scan of the stored vectors, so a short list means nothing more
        # exists.
        short = np.flatnonzero((nodes >= 0).sum(axis=1) < min(k, live))
        if len(short):
            storage = faiss.downcast_index(self._index.storage)
            exact = faiss.SearchParameters(sel=selector) if selector is not None else None
            scores[short], nodes[short] = storage.search(queries[short], k, params=exact)
        ids = np.where(nodes >= 0, self._node_ids[np.maximum(nodes, 0)], -1)
        return scores, ids

    def reset(self) -> None:
        """Remove everything (parameters are kept)."""
        self._index = self._new_graph()
        self._node_ids = np.empty(0, dtype=np.int64)
        self._alive = np.empty(0, dtype=bool)
        self._node_of = {}
        self._selector = None

    def ids(self) -> np.ndarray:
        """Live ids.

        Returns:
            Sorted int64 array.
        """
        return np.sort(np.fromiter(self._node_of, dtype=np.int64, count=len(self._node_of)))

    def reconstruct_all(self) -> tuple[np.ndarray, np.ndarray]:
        """Every live vector with its id (exact copies: the graph stores raw vectors).

        Returns:
            ``(vectors (N, dim) float32, ids (N,) int64)`` in graph order.
        """
        ntotal = int(self._index.ntotal)
        if not len(self._node_of):
            return np.empty((0, self.dim), np.float32), np.empty(0, np.int64)
        alive = self._alive[:ntotal]
        return self._index.reconstruct_n(0, ntotal)[alive], self._node_ids[:ntotal][alive]

    def _params(self) -> dict[str, int | float]:
        return {
            "dim": self.dim,
            "m": self.m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "rebuild_fraction": self.rebuild_fraction,
        }

    def to_bytes(self) -> bytes:
        """Serialise the graph, id table and tombstones.

        Returns:
            Bytes that :meth:`from_bytes` or ``openrecog.index.index_from_bytes`` load.
        """
        ntotal = int(self._index.ntotal)
        return pack(
            self.kind,
            self._params(),
            {
                "faiss": faiss.serialize_index(self._index),
                "node_ids": self._node_ids[:ntotal],
                "alive": self._alive[:ntotal],
            },
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Load an index written by :meth:`to_bytes` (no graph rebuild).

        Args:
            data: the serialised index.

        Returns:
            The index.

        Raises:
            ValueError: the data is not a serialised :class:`HNSWIndex` or is inconsistent.
        """
        _, params, arrays = unpack(data, cls.kind)
        index = construct(cls, params)
        graph = faiss.deserialize_index(arrays["faiss"])
        node_ids, alive = arrays["node_ids"], arrays["alive"].astype(bool)
        if graph.d != index.dim or not len(node_ids) == len(alive) == graph.ntotal:
            raise ValueError("corrupted HNSW index data: graph and id table disagree")
        graph.hnsw.efSearch = index.ef_search
        index._index = graph
        index._node_ids, index._alive = node_ids, alive
        live = np.flatnonzero(alive)
        index._node_of = dict(zip(node_ids[live].tolist(), live.tolist(), strict=True))
        return index
