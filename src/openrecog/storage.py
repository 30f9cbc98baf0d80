"""Crash-safe files and folders: atomic directory replacement, checksums, strict JSON reads."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json(path: str | Path, error: type[Exception] = ValueError) -> Any:
    """Parse a JSON file, raising ``error`` with the file name on bad content."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{path}: not valid JSON ({exc})") from exc


def replace_dir(src: Path, dst: Path) -> None:
    """Move the complete directory ``src`` to ``dst``, replacing ``dst`` near-atomically.

    POSIX cannot rename over a non-empty directory, so the old one is first renamed aside;
    a crash between the two renames leaves ``dst.old-*`` which :func:`recover_dir` restores.
    Asides left by earlier crashes are discarded first (``dst`` is complete, so they are
    obsolete): otherwise a later crash between the renames would leave several, and
    :func:`recover_dir` could restore an old or half-deleted one.
    """
    for file in src.rglob("*"):
        if file.is_file():
            _fsync(file)
    if dst.exists():
        name = glob.escape(dst.name)
        for trash in dst.parent.glob(f".{name}.trash-*"):
            shutil.rmtree(trash, ignore_errors=True)
        for stale in dst.parent.glob(f"{name}.old-*"):
            _discard(stale, dst.name)
        aside = dst.with_name(f"{dst.name}.old-{os.getpid()}")
        os.rename(dst, aside)
        os.rename(src, dst)
        _discard(aside, dst.name)
    else:
        os.rename(src, dst)
    _fsync_dir(dst.parent)


def _discard(path: Path, name: str) -> None:
    # Renamed to a name recover_dir never restores before deleting: a crash in the middle
    # of rmtree then leaves ignorable trash, not a half-deleted folder that looks restorable.
    trash = path.with_name(f".{name}.trash-{uuid.uuid4().hex}")
    try:
        os.rename(path, trash)
    except OSError:  # gone already
        return
    shutil.rmtree(trash, ignore_errors=True)


def recover_dir(path: Path) -> None:
    """Restore ``path`` from a leftover ``path.old-*`` if a replace was interrupted."""
    if path.exists():
        return
    for aside in sorted(path.parent.glob(f"{glob.escape(path.name)}.old-*")):
        os.rename(aside, path)
        return


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
