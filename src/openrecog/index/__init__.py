"""Vector indexes behind one protocol."""

from openrecog.index.base import VectorIndex
from openrecog.index.flat import FlatIndex, create_index

__all__ = ["FlatIndex", "VectorIndex", "create_index"]
