"""A gallery written by a child process that is SIGKILLed at random moments.

:func:`kill_loop` forks writers (``tests/reliability_worker.py``) that register, remove and
save; after each kill the gallery must load and hold exactly what the writer last
acknowledged, or the save it was acknowledging. Bounded in count and time; local files only.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

WORKER = Path(__file__).resolve().parent / "reliability_worker.py"


def item_label(item_id: int) -> str:
    """The label the worker gives item ``item_id`` (so a state is just a set of ids)."""
    return f"class_{item_id % 5}"


def item_source(item_id: int) -> str:
    """The source the worker records for item ``item_id``."""
    return f"worker-item-{item_id}"


def gallery_state(path: Path) -> set[int]:
    """Item ids of the gallery at ``path``, checking each item's label and source.

    Raises:
        AssertionError: an item has another label or source than the worker gave it.
        GalleryError: the gallery does not load.
    """
    from openrecog.gallery import Gallery

    items = Gallery.load(path, device="cpu").items()
    for item in items:
        item_id = item["item_id"]
        assert item["label"] == item_label(item_id), item
        assert item["source"] == item_source(item_id), item
    return {item["item_id"] for item in items}


@dataclass
class KillReport:
    """What a kill loop tried and found."""

    kills: int = 0
    saves_acknowledged: int = 0
    load_failures: list[str] = field(default_factory=list)
    lost_items: int = 0
    unexpected_states: list[str] = field(default_factory=list)
    leftovers_seen: int = 0  # kills that left a temporary folder: they hit a save
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """No failed load, no lost item, no state the worker never acknowledged."""
        return not self.load_failures and not self.lost_items and not self.unexpected_states


def _read_lines(proc: subprocess.Popen, until: float) -> Iterator[str]:
    """Complete lines from ``proc.stdout`` until its end or the time ``until``.

    Yields ``""`` every 10 ms without output, so the caller can act on time.
    """
    assert proc.stdout is not None
    buffer = b""
    fd = proc.stdout.fileno()
    while time.monotonic() < until:
        ready, _, _ = select.select([fd], [], [], max(0.0, min(0.01, until - time.monotonic())))
        if not ready:
            yield ""
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            return
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode("utf-8", "replace")


def _leftovers(gallery: Path) -> set[str]:
    # A save's temporary folder (".g.xxxx") or a replaced gallery set aside ("g.old-<pid>").
    names = (p.name for p in gallery.parent.iterdir())
    return {n for n in names if n.startswith((f".{gallery.name}.", f"{gallery.name}.old-"))}


def _parse_state(text: str) -> set[int]:
    return set(json.loads(text))


def kill_loop(
    gallery: Path,
    kills: int,
    seed: int = 0,
    max_delay_s: float = 0.6,
    time_budget_s: float = 60.0,
) -> KillReport:
    """SIGKILL a gallery writer ``kills`` times at random moments; check the gallery each time.

    A zygote process imports openrecog once and forks one writer per round (so a round
    costs milliseconds, not an interpreter start). Each writer loads ``gallery``, prints
    ``READY <ids>``, then loops: register an image or remove an item, print ``PENDING
    <ids>``, save, print ``ACK <ids>``. After a random delay the writer is killed; the
    gallery must then load and hold exactly the last acknowledged ids, or the pending ids
    after them (a save that completed just before its acknowledgement was printed).

    Args:
        gallery: a saved gallery (the worker's model inside) to hammer.
        kills: rounds to run.
        seed: for the kill delays and the writers' choices.
        max_delay_s: kills come uniformly within this long after a writer is ready.
        time_budget_s: stop early (with fewer kills) after this long.
    """
    rng = random.Random(seed)
    report = KillReport()
    began = time.monotonic()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    zygote = subprocess.Popen(
        [sys.executable, str(WORKER), str(gallery), str(seed)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert zygote.stdin is not None
    try:
        for line in _read_lines(zygote, began + 120):
            if line == "ZYGOTE":
                break
        else:
            raise RuntimeError("the kill-loop zygote did not start")
        expected = gallery_state(gallery)
        leftovers = _leftovers(gallery)
        for round_ in range(kills):
            if time.monotonic() - began > time_budget_s:
                break
            zygote.stdin.write(f"FORK {round_}\n".encode())
            zygote.stdin.flush()
            acked, pending, pid, killed = expected, None, None, False
            deadline = time.monotonic() + 30
            kill_at = None
            for line in _read_lines(zygote, deadline):
                word, _, rest = line.partition(" ")
                if word == "PID":
                    pid = int(rest)
                elif word == "READY":
                    acked = _parse_state(rest)
                    kill_at = time.monotonic() + rng.uniform(0.0, max_delay_s)
                elif word == "PENDING":
                    pending = _parse_state(rest)
                elif word == "ACK":
                    acked, pending = _parse_state(rest), None
                    report.saves_acknowledged += 1
                elif word == "DEAD":
                    break
                elif word == "ERROR":
                    report.load_failures.append(f"round {round_}: writer failed: {rest}")
                if kill_at is not None and not killed and time.monotonic() >= kill_at:
                    os.kill(pid, signal.SIGKILL)
                    killed = True
            if not killed:
                report.load_failures.append(f"round {round_}: writer ended before its kill")
                break
            report.kills += 1
            now_left = _leftovers(gallery)
            report.leftovers_seen += bool(now_left - leftovers)
            leftovers = now_left
            try:
                found = gallery_state(gallery)
            except Exception as exc:  # any failure to load is what this loop looks for
                report.load_failures.append(f"round {round_}: {type(exc).__name__}: {exc}")
                break
            if found != acked and found != pending:
                report.lost_items += len(acked - found)
                report.unexpected_states.append(
                    f"round {round_}: found {sorted(found)}, acknowledged {sorted(acked)}, "
                    f"pending {sorted(pending) if pending is not None else None}"
                )
            expected = found
    finally:
        zygote.kill()
        zygote.wait(10)
        report.seconds = time.monotonic() - began
    return report
