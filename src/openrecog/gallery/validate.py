"""Checks on a saved gallery's files before anything in them is used.

A gallery folder may come from someone else, so its manifest and items are treated as
untrusted: every file the manifest names must be a plain file name inside the folder (no
``../`` or absolute paths), the item files must carry a checksum, and the items must be
well-formed (unique integer ids that match the embeddings, valid labels, text sources).
Any problem is a :class:`~openrecog.gallery.errors.GalleryError` naming the folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from openrecog.gallery.errors import GalleryError

# Files of a gallery stored in its folder; they must be checksummed in the manifest.
ITEM_FILES = ("embeddings.safetensors", "items.json")


def _plain_name(name: object) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and "/" not in name
        and "\\" not in name
        and "\0" not in name
    )


def check_manifest(path: Path, manifest: object, in_folder: bool) -> dict[str, Any]:
    """Validate ``gallery.json`` of the gallery at ``path``; returns it as a dict.

    Args:
        path: the gallery folder (for messages).
        manifest: the parsed JSON.
        in_folder: whether the items are stored in the folder (not in PostgreSQL), so
            that their files must be listed with a checksum.

    Raises:
        GalleryError: not a mapping, a checksum entry that is not a plain file name in the
            folder or not a hex digest, missing item checksums, or a bad threshold.
    """
    if not isinstance(manifest, dict):
        raise GalleryError(f"{path}/gallery.json: not a gallery manifest (not a JSON object)")
    sums = manifest.get("sha256", {})
    if not isinstance(sums, dict):
        raise GalleryError(f"{path}/gallery.json: 'sha256' must map file names to digests")
    for name, digest in sums.items():
        if not _plain_name(name):
            raise GalleryError(
                f"{path}/gallery.json: file name {name!r} is not inside the gallery folder"
            )
        if not isinstance(digest, str) or len(digest) != 64:
            raise GalleryError(f"{path}/gallery.json: bad checksum for {name!r}")
    if in_folder:
        missing = [name for name in ITEM_FILES if name not in sums]
        if missing:
            raise GalleryError(
                f"{path}/gallery.json: no checksum for {', '.join(missing)} (corrupted gallery)"
            )
    threshold = manifest.get("threshold")
    if isinstance(threshold, bool) or not isinstance(threshold, int | float):
        raise GalleryError(f"{path}/gallery.json: 'threshold' must be a number")
    return manifest


def check_items(
    path: Path,
    items: object,
    ids: np.ndarray,
    vectors: np.ndarray,
    dim: int,
    validate_label: Callable[[str], str],
) -> list[dict[str, Any]]:
    """Validate the saved items against the saved embeddings; returns the items.

    Raises:
        GalleryError: items that are not a list of ``{"item_id", "label", "source"}``, ids
            that are duplicated or differ from the embeddings' ids, embeddings of the
            wrong shape or type, non-finite values, or an invalid label.
    """
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise GalleryError(f"{path}/items.json: must be a list of items (corrupted gallery)")
    if ids.ndim != 1 or ids.dtype.kind not in "iu" or vectors.dtype != np.float32:
        raise GalleryError(f"{path}: embeddings file has the wrong layout (corrupted gallery)")
    if len(items) != len(ids) or vectors.shape != (len(ids), dim):
        raise GalleryError(f"{path}: items and embeddings disagree (corrupted gallery)")
    if len(np.unique(ids)) != len(ids) or (len(ids) and ids.min() < 0):
        raise GalleryError(f"{path}: duplicate or negative item ids (corrupted gallery)")
    if [item.get("item_id") for item in items] != ids.tolist():
        raise GalleryError(f"{path}: items and embeddings disagree (corrupted gallery)")
    if not np.isfinite(vectors).all():
        raise GalleryError(f"{path}: embeddings contain NaN or infinity (corrupted gallery)")
    labels = [item.get("label") for item in items]
    if not all(isinstance(item.get("source", ""), str) for item in items):
        raise GalleryError(f"{path}/items.json: an item's source is not text (corrupted gallery)")
    if not all(isinstance(label, str) for label in labels):
        raise GalleryError(f"{path}/items.json: an item's label is not text (corrupted gallery)")
    for label in set(labels):  # a large gallery has far fewer classes than items
        try:
            validate_label(label)
        except GalleryError as exc:
            raise GalleryError(f"{path}/items.json: {exc}") from None
    return items
