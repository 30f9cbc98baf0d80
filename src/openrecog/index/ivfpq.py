"""Compressed approximate search with FAISS ``IndexIVFPQ``, exact until it is trained."""

from __future__ import annotations

from typing import Self

import faiss
import numpy as np

from openrecog.index._common import (
    MISSING_SCORE,
    as_ids,
    as_vectors,
    check_dim,
    check_k,
    check_new_ids,
    check_positive,
    construct,
    pack,
    unpack,
)
from openrecog.index.flat import FlatIndex

# FAISS k-means warns below 39 training points per centroid ("please provide at least
# 39*k training points"); both the coarse quantiser (nlist centroids) and every PQ
# sub-quantiser (2**nbits centroids) are trained by k-means on the same vectors.
MIN_POINTS_PER_CENTROID = 39


def default_train_size(nlist: int, nbits: int) -> int:
    """Vectors to buffer before an :class:`IVFPQIndex` trains itself.

    Args:
        nlist: number of inverted lists (coarse centroids).
        nbits: bits per PQ sub-code (``2**nbits`` centroids per sub-quantiser).

    Returns:
        ``39 * max(nlist, 2**nbits)`` (39,936 for the defaults): the smallest set on which
        neither k-means gets FAISS's "please provide at least 39*k training points"
        warning, and inside the 30*k to 256*k range the FAISS guidelines recommend. Training
        on more is slower and FAISS subsamples to 256 points per centroid anyway.
    """
    return MIN_POINTS_PER_CENTROID * max(nlist, 2**nbits)


class IVFPQIndex:
    """Inverted file with product-quantised codes (FAISS ``IndexIVFPQ``).

    For galleries whose raw vectors do not fit in memory: each vector is stored as
    ``pq_m`` codes of ``nbits`` bits (plus an 8-byte id) instead of ``4 * dim`` bytes, and a
    query scans only the ``nprobe`` nearest of ``nlist`` lists. Scores are approximate.

    Metric: FAISS ``IndexIVFPQ`` accepts ``METRIC_INNER_PRODUCT``, but on unit vectors it
    measured worse than L2 (top-1 agreement with exact search 0.53 against 0.71 for
    ``IVF64,PQ32x6``, all lists probed, on the clustered 64-d data of
    ``tests/test_index_scale.py``), and only L2 gets FAISS's precomputed residual tables.
    For unit vectors ``|q - x|^2 = 2 - 2 <q, x>``, so the index runs on L2 (same ranking)
    and reports ``score = 1 - d / 2``: the cosine similarity up to the PQ error.

    Training: IVF-PQ needs k-means training before it can store anything. Until
    ``train_size`` vectors have been added, vectors sit in an exact flat buffer that
    searches exactly; the add that reaches ``train_size`` trains the coarse quantiser and
    the PQ codebooks on all buffered vectors and moves them into the IVF lists.
    :meth:`train` trains explicitly on other data (e.g. a sample of a previous gallery).
    :attr:`is_trained` says which phase the index is in.

    Removal uses FAISS ``remove_ids`` (a scan of the lists, so remove in batches).

    Args:
        dim: vector dimension (a multiple of ``pq_m``).
        nlist: number of inverted lists; FAISS suggests about ``4 * sqrt(N)`` to
            ``16 * sqrt(N)`` for N vectors.
        pq_m: PQ sub-quantisers (bytes per vector when ``nbits`` is 8).
        nbits: bits per sub-code.
        nprobe: lists scanned per query (settable later): recall against speed.
        train_size: buffered vectors that trigger training; default
            :func:`default_train_size`.
    """

    kind = "ivfpq"

    def __init__(
        self,
        dim: int,
        nlist: int = 1024,
        pq_m: int = 32,
        nbits: int = 8,
        nprobe: int = 16,
        train_size: int | None = None,
    ) -> None:
        self.dim = check_dim(dim)
        self.nlist = check_positive("nlist", nlist)
        self.pq_m = check_positive("pq_m", pq_m)
        self.nbits = check_positive("nbits", nbits)
        if self.dim % self.pq_m:
            raise ValueError(f"dim {self.dim} is not a multiple of pq_m {self.pq_m}")
        if self.nbits > 16:
            raise ValueError(f"nbits must be at most 16, got {nbits}")
        minimum = max(self.nlist, 2**self.nbits)
        if train_size is None:
            train_size = default_train_size(self.nlist, self.nbits)
        self.train_size = check_positive("train_size", train_size)
        if self.train_size < minimum:
            raise ValueError(
                f"train_size {train_size} is below max(nlist, 2**nbits) = {minimum}: "
                "k-means needs at least one vector per centroid"
            )
        self._index = faiss.IndexIVFPQ(
            faiss.IndexFlatL2(self.dim), self.dim, self.nlist, self.pq_m, self.nbits
        )
        self.nprobe = nprobe
        self._buffer: FlatIndex | None = FlatIndex(self.dim)
        self._ids: set[int] = set()

    @property
    def nprobe(self) -> int:
        """Inverted lists scanned per query."""
        return int(self._index.nprobe)

    @nprobe.setter
    def nprobe(self, value: int) -> None:
        self._index.nprobe = check_positive("nprobe", value)

    @property
    def is_trained(self) -> bool:
        """Whether the quantisers are trained (False: vectors are in the exact buffer)."""
        return self._buffer is None

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._ids

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors under new ids (trains the index when the buffer reaches ``train_size``).

        Args:
            vectors: ``(N, dim)`` float32, L2-normalised.
            ids: ``N`` non-negative int64 ids not already in the index.

        Raises:
            ValueError: wrong shape, non-finite values, or duplicate/negative ids.
        """
        vectors = as_vectors(vectors, self.dim)
        ids = as_ids(ids, len(vectors))
        check_new_ids(ids, self._ids)
        if not len(ids):
            return
        if self._buffer is None:
            self._index.add_with_ids(vectors, ids)
        else:
            self._buffer.add(vectors, ids)
        self._ids.update(ids.tolist())
        if self._buffer is not None and len(self._buffer) >= self.train_size:
            self._train_and_move(None)

    def train(self, vectors: np.ndarray) -> None:
        """Train the coarse quantiser and PQ codebooks now, then move buffered vectors in.

        Args:
            vectors: ``(N, dim)`` training vectors like the gallery's; ``N`` at least
                ``max(nlist, 2**nbits)`` (``train_size`` recommended).

        Raises:
            ValueError: already trained, wrong shape or too few vectors.
        """
        if self.is_trained:
            raise ValueError("the index is already trained (reset() keeps the training)")
        vectors = as_vectors(vectors, self.dim)
        minimum = max(self.nlist, 2**self.nbits)
        if len(vectors) < minimum:
            raise ValueError(
                f"training needs at least max(nlist, 2**nbits) = {minimum} vectors, "
                f"got {len(vectors)}"
            )
        self._train_and_move(vectors)

    def _train_and_move(self, training: np.ndarray | None) -> None:
        # training=None: train on the buffered gallery vectors themselves.
        if self._buffer is None:
            raise ValueError("the index is already trained")
        buffered, ids = self._buffer.reconstruct_all()
        if training is None:
            # k-means cost grows with the points: a seeded sample of train_size is what FAISS
            # needs (it would otherwise use up to 256 points per list, 1M for 4096 lists).
            training = buffered
            if len(buffered) > self.train_size:
                rng = np.random.default_rng(0)
                training = buffered[np.sort(rng.choice(len(buffered), self.train_size, False))]
        self._index.train(training)
        if len(ids):
            self._index.add_with_ids(buffered, ids)
        self._buffer = None

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
        if self._buffer is not None:
            removed = self._buffer.remove(np.array(known, np.int64))
        else:
            selector = faiss.IDSelectorBatch(np.array(known, np.int64))
            removed = int(self._index.remove_ids(selector))
        self._ids.difference_update(known)
        return removed

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` by (approximate) cosine similarity; exact while untrained.

        Args:
            queries: ``(Q, dim)`` float32, L2-normalised.
            k: neighbours per query (>= 1).

        Returns:
            ``(scores, ids)``, each ``(Q, k)``, best first; missing slots have id -1.

        Raises:
            ValueError: wrong query shape or ``k < 1``.
        """
        queries = as_vectors(queries, self.dim, "queries")
        k = check_k(k)
        if self._buffer is not None:
            return self._buffer.search(queries, k)
        distances, ids = self._index.search(queries, k)
        scores = np.where(ids >= 0, 1.0 - distances / 2.0, MISSING_SCORE).astype(np.float32)
        return scores, ids

    def reset(self) -> None:
        """Remove every vector; a trained index stays trained (FAISS ``reset`` semantics)."""
        if self._buffer is not None:
            self._buffer.reset()
        else:
            self._index.reset()
        self._ids.clear()

    def ids(self) -> np.ndarray:
        """Stored ids.

        Returns:
            Sorted int64 array.
        """
        return np.sort(np.fromiter(self._ids, dtype=np.int64, count=len(self._ids)))

    def _params(self) -> dict[str, int]:
        return {
            "dim": self.dim,
            "nlist": self.nlist,
            "pq_m": self.pq_m,
            "nbits": self.nbits,
            "nprobe": self.nprobe,
            "train_size": self.train_size,
        }

    def to_bytes(self) -> bytes:
        """Serialise the index: trained quantisers and codes, or the untrained buffer.

        Returns:
            Bytes that :meth:`from_bytes` or ``openrecog.index.index_from_bytes`` load.
        """
        if self._buffer is not None:
            blob = np.frombuffer(self._buffer.to_bytes(), dtype=np.uint8)
            return pack(self.kind, self._params(), {"buffer": blob})
        return pack(self.kind, self._params(), {"faiss": faiss.serialize_index(self._index)})

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        """Load an index written by :meth:`to_bytes` (no re-training).

        Args:
            data: the serialised index.

        Returns:
            The index.

        Raises:
            ValueError: the data is not a serialised :class:`IVFPQIndex`.
        """
        _, params, arrays = unpack(data, cls.kind)
        index = construct(cls, params)
        if "buffer" in arrays:
            index._buffer = FlatIndex.from_bytes(arrays["buffer"].tobytes())
            index._ids = set(index._buffer.ids().tolist())
            return index
        ivf = faiss.deserialize_index(arrays["faiss"])
        if ivf.d != index.dim or not ivf.is_trained:
            raise ValueError("corrupted IVF-PQ index data")
        ivf.nprobe = index.nprobe
        index._index, index._buffer = ivf, None
        index._ids = set(_stored_ids(ivf).tolist())
        return index


def _stored_ids(ivf: faiss.IndexIVF) -> np.ndarray:
    # IVF keeps ids only inside its inverted lists; reading them back on load saves
    # storing a second copy (8 bytes per vector) in the serialised data.
    invlists = ivf.invlists
    parts = [np.empty(0, np.int64)]
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size:
            pointer = invlists.get_ids(list_no)
            parts.append(faiss.rev_swig_ptr(pointer, size).copy())
            invlists.release_ids(list_no, pointer)
    return np.concatenate(parts)
