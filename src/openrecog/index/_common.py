"""Argument checks and the byte format shared by the FAISS-backed indexes."""

from __future__ import annotations

import json
import struct
from typing import Any, TypeVar

import numpy as np

# What FAISS itself writes into empty result slots of an inner-product search.
MISSING_SCORE = float(np.finfo(np.float32).min)

# Byte layout of ``to_bytes``: MAGIC, the JSON header length (uint64 little-endian), the JSON
# header, then the raw bytes of each array listed in the header, in order. Arrays (FAISS
# blobs, id tables, buffered vectors) stay binary; only the small wrapper state is JSON.
MAGIC = b"openrecog-index\n"
FORMAT_VERSION = 1
_LENGTH = struct.Struct("<Q")
T = TypeVar("T")


def check_dim(dim: int) -> int:
    """Validate an index dimension.

    Args:
        dim: the vector dimension.

    Returns:
        ``dim`` as an int.

    Raises:
        ValueError: ``dim`` is not a positive integer.
    """
    if isinstance(dim, bool) or not isinstance(dim, int | np.integer) or dim < 1:
        raise ValueError(f"index dimension must be a positive integer, got {dim!r}")
    return int(dim)


def check_positive(name: str, value: int) -> int:
    """Validate a positive integer parameter.

    Args:
        name: parameter name used in the error message.
        value: the value to check.

    Returns:
        ``value`` as an int.

    Raises:
        ValueError: ``value`` is not an integer >= 1.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def as_vectors(vectors: np.ndarray, dim: int, what: str = "vectors") -> np.ndarray:
    """Turn ``vectors`` into a C-contiguous float32 ``(N, dim)`` matrix.

    Args:
        vectors: one vector ``(dim,)`` or a matrix ``(N, dim)``.
        dim: the index dimension.
        what: name used in error messages (``"vectors"``, ``"queries"``).

    Returns:
        The float32 matrix.

    Raises:
        ValueError: wrong shape, or NaN/infinite values (which would corrupt a graph or
            a codebook silently).
    """
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.ndim == 1:
        matrix = matrix[None]
    if matrix.ndim != 2 or matrix.shape[1] != dim:
        raise ValueError(f"expected {what} of shape (N, {dim}), got {np.shape(vectors)}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{what} contain NaN or infinity")
    return matrix


def as_ids(ids: np.ndarray, count: int | None = None) -> np.ndarray:
    """Turn ``ids`` into a 1-D int64 array, optionally checking it matches ``count`` vectors.

    Args:
        ids: integer ids.
        count: number of vectors the ids label, or None for removal (any length).

    Returns:
        The int64 array.

    Raises:
        ValueError: not integers, wrong count, negative ids (-1 marks an empty result slot),
            or the same id twice in one call.
    """
    raw = np.asarray(ids)
    if raw.size and not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {raw.dtype}")
    out = np.ascontiguousarray(raw, dtype=np.int64).reshape(-1)
    if count is None:
        return out
    if len(out) != count:
        raise ValueError(f"{count} vectors but {len(out)} ids")
    if len(out) and out.min() < 0:
        raise ValueError("ids must be non-negative (-1 marks an empty result slot)")
    if len(np.unique(out)) != len(out):
        raise ValueError("duplicate ids within one add() call")
    return out


def check_new_ids(ids: np.ndarray, present: set[int] | dict[int, Any]) -> None:
    """Refuse ids that are already stored.

    Args:
        ids: ids about to be added.
        present: the ids currently stored.

    Raises:
        ValueError: some ids are already stored (FAISS would silently keep both copies).
    """
    clashes = [int(i) for i in ids.tolist() if i in present]
    if clashes:
        shown = ", ".join(map(str, clashes[:5])) + (", ..." if len(clashes) > 5 else "")
        raise ValueError(f"{len(clashes)} id(s) already in the index: {shown}; remove them first")


def check_k(k: int) -> int:
    """Validate the number of neighbours.

    Args:
        k: requested neighbours per query.

    Returns:
        ``k`` as an int.

    Raises:
        ValueError: ``k`` is not an integer >= 1.
    """
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def empty_result(n_queries: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and ids of a search that found nothing.

    Args:
        n_queries: number of queries.
        k: neighbours per query.

    Returns:
        ``(scores, ids)`` filled with :data:`MISSING_SCORE` and -1.
    """
    return (
        np.full((n_queries, k), MISSING_SCORE, dtype=np.float32),
        np.full((n_queries, k), -1, dtype=np.int64),
    )


def pack(kind: str, params: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """Serialise an index wrapper: a JSON header and binary arrays.

    Args:
        kind: the wrapper type (``"flat"``, ``"hnsw"``, ...), used to dispatch on load.
        params: JSON-serialisable wrapper state and parameters.
        arrays: named arrays (FAISS blobs as uint8, id tables, ...).

    Returns:
        The bytes.
    """
    contiguous = {name: np.ascontiguousarray(arr) for name, arr in arrays.items()}
    header = {
        "format_version": FORMAT_VERSION,
        "type": kind,
        "params": params,
        "arrays": [
            {"name": name, "dtype": arr.dtype.str, "shape": list(arr.shape)}
            for name, arr in contiguous.items()
        ],
    }
    head = json.dumps(header, sort_keys=True).encode()
    return b"".join(
        [MAGIC, _LENGTH.pack(len(head)), head, *(arr.tobytes() for arr in contiguous.values())]
    )


def _read_header(data: bytes) -> tuple[memoryview, dict[str, Any], int]:
    view = memoryview(data)
    start = len(MAGIC) + _LENGTH.size
    if len(view) < start or bytes(view[: len(MAGIC)]) != MAGIC:
        raise ValueError("not a serialised openrecog index (bad magic bytes)")
    (head_len,) = _LENGTH.unpack(view[len(MAGIC) : start])
    try:
        header = json.loads(bytes(view[start : start + head_len]))
        if not isinstance(header["type"], str) or not isinstance(header["params"], dict):
            raise TypeError("bad 'type' or 'params'")
        version = header["format_version"]
        header["arrays"] = list(header["arrays"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"corrupted openrecog index header: {exc}") from exc
    if version != FORMAT_VERSION:
        raise ValueError(f"unsupported openrecog index format version {version}")
    return view, header, start + head_len


def unpack(
    data: bytes, expected: str | None = None
) -> tuple[str, dict[str, Any], dict[str, np.ndarray]]:
    """Parse bytes written by :func:`pack`.

    Args:
        data: the serialised index.
        expected: the wrapper type the caller can load, or None for any.

    Returns:
        ``(kind, params, arrays)``.

    Raises:
        ValueError: not an openrecog index, truncated/corrupted, unsupported version, or a
            different wrapper type than ``expected``.
    """
    view, header, offset = _read_header(data)
    kind = header["type"]
    if expected is not None and kind != expected:
        raise ValueError(f"the data holds a {kind!r} index, not {expected!r}")
    arrays: dict[str, np.ndarray] = {}
    try:
        for spec in header["arrays"]:
            dtype = np.dtype(spec["dtype"])
            shape = tuple(int(n) for n in spec["shape"])
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
            if offset + nbytes > len(view):
                raise ValueError("truncated openrecog index data")
            chunk = view[offset : offset + nbytes]
            arrays[spec["name"]] = np.frombuffer(chunk, dtype=dtype).reshape(shape).copy()
            offset += nbytes
    except (KeyError, TypeError) as exc:
        raise ValueError(f"corrupted openrecog index header: {exc}") from exc
    if offset != len(view):
        raise ValueError("trailing bytes after the openrecog index data")
    return kind, header["params"], arrays


def construct(cls: type[T], params: dict[str, Any]) -> T:
    """Rebuild a wrapper from the parameters stored in its header.

    Args:
        cls: the index class.
        params: its constructor keyword arguments, from :func:`unpack`.

    Returns:
        The new (empty) index.

    Raises:
        ValueError: the parameters do not fit the class (corrupted or foreign data).
    """
    try:
        return cls(**params)
    except TypeError as exc:
        raise ValueError(f"corrupted {cls.__name__} data: {exc}") from exc


def peek_kind(data: bytes) -> str:
    """The wrapper type stored in serialised index bytes, without decoding the arrays.

    Args:
        data: bytes written by an index's ``to_bytes``.

    Returns:
        The wrapper type, e.g. ``"hnsw"``.

    Raises:
        ValueError: not an openrecog index or a corrupted header.
    """
    return _read_header(data)[1]["type"]
