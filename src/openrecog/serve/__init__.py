"""An HTTP service over a gallery: ``openrecog serve GALLERY``.

A FastAPI app (:func:`create_app`) classifies and searches uploaded images, manages the
gallery (register, remove, list) behind an API key, exposes Prometheus metrics at
``/metrics``, OpenAPI docs at ``/docs`` and a small web page at ``/``.

Design notes:

- One process serves one gallery held in memory (run a single uvicorn worker); several
  servers can share one gallery kept in PostgreSQL (``--index pgvector+postgresql://...``).
- Embedding runs in the threadpool outside any lock; gallery reads and writes (and the
  atomic save after each write) are serialised by one lock.
- A write that exceeds ``request_timeout_s`` answers 503 and changes nothing; once a write
  has begun to change the gallery it is allowed to finish and answers normally.
- Thumbnails: images registered through the service are kept as small JPEGs in memory
  (lost on restart); items registered from files are shown from their source file when
  it is still readable; otherwise ``/items/{id}/thumbnail`` returns an SVG placeholder.
"""

from openrecog.serve.app import create_app
from openrecog.serve.settings import ServeSettings, is_loopback_host

__all__ = ["ServeSettings", "create_app", "is_loopback_host"]
