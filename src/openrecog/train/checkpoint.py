"""Training checkpoints: everything an exact resume needs, written atomically.

A checkpoint is a folder ``step_<N>/`` holding ``trainer.pt`` (model, optimizer state of
everything but the head, sampler, RNG, history: written by rank 0) and one
``head-<r>-of-<W>.pt`` per rank with that rank's shard of the class centres, their optimizer
state and the rank's RNG state. Every rank writes into ``.step_<N>.partial/``; rank 0 renames
the complete folder into place, so a crash leaves no half checkpoint that looks whole.

The files are ``torch.save`` of tensors, numbers, strings, lists and dicts only, read back
with ``weights_only=True`` — the restricted unpickler that cannot run code. Single-file
``step_<N>.pt`` checkpoints of earlier versions are still listed and loaded.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_PATTERN = re.compile(r"^step_(\d+)(\.pt)?$")
TRAINER_FILE = "trainer.pt"
SHARD_PATTERN = re.compile(r"^head-(\d{5})-of-(\d{5})\.pt$")


def capture_rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU/CUDA, Python, NumPy) in a weights-only-safe form."""
    py_version, py_state, py_gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _atomic_torch_save(obj: Any, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".ckpt.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def shard_file_name(rank: int, world_size: int) -> str:
    """File name of ``rank``'s head shard in a checkpoint of ``world_size`` ranks."""
    return f"head-{rank:05d}-of-{world_size:05d}.pt"


def save_checkpoint(
    common: dict[str, Any] | None,
    shard: dict[str, Any],
    directory: str | Path,
    step: int,
    keep: int,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
) -> Path:
    """Write ``directory/step_<step>/`` atomically and keep only the newest ``keep``.

    Called by every rank with its own ``shard``; rank 0 also passes ``common`` (the other
    ranks pass ``None``). ``barrier`` synchronises the ranks (a no-op for one process).
    """
    directory = Path(directory)
    target = directory / f"step_{step:08d}"
    partial = directory / f".step_{step:08d}.partial"
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)  # left by a crash at this very step
        partial.mkdir()
    barrier()
    _atomic_torch_save(shard, partial / shard_file_name(rank, world_size))
    if rank == 0:
        if common is None:
            raise ValueError("rank 0 must pass the common trainer state")
        _atomic_torch_save(common, partial / TRAINER_FILE)
    barrier()
    if rank == 0:
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        os.replace(partial, target)
        _fsync_dir(directory)
        for old in list_checkpoints(directory)[:-keep]:
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
    barrier()
    return target


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform; the rename is still atomic
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints (folders, or single files of earlier versions) ordered by step."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [p for p in directory.iterdir() if CHECKPOINT_PATTERN.search(p.name)]
    return sorted(found, key=lambda p: int(CHECKPOINT_PATTERN.search(p.name).group(1)))


def _torch_load(path: Path) -> dict[str, Any]:
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for truncated/foreign files
        raise ValueError(f"{path}: not a readable training checkpoint ({exc})") from exc


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read the common trainer state of a checkpoint folder (or of a single-file checkpoint).

    Raises:
        ValueError: the path is not a readable checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TRAINER_FILE
    if not path.is_file():
        raise ValueError(f"{path}: no such training checkpoint")
    return _torch_load(path)


def load_head_shards(path: str | Path) -> list[dict[str, Any]]:
    """The head shards of a checkpoint folder in rank order (all of them, checked complete).

    Raises:
        ValueError: shards are missing, mixed from different world sizes or unreadable.
    """
    path = Path(path)
    if path.name == TRAINER_FILE:
        path = path.parent
    names = {}
    for file in path.iterdir() if path.is_dir() else []:
        match = SHARD_PATTERN.match(file.name)
        if match:
            names[(int(match.group(1)), int(match.group(2)))] = file
    worlds = {world for _, world in names}
    if len(worlds) != 1:
        found = "none" if not worlds else f"world sizes {sorted(worlds)}"
        raise ValueError(f"{path}: expected the head shards of one run, found {found}")
    world = worlds.pop()
    missing = [r for r in range(world) if (r, world) not in names]
    if missing:
        raise ValueError(f"{path}: head shards of ranks {missing} (of {world}) are missing")
    return [_torch_load(names[(r, world)]) for r in range(world)]
