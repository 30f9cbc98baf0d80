"""An index that starts exact and switches to HNSW when the gallery grows."""

from __future__ import annotations

from typing import Self

import numpy as np

from openrecog.index._common import (
    check_dim,
    check_positive,
    construct,
    pack,
    peek_kind,
    unpack,
)
from openrecog.index.flat import FlatIndex
from openrecog.index.hnsw import HNSWIndex


class AutoIndex:
    """Exact :class:`FlatIndex` for small galleries, :class:`HNSWIndex` for large ones.

    Rule: the index is exact while it holds at most ``flat_max`` vectors; the first
    :meth:`add` that takes it above ``flat_max`` rebuilds it as an HNSW graph (a one-off cost
    of about one HNSW insertion per stored vector). It never switches back on removal (so a
    gallery hovering around the limit does not rebuild back and forth); :meth:`reset`
    returns it to exact search.

    This follows FAISS's "Guidelines to choose an index"
    (https://github.com/facebookresearch/faiss/wiki/Guidelines-to-choose-an-index):
    exact search when latency allows (practical up to ~1M vectors), HNSW when memory
    allows, IVF-PQ when memory is the limit. The default ``flat_max=100_000`` switches
    early, where an exact scan of 512-d vectors starts to cost milliseconds per query.
    IVF-PQ is never chosen automatically: it is lossy and needs training, so pick it
    explicitly (``"IVF1024,PQ32"``) when the vectors do not fit in memory.

    Args:
        dim: vector dimension.
        flat_max: the largest gallery kept on exact search.
        m: HNSW ``M`` after the switch.
        ef_construction: HNSW ``efConstruction`` after the switch.
        ef_search: HNSW ``efSearch`` after the switch.
        rebuild_fraction: HNSW tombstone share that triggers a graph rebuild.
    """

    kind = "auto"

    def __init__(
        self,
        dim: int,
        flat_max: int = 100_000,
        m: int = 32,
        ef_construction: int = 40,
        ef_search: int = 64,
        rebuild_fraction: float = 0.2,
    ) -> None:
        self.dim = check_dim(dim)
        self.flat_max = check_positive("flat_max", flat_max)
        self._hnsw_params = {
            "m": m,
            "ef_construction": ef_construction,
            "ef_search": ef_search,
            "rebuild_fraction": rebuild_fraction,
        }
        HNSWIndex(self.dim, **self._hnsw_params)  # validate the HNSW parameters up front
        self._inner: FlatIndex | HNSWIndex = FlatIndex(self.dim)

    @property
    def backend(self) -> FlatIndex | HNSWIndex:
        """The index currently doing the work."""
        return self._inner

    @property
    def backend_kind(self) -> str:
        """``"flat"`` or ``"hnsw"``."""
        return self._inner.kind

    def __len__(self) -> int:
        return len(self._inner)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._inner

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors under new ids, switching to HNSW once above ``flat_max``.

        Args:
            vectors: ``(N, dim)`` float32, L2-normalised.
            ids: ``N`` non-negative int64 ids not already in the index.

        Raises:
            ValueError: wrong shape, non-finite values, or duplicate/negative ids.
        """
        self._inner.add(vectors, ids)
        if isinstance(self._inner, FlatIndex) and len(self._inner) > self.flat_max:
            stored, stored_ids = self._inner.reconstruct_all()
            graph = HNSWIndex(self.dim, **self._hnsw_params)
            graph.add(stored, stored_ids)
            self._inner = graph

    def remove(self, ids: np.ndarray) -> int:
        """Remove vectors by id; unknown ids are ignored.

        Args:
            ids: int64 ids.

        Returns:
            How many vectors were removed.
        """
        return self._inner.remove(ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by inner product (exact or HNSW, see the class rule).

        Args:
            queries: ``(Q, dim)`` float32.
            k: neighbours per query (>= 1).

        Returns:
            ``(scores, ids)``, each ``(Q, k)``, best first; missing slots have id -1.

        Raises:
            ValueError: wrong query shape or ``k < 1``.
        """
        return self._inner.search(queries, k)

    def reset(self) -> None:
        """Remove everything and go back to exact search."""
        self._inner = FlatIndex(self.dim)

    def ids(self) -> np.ndarray:
        """Stored ids.

        Returns:
            Sorted int64 array.
        """
        return self._inner.ids()

    def to_bytes(self) -> bytes:
        """Serialise the rule parameters and the current backend.

        Returns:
            Bytes that :meth:`from_bytes` or ``openrecog.index.index_from_bytes`` load.
        """
        params = {"dim": self.dim, "flat_max": self.flat_max, **self._hnsw_params}
        inner = np.frombuffer(self._inner.to_bytes(), dtype=np.uint8)
        return pack(self.kind, params, {"backend": inner})

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Load an index written by :meth:`to_bytes`.

        Args:
            data: the serialised index.

        Returns:
            The index.

        Raises:
            ValueError: the data is not a serialised :class:`AutoIndex`.
        """
        _, params, arrays = unpack(data, cls.kind)
        index = construct(cls, params)
        inner = arrays["backend"].tobytes()
        backends: dict[str, type[FlatIndex] | type[HNSWIndex]] = {
            "flat": FlatIndex,
            "hnsw": HNSWIndex,
        }
        kind = peek_kind(inner)
        if kind not in backends:
            raise ValueError(f"an auto index cannot hold a {kind!r} backend")
        index._inner = backends[kind].from_bytes(inner)
        if index._inner.dim != index.dim:
            raise ValueError("corrupted auto index data: backend dimension differs")
        return index
