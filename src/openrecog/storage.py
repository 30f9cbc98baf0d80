"""Crash-safe files and folders: atomic directory replacement, checksums, strict JSON reads."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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
    """
    for file in src.rglob("*"):
        if file.is_file():
            _fsync(file)
    if dst.exists():
        aside = dst.with_name(f"{dst.name}.old-{os.getpid()}")
        if aside.exists():
            shutil.rmtree(aside)
        os.rename(dst, aside)
        os.rename(src, dst)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.rename(src, dst)
    _fsync_dir(dst.parent)


def recover_dir(path: Path) -> None:
    """Restore ``path`` from a leftover ``path.old-*`` if a replace was interrupted."""
    if path.exists():
        return
    for aside in sorted(path.parent.glob(f"{path.name}.old-*")):
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
