"""Index specs (FAISS-factory-like strings) and loading serialised indexes.

Grammar (case-insensitive, comma-separated, spaces ignored)::

    Flat                                      exact search (also FlatIP, exact)
    HNSW<M>[,ef=<n>][,efc=<n>]                HNSW graph; ef = efSearch, efc = efConstruction
    IVF<nlist>,PQ<m>[x<nbits>][,nprobe=<n>][,train=<n>]
                                              IVF-PQ; train = vectors buffered before training
    auto[,flat_max=<n>][,m=<M>][,ef=<n>][,efc=<n>]
                                              exact, HNSW above flat_max vectors

Backends that are not FAISS grammar (a database URL, say) are dispatched on a prefix of the
spec through :data:`PREFIX_BACKENDS`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openrecog.index._common import peek_kind
from openrecog.index.auto import AutoIndex
from openrecog.index.base import VectorIndex
from openrecog.index.flat import FlatIndex
from openrecog.index.hnsw import HNSWIndex
from openrecog.index.ivfpq import IVFPQIndex
from openrecog.index.pgvector import pgvector_index_from_spec

# Prefix (lower case) -> builder(spec, dim). A backend with its own spec syntax is one entry
# here, e.g. "pgvector+": build_pgvector_index; the builder receives the spec unchanged.
PREFIX_BACKENDS: dict[str, Callable[[str, int], VectorIndex]] = {
    "pgvector+": pgvector_index_from_spec,
}

ACCEPTED_FORMS = (
    "Flat",
    "HNSW<M>[,ef=<ef_search>][,efc=<ef_construction>]",
    "IVF<nlist>,PQ<m>[x<nbits>][,nprobe=<n>][,train=<train_size>]",
    "auto[,flat_max=<n>][,m=<M>][,ef=<ef_search>][,efc=<ef_construction>]",
)

# Spec option name -> constructor argument, per index kind.
_OPTIONS: dict[str, dict[str, str]] = {
    "flat": {},
    "hnsw": {"ef": "ef_search", "efc": "ef_construction"},
    "ivfpq": {"nprobe": "nprobe", "train": "train_size"},
    "auto": {"flat_max": "flat_max", "m": "m", "ef": "ef_search", "efc": "ef_construction"},
}
_BUILDERS: dict[str, Callable[..., Any]] = {
    "flat": FlatIndex,
    "hnsw": HNSWIndex,
    "ivfpq": IVFPQIndex,
    "auto": AutoIndex,
}
_INT = r"([0-9][0-9_]*)"


@dataclass(frozen=True)
class IndexSpec:
    """A parsed index spec.

    Attributes:
        kind: ``"flat"``, ``"hnsw"``, ``"ivfpq"`` or ``"auto"``.
        params: constructor keyword arguments of the index class (besides ``dim``).
    """

    kind: str
    params: dict[str, int] = field(default_factory=dict)

    def build(self, dim: int) -> VectorIndex:
        """Create the empty index.

        Args:
            dim: vector dimension.

        Returns:
            The index.

        Raises:
            ValueError: a parameter is invalid for this dimension (e.g. PQ ``m`` not
                dividing ``dim``).
        """
        return _BUILDERS[self.kind](dim, **self.params)


def _spec_error(spec: str, reason: str) -> ValueError:
    forms = [*ACCEPTED_FORMS, *(f"{prefix}..." for prefix in PREFIX_BACKENDS)]
    return ValueError(
        f"invalid index spec {spec!r}: {reason}; accepted forms (case-insensitive): "
        + ", ".join(forms)
    )


def _positive(spec: str, name: str, text: str) -> int:
    if not re.fullmatch(_INT, text) or int(text) < 1:
        raise _spec_error(spec, f"{name} must be a positive integer, got {text!r}")
    return int(text)


def parse_index_spec(spec: str) -> IndexSpec:
    """Parse a FAISS-factory-like spec (see the module docstring for the grammar).

    Args:
        spec: e.g. ``"Flat"``, ``"HNSW32,ef=128"``, ``"IVF1024,PQ32x8,nprobe=32"``,
            ``"auto,flat_max=50000"``.

    Returns:
        The parsed spec.

    Raises:
        ValueError: unknown or malformed spec; the message lists the accepted forms.
    """
    if not isinstance(spec, str):
        raise _spec_error(repr(spec), "the spec must be a string")
    tokens = [token.strip() for token in spec.lower().split(",")]
    if not tokens[0]:
        raise _spec_error(spec, "empty spec")
    head, rest = tokens[0], tokens[1:]
    params: dict[str, int] = {}
    if head in {"flat", "flatip", "exact"}:
        kind = "flat"
    elif match := re.fullmatch("hnsw" + _INT, head):
        kind, params["m"] = "hnsw", _positive(spec, "HNSW M", match[1])
    elif match := re.fullmatch("ivf" + _INT, head):
        kind, params["nlist"] = "ivfpq", _positive(spec, "IVF nlist", match[1])
        pq = re.fullmatch("pq" + _INT + "(?:x" + _INT + ")?", rest[0]) if rest else None
        if pq is None:
            raise _spec_error(spec, "IVF must be followed by PQ<m> or PQ<m>x<nbits>")
        params["pq_m"] = _positive(spec, "PQ m", pq[1])
        if pq[2] is not None:
            params["nbits"] = _positive(spec, "PQ nbits", pq[2])
        rest = rest[1:]
    elif head == "auto":
        kind = "auto"
    else:
        raise _spec_error(spec, f"unknown index type {tokens[0]!r}")
    allowed = _OPTIONS[kind]
    for token in rest:
        name, sep, value = (part.strip() for part in token.partition("="))
        if not sep or name not in allowed:
            known = ", ".join(f"{option}=" for option in allowed) or "none"
            raise _spec_error(spec, f"unexpected {token!r} (options for {kind}: {known})")
        if allowed[name] in params:
            raise _spec_error(spec, f"option {name!r} given twice")
        params[allowed[name]] = _positive(spec, name, value)
    return IndexSpec(kind, params)


def create_index(spec: str, dim: int) -> VectorIndex:
    """Build an empty index from a spec string.

    Args:
        spec: an index spec (grammar in the module docstring), or a spec starting with a
            prefix registered in :data:`PREFIX_BACKENDS`.
        dim: vector dimension.

    Returns:
        The index.

    Raises:
        ValueError: unknown or malformed spec, or parameters invalid for ``dim``.
    """
    if isinstance(spec, str):
        for prefix, builder in PREFIX_BACKENDS.items():
            if spec.strip().lower().startswith(prefix):
                return builder(spec.strip(), dim)
    return parse_index_spec(spec).build(dim)


def index_from_bytes(data: bytes) -> VectorIndex:
    """Load any index written by an openrecog index's ``to_bytes``.

    Args:
        data: the serialised index.

    Returns:
        The index, of the class that wrote it.

    Raises:
        ValueError: not a serialised openrecog index, or an unknown index type.
    """
    kind = peek_kind(data)
    if kind not in _BUILDERS:
        raise ValueError(f"unknown serialised index type {kind!r}")
    return _BUILDERS[kind].from_bytes(data)
