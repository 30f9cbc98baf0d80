"""Small JPEG thumbnails of gallery items, for the web page.

A gallery stores embeddings, not images. The service therefore keeps thumbnails of the
images it registers itself, in memory (an LRU, lost on restart), and makes thumbnails of
items registered from files (``openrecog register``) on demand from their ``source`` path
when that is still a readable image file. Any other item gets a neutral placeholder.
Uploaded items are recorded with a source ``upload:<file name>``, which is never read
from disk.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Iterable

from PIL import Image

from openrecog.data.images import ImageLoadError, is_image_file, load_image

UPLOAD_PREFIX = "upload:"
THUMBNAIL_SIZE = 128
PLACEHOLDER_SVG = (
    b'<svg xmlns="http://www.w3.org/2000/svg" width="128" height="128" viewBox="0 0 128 128">'
    b'<rect width="128" height="128" fill="#e5e7eb"/>'
    b'<text x="64" y="72" font-family="sans-serif" font-size="14" fill="#6b7280" '
    b'text-anchor="middle">no image</text></svg>'
)


def make_thumbnail(image: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """A JPEG of ``image`` fitted into ``size`` × ``size`` pixels."""
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size))
    buffer = io.BytesIO()
    thumb.save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


class ThumbnailCache:
    """Thumbnails by item id, at most ``capacity`` of them (least recently used dropped).

    Thread-safe: requests add and read thumbnails from the threadpool.

    Args:
        capacity: thumbnails kept (about 3-6 KB each).
        size: the longest side of a thumbnail.
    """

    def __init__(self, capacity: int = 4096, size: int = THUMBNAIL_SIZE) -> None:
        self.capacity = capacity
        self.size = size
        self._items: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def put(self, item_id: int, image: Image.Image) -> None:
        """Keep a thumbnail of ``image`` for ``item_id``."""
        data = make_thumbnail(image, self.size)
        with self._lock:
            self._items[item_id] = data
            self._items.move_to_end(item_id)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def discard(self, item_ids: Iterable[int]) -> None:
        """Forget the thumbnails of removed items."""
        with self._lock:
            for item_id in item_ids:
                self._items.pop(item_id, None)

    def get(self, item_id: int, source: str) -> bytes | None:
        """The JPEG thumbnail of an item, or None when there is no image to show.

        Args:
            item_id: the item.
            source: its ``source`` in the gallery; read from disk only when it names an
                image file (never for uploads).
        """
        with self._lock:
            data = self._items.get(item_id)
            if data is not None:
                self._items.move_to_end(item_id)
                return data
        if not source or source.startswith(UPLOAD_PREFIX) or not is_image_file(source):
            return None
        try:
            image = load_image(source)
        except ImageLoadError:
            return None
        self.put(item_id, image)
        with self._lock:
            return self._items.get(item_id)
