"""Vector indexes behind one protocol."""

from openrecog.index.auto import AutoIndex
from openrecog.index.base import SerializableIndex, VectorIndex
from openrecog.index.factory import (
    PREFIX_BACKENDS,
    IndexSpec,
    create_index,
    index_from_bytes,
    parse_index_spec,
)
from openrecog.index.flat import FlatIndex
from openrecog.index.hnsw import HNSWIndex
from openrecog.index.ivfpq import IVFPQIndex

__all__ = [
    "PREFIX_BACKENDS",
    "AutoIndex",
    "FlatIndex",
    "HNSWIndex",
    "IVFPQIndex",
    "IndexSpec",
    "SerializableIndex",
    "VectorIndex",
    "create_index",
    "index_from_bytes",
    "parse_index_spec",
]
