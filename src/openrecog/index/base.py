"""The index protocol every vector index of openrecog implements (FAISS-like surface)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class VectorIndex(Protocol):
    """Inner-product search over L2-normalised vectors with int64 ids."""

    dim: int

    def __len__(self) -> int:
        """Number of stored vectors."""
        ...

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add ``(N, dim)`` float32 vectors under the given int64 ids."""
        ...

    def remove(self, ids: np.ndarray) -> int:
        """Remove vectors by id; returns how many were removed."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)``, each ``(Q, k)``; missing slots have id -1."""
        ...

    def reset(self) -> None:
        """Remove everything."""
        ...


@runtime_checkable
class SerializableIndex(VectorIndex, Protocol):
    """An index that can be stored as bytes (trained state included) and loaded back.

    ``openrecog.index.index_from_bytes`` loads what :meth:`to_bytes` wrote.
    """

    def to_bytes(self) -> bytes:
        """Serialise the index, trained state included."""
        ...
