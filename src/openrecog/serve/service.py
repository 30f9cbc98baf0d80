"""The gallery operations behind the endpoints, run in the threadpool.

Decoding and embedding images (the CPU-heavy part) run outside any lock, so concurrent
requests use every core. Everything that touches the gallery's items (search, add,
remove, save, listings) holds one lock: the in-memory store and its FAISS index are not
safe to read while another thread changes them, and a save must see a consistent state.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from starlette.exceptions import HTTPException

from openrecog.data.images import ImageLoadError
from openrecog.gallery import UNKNOWN, Gallery, GalleryError, Hit
from openrecog.gallery.gallery import validate_label
from openrecog.serve.middleware import Deadline, ServeMetrics
from openrecog.serve.schemas import (
    BatchClassifyItem,
    BatchClassifyOut,
    BatchSearchItem,
    BatchSearchOut,
    ClassesOut,
    ClassifyOut,
    ClassOut,
    HealthOut,
    HitOut,
    ItemOut,
    ItemsOut,
    RegisterOut,
    RemoveOut,
    SearchOut,
    SkippedOut,
)
from openrecog.serve.settings import ServeSettings
from openrecog.serve.thumbnails import UPLOAD_PREFIX, ThumbnailCache
from openrecog.serve.uploads import Upload

log = logging.getLogger("openrecog.serve")

EMPTY_GALLERY = "the gallery is empty: register images first (POST /register)"


class SaveFailed(Exception):
    """The gallery folder could not be written after a change."""


def _manifest_stamp(path: Path | None) -> bytes | None:
    """The saved manifest's bytes: every save rewrites it (with new checksums and time)."""
    try:
        return (path / "gallery.json").read_bytes() if path is not None else None
    except OSError:
        return None


def gallery_error_status(exc: GalleryError) -> int:
    """The HTTP status of a gallery error: 404 missing, 409 empty, 422 bad label, else 500."""
    message = str(exc)
    if message.startswith(("no item", "no class")):
        return 404
    if message.startswith("the gallery is empty"):
        return 409
    if message.startswith("label") or "reserved" in message:
        return 422
    return 500


def _hits(hits: Sequence[Hit]) -> list[HitOut]:
    return [HitOut(item_id=h.item_id, label=h.label, score=h.score) for h in hits]


def _strip(message: str, name: str) -> str:
    # load_image names its input "<image>"; the client knows the image by its file name.
    return message.removeprefix("<image>: ").removeprefix(f"{name}: ")


class GalleryService:
    """A gallery served to concurrent requests.

    Args:
        gallery: the gallery.
        path: its folder, saved after each write when ``settings.save_on_write``.
        settings: the service settings.
        metrics: where to count images and time inference.
    """

    def __init__(
        self,
        gallery: Gallery,
        path: Path | None,
        settings: ServeSettings,
        metrics: ServeMetrics,
    ) -> None:
        self.gallery = gallery
        self.path = Path(path) if path is not None else None
        self.settings = settings
        self.metrics = metrics
        self.lock = threading.Lock()
        self.thumbnails = ThumbnailCache()
        self._stamp = _manifest_stamp(self.path)

    # ------------------------------------------------------------------ helpers
    @property
    def threshold(self) -> float:
        """The threshold classification uses (the setting overrides the gallery's)."""
        if self.settings.threshold is not None:
            return self.settings.threshold
        return self.gallery.threshold

    @property
    def persistent(self) -> bool:
        """Whether writes rewrite the gallery folder."""
        return self.settings.save_on_write and self.path is not None and not self.gallery.shared

    def _decode(
        self, uploads: Sequence[Upload], operation: str
    ) -> tuple[list[Image.Image | None], list[str | None]]:
        images: list[Image.Image | None] = []
        errors: list[str | None] = []
        for upload in uploads:
            try:
                images.append(self.gallery.encoder.load(upload.data))
                errors.append(None)
                self.metrics.images.labels(operation, "ok").inc()
            except ImageLoadError as exc:
                images.append(None)
                errors.append(_strip(str(exc), upload.name))
                self.metrics.images.labels(operation, "rejected").inc()
        return images, errors

    def _encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        began = time.perf_counter()
        vectors = self.gallery.encoder.encode(list(images))
        self.metrics.inference.observe(time.perf_counter() - began)
        return vectors

    def _require_items(self) -> None:
        with self.lock:
            empty = len(self.gallery) == 0
        if empty:
            raise HTTPException(409, EMPTY_GALLERY)

    def _search(self, vectors: np.ndarray, k: int) -> list[list[Hit]]:
        with self.lock:
            try:
                return self.gallery.search_embeddings(vectors, k)
            except GalleryError as exc:
                if gallery_error_status(exc) == 409:  # emptied by another request meanwhile
                    raise HTTPException(409, EMPTY_GALLERY) from None
                raise

    def _decide(self, hits: list[Hit]) -> ClassifyOut:
        threshold = self.threshold
        if not hits:  # a shared gallery emptied by another process since the search began
            return ClassifyOut(label=UNKNOWN, score=-1.0, known=False, threshold=threshold, top=[])
        best = hits[0]
        known = best.score >= threshold
        return ClassifyOut(
            label=best.label if known else UNKNOWN,
            score=best.score,
            known=known,
            threshold=threshold,
            top=_hits(hits),
        )

    def _update_size_gauges(self) -> tuple[int, int]:
        # Called with the lock held.
        items, classes = len(self.gallery), len(self.gallery.classes())
        self.metrics.gallery_items.set(items)
        self.metrics.gallery_classes.set(classes)
        return items, classes

    def _require_unchanged_folder(self) -> None:
        # Called with the lock held, before a change. Another process that saved the folder
        # since we read it (`openrecog register` on a served gallery) would lose its items
        # to our next save, which writes what this process holds: refuse instead.
        if self.persistent and _manifest_stamp(self.path) != self._stamp:
            raise HTTPException(
                409,
                f"the gallery folder {self.path} was changed by another process since this "
                "server read it; nothing was changed here: restart the server to serve "
                "(and keep) both",
            )

    def _persist(self) -> bool:
        # Called with the lock held, right after a change.
        if not self.persistent:
            return False
        assert self.path is not None
        try:
            self.gallery.save(self.path)
        except (OSError, GalleryError, ValueError) as exc:
            log.exception("could not save the gallery to %s", self.path)
            raise SaveFailed(f"could not save the gallery to {self.path}: {exc}") from exc
        self._stamp = _manifest_stamp(self.path)
        return True

    # ------------------------------------------------------------------ reading
    def _query(
        self, uploads: Sequence[Upload], k: int, deadline: Deadline, operation: str
    ) -> tuple[list[list[Hit] | None], list[str | None]]:
        self._require_items()
        images, errors = self._decode(uploads, operation)
        good = [i for i, image in enumerate(images) if image is not None]
        results: list[list[Hit] | None] = [None] * len(uploads)
        if good:
            deadline.check()
            vectors = self._encode([images[i] for i in good])
            deadline.check()
            for i, hits in zip(good, self._search(vectors, k), strict=True):
                results[i] = hits
        return results, errors

    def classify(self, upload: Upload, k: int, deadline: Deadline) -> ClassifyOut:
        """Classify one image.

        Raises:
            HTTPException: 400 unreadable image, 409 empty gallery.
        """
        results, errors = self._query([upload], k, deadline, "classify")
        if results[0] is None:
            raise HTTPException(400, f"{upload.name}: {errors[0]}")
        return self._decide(results[0])

    def classify_batch(self, uploads: Sequence[Upload], k: int, deadline: Deadline) -> Any:
        """Classify several images; an unreadable one gets an error, not a failed request."""
        results, errors = self._query(uploads, k, deadline, "classify")
        return BatchClassifyOut(
            results=[
                BatchClassifyItem(
                    file=upload.name,
                    result=self._decide(hits) if hits is not None else None,
                    error=error,
                )
                for upload, hits, error in zip(uploads, results, errors, strict=True)
            ]
        )

    def search(self, upload: Upload, k: int, deadline: Deadline) -> SearchOut:
        """The ``k`` nearest items to one image.

        Raises:
            HTTPException: 400 unreadable image, 409 empty gallery.
        """
        results, errors = self._query([upload], k, deadline, "search")
        if results[0] is None:
            raise HTTPException(400, f"{upload.name}: {errors[0]}")
        return SearchOut(hits=_hits(results[0]))

    def search_text(self, text: str, k: int, deadline: Deadline) -> SearchOut:
        """The ``k`` items that best fit a caption (needs the gallery's text encoder).

        Raises:
            HTTPException: 404 no text model served, 422 empty text, 409 empty gallery.
        """
        encoder = getattr(self.gallery, "text_encoder", None)
        if encoder is None:
            raise HTTPException(
                404, "text search is off: start the server with --text-model RUN/model"
            )
        if not text.strip():
            raise HTTPException(422, "the text is empty")
        self._require_items()
        vectors = encoder.encode([text]).numpy()
        deadline.check()
        return SearchOut(hits=_hits(self._search(vectors, k)[0]))

    def search_batch(self, uploads: Sequence[Upload], k: int, deadline: Deadline) -> Any:
        """The ``k`` nearest items to each of several images."""
        results, errors = self._query(uploads, k, deadline, "search")
        return BatchSearchOut(
            results=[
                BatchSearchItem(
                    file=upload.name, hits=_hits(hits) if hits is not None else None, error=error
                )
                for upload, hits, error in zip(uploads, results, errors, strict=True)
            ]
        )

    def classes(self) -> ClassesOut:
        """Every class with its item count."""
        with self.lock:
            counts = self.gallery.classes()
        return ClassesOut(
            classes=[ClassOut(label=label, count=n) for label, n in counts.items()],
            items=sum(counts.values()),
        )

    def items(self, offset: int, limit: int, label: str | None) -> ItemsOut:
        """A page of items, optionally of one class."""
        with self.lock:
            items = self.gallery.items()
        if label is not None:
            items = [item for item in items if item["label"] == label]
        page = items[offset : offset + limit]
        return ItemsOut(
            items=[ItemOut(**item) for item in page], total=len(items), offset=offset, limit=limit
        )

    def thumbnail(self, item_id: int) -> bytes | None:
        """An item's JPEG thumbnail, or None when no image is available.

        Raises:
            HTTPException: 404 no such item.
        """
        with self.lock:
            # One lookup: the page asks for a thumbnail per shown item, and listing every
            # item for each would cost O(gallery size) per image.
            item = self.gallery.item(item_id)
        if item is None:
            raise HTTPException(404, f"no item with id {item_id}")
        return self.thumbnails.get(item_id, item["source"])

    def health(self) -> HealthOut:
        """What the service serves, for monitoring."""
        with self.lock:
            items, classes = self._update_size_gauges()
        model = self.gallery.model
        config = getattr(model, "config", None)
        settings = self.settings
        if settings.api_key is not None:
            writes = "api-key"
        elif settings.allow_unauthenticated_writes:
            writes = "open"
        else:
            writes = "disabled"
        return HealthOut(
            status="ok",
            items=items,
            classes=classes,
            threshold=self.threshold,
            index=self.gallery.index_spec,
            shared=self.gallery.shared,
            model={
                "type": type(model).__name__,
                "backbone": getattr(config, "backbone", None),
                "embedding_dim": self.gallery.dim,
                "image_size": getattr(config, "image_size", None),
            },
            engine=self.gallery.encoder.engine_name,
            writes=writes,
            protect_reads=settings.protect_reads,
            persistent=self.persistent,
        )

    def refresh_gauges(self) -> None:
        """Bring the gallery size gauges up to date (before a metrics scrape)."""
        with self.lock:
            self._update_size_gauges()

    # ------------------------------------------------------------------ writing
    def register(self, label: str, uploads: Sequence[Upload], deadline: Deadline) -> RegisterOut:
        """Embed and add images under ``label``; unreadable ones are skipped and reported.

        Raises:
            HTTPException: 422 invalid label, 400 when no image could be read, 409 when
                another process changed the folder, 503 (via :class:`RequestTimedOut`)
                when the time limit passed before the change.
        """
        try:
            label = validate_label(label)
        except GalleryError as exc:
            raise HTTPException(422, str(exc)) from None
        images, errors = self._decode(uploads, "register")
        skipped = [
            SkippedOut(file=upload.name, reason=error)
            for upload, error in zip(uploads, errors, strict=True)
            if error is not None
        ]
        kept = [(u, image) for u, image in zip(uploads, images, strict=True) if image is not None]
        if not kept:
            reasons = "; ".join(f"{s.file}: {s.reason}" for s in skipped)
            raise HTTPException(400, f"no image could be read, nothing registered ({reasons})")
        deadline.check()
        vectors = self._encode([image for _, image in kept])
        sources = [f"{UPLOAD_PREFIX}{u.name}" for u, _ in kept]
        with self.lock:
            deadline.commit()
            self._require_unchanged_folder()
            added = self.gallery.add_embeddings(vectors, [label] * len(kept), sources)
            try:
                saved = self._persist()
            except SaveFailed as exc:
                # Undo, so that the gallery in memory matches the folder and a retry does
                # not register the images twice.
                for item_id in added:
                    self.gallery.remove(item_id)
                raise HTTPException(500, f"{exc}; nothing was registered") from None
            items, classes = self._update_size_gauges()
        for item_id, (_, image) in zip(added, kept, strict=True):
            self.thumbnails.put(item_id, image)
        return RegisterOut(
            label=label, added=added, skipped=skipped, items=items, classes=classes, saved=saved
        )

    def _removed(self, removed_ids: list[int], count: int) -> RemoveOut:
        # Called with the lock held, after a removal.
        try:
            saved = self._persist()
        except SaveFailed as exc:
            raise HTTPException(
                500, f"{exc}; the removal applies in memory and is saved with the next write"
            ) from None
        items, classes = self._update_size_gauges()
        self.thumbnails.discard(removed_ids)
        return RemoveOut(removed=count, items=items, classes=classes, saved=saved)

    def remove_item(self, item_id: int, deadline: Deadline) -> RemoveOut:
        """Remove one item.

        Raises:
            HTTPException: 404 no such item, 409 folder changed by another process.
        """
        with self.lock:
            deadline.commit()
            self._require_unchanged_folder()
            try:
                self.gallery.remove(item_id)
            except GalleryError as exc:
                raise HTTPException(gallery_error_status(exc), str(exc)) from None
            return self._removed([item_id], 1)

    def remove_class(self, label: str, deadline: Deadline) -> RemoveOut:
        """Remove every item of a class.

        Raises:
            HTTPException: 404 no such class, 409 folder changed by another process.
        """
        with self.lock:
            deadline.commit()
            self._require_unchanged_folder()
            ids = [item["item_id"] for item in self.gallery.items() if item["label"] == label]
            try:
                count = self.gallery.remove_class(label)
            except GalleryError as exc:
                raise HTTPException(gallery_error_status(exc), str(exc)) from None
            return self._removed(ids, count)
