"""The HTTP parts of ``bench/reliability.py``, against a real ``openrecog serve`` child.

- :func:`served`: start the command line server on 127.0.0.1 (one uvicorn worker), wait
  for ``/health``, stop it at the end.
- :func:`concurrent_clients`: threads with their own connection register, remove and
  classify at once; the gallery must end exactly as their acknowledged answers say.
- :func:`unauthorised_writes`: every write route with every wrong-key variant; none may
  change the gallery.
- :func:`soak`: a steady register → classify → remove load while the server's RSS is
  sampled.

All loops are bounded in count and time; the only network is 127.0.0.1.
"""

from __future__ import annotations

import base64
import io
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
from PIL import Image

KEY = "reliability-bench-key"
AUTH = {"X-API-Key": KEY}


@dataclass
class Server:
    """A running ``openrecog serve``."""

    url: str
    proc: subprocess.Popen
    gallery: Path

    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.proc.poll() is None

    def rss_mb(self) -> float:
        """Resident memory of the server process, MiB."""
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def served(gallery: Path, log: Path, timeout_s: float = 120) -> Iterator[Server]:
    """Run ``openrecog serve gallery`` on a free 127.0.0.1 port until the block ends.

    Output goes to ``log`` (a pipe nobody reads would fill up with the access log). The
    server is stopped with SIGTERM (graceful: uvicorn finishes open requests) at the end.
    """
    port = _free_port()
    env = {**os.environ, "OPENRECOG_API_KEY": KEY}
    cmd = [sys.executable, "-m", "openrecog", "serve", str(gallery), "--port", str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", proc, gallery)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text(errors='replace')[-2000:]}")
            try:
                if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not answer within {timeout_s:g} s")
            time.sleep(0.2)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def png(seed: int, size: int = 64) -> bytes:
    """A small PNG of seeded noise (each seed its own image)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _items(http: httpx.Client) -> dict[int, str]:
    found: dict[int, str] = {}
    offset = 0
    while True:
        page = http.get("/items", params={"offset": offset, "limit": 1000}).json()
        found.update({item["item_id"]: item["label"] for item in page["items"]})
        offset += len(page["items"])
        if offset >= page["total"] or not page["items"]:
            return found


def concurrent_clients(
    server: Server, clients: int, operations: int, time_budget_s: float
) -> dict[str, Any]:
    """``clients`` threads each do ``operations`` mixed requests; check the final gallery.

    Each client registers images under its own label, removes some of what it registered
    and classifies in between. The gallery must then hold exactly what was acknowledged:
    every registered item not acknowledged as removed, and nothing else — over HTTP and,
    once the server has stopped, in the saved folder (checked by the caller).
    """
    lock = threading.Lock()
    ledger: dict[int, str] = {}  # item id → label, as the answers said
    errors: list[str] = []
    counts = {"register": 0, "remove": 0, "classify": 0}
    stop_at = time.monotonic() + time_budget_s
    with httpx.Client(base_url=server.url, timeout=60) as http:
        before = _items(http)

    def client(index: int) -> None:
        mine: list[int] = []
        rng = np.random.default_rng(index)
        with httpx.Client(base_url=server.url, timeout=60) as http:
            for n in range(operations):
                if time.monotonic() > stop_at:
                    return
                roll = rng.random()
                try:
                    if roll < 0.4 or not mine:
                        files = [("files", (f"c{index}_{n}.png", png(index * 10_000 + n)))]
                        r = http.post(
                            "/register",
                            data={"label": f"client_{index}"},
                            files=files,
                            headers=AUTH,
                        )
                        if r.status_code == 200:
                            with lock:
                                for item_id in r.json()["added"]:
                                    ledger[item_id] = f"client_{index}"
                            mine.extend(r.json()["added"])
                        kind = "register"
                    elif roll < 0.6:
                        item_id = mine.pop(int(rng.integers(len(mine))))
                        r = http.delete(f"/items/{item_id}", headers=AUTH)
                        if r.status_code == 200:
                            with lock:
                                ledger.pop(item_id, None)
                        kind = "remove"
                    else:
                        files = {"file": ("q.png", png(index * 10_000 + int(rng.integers(n + 1))))}
                        r = http.post("/classify", files=files)
                        kind = "classify"
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"client {index}: {type(exc).__name__}: {exc}")
                    continue
                with lock:
                    counts[kind] += 1
                    if r.status_code != 200:
                        errors.append(f"client {index} {kind}: {r.status_code} {r.text[:200]}")

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=time_budget_s + 120)
    hung = sum(thread.is_alive() for thread in threads)
    expected = {**before, **ledger}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        found = _items(http)
    return {
        "clients": clients,
        "requests": sum(counts.values()),
        "by_kind": counts,
        "seconds": time.monotonic() - began,
        "errors": errors[:20],
        "error_count": len(errors),
        "hung_clients": hung,
        "expected": expected,
        "lost": len(set(expected) - set(found)),
        "unexpected": len(set(found) - set(expected)),
        "wrong_labels": sum(found[i] != expected[i] for i in set(found) & set(expected)),
    }


WRONG_KEYS: list[tuple[str, dict[str, str], dict[str, str]]] = [
    ("no key", {}, {}),
    ("empty key", {"X-API-Key": ""}, {}),
    ("wrong key", {"X-API-Key": "wrong"}, {}),
    ("key minus last char", {"X-API-Key": KEY[:-1]}, {}),
    ("key plus a char", {"X-API-Key": KEY + "x"}, {}),
    ("key upper-cased", {"X-API-Key": KEY.upper()}, {}),
    ("same length, wrong", {"X-API-Key": "x" * len(KEY)}, {}),
    ("as Bearer token", {"Authorization": f"Bearer {KEY}"}, {}),
    ("in the query", {}, {"api_key": KEY, "X-API-Key": KEY}),
    ("other header name", {"X-Api-Token": KEY}, {}),
]


def _write_attempts(
    http: httpx.Client,
    headers: dict[str, str],
    params: dict[str, str],
    n: int,
    item_id: int,
    label: str,
) -> list[httpx.Response]:
    """One request to each write route (multipart and JSON registration, both removals)."""
    image = base64.b64encode(png(900_000 + n)).decode()
    return [
        http.post(
            "/register",
            data={"label": "intruder"},
            files=[("files", ("a.png", png(900_000 + n)))],
            headers=headers,
            params=params,
        ),
        http.post(
            "/register",
            json={"label": "intruder", "images": [image]},
            headers=headers,
            params=params,
        ),
        http.delete(f"/items/{item_id}", headers=headers, params=params),
        http.delete(f"/classes/{label}", headers=headers, params=params),
    ]


def unauthorised_writes(server: Server, rounds: int = 5) -> dict[str, Any]:
    """Try every write route with every wrong-key variant; count what was accepted."""
    attempts = accepted = 0
    statuses: dict[int, int] = {}
    with httpx.Client(base_url=server.url, timeout=60) as http:
        before = _items(http)
        some_id = min(before) if before else 0
        some_label = before[some_id] if before else "x"
        manifest = (server.gallery / "gallery.json").read_bytes()
        for n in range(rounds):
            for _, headers, params in WRONG_KEYS:
                for response in _write_attempts(http, headers, params, n, some_id, some_label):
                    attempts += 1
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    accepted += response.status_code < 400
        after = _items(http)
    return {
        "attempts": attempts,
        "accepted": accepted,
        "statuses": statuses,
        "gallery_changed": after != before
        or (server.gallery / "gallery.json").read_bytes() != manifest,
    }


def soak(server: Server, seconds: float, clients: int = 2, sample_s: float = 5.0) -> dict:
    """Register → classify → remove in a loop from ``clients`` threads; sample the RSS.

    The gallery returns to its size after each cycle, so memory should stay flat: the
    growth reported is the median RSS of the last third of the samples minus that of the
    first third (after a warm-up sixth), in MiB.
    """
    stop_at = time.monotonic() + seconds
    cycles = [0]
    errors: list[str] = []
    lock = threading.Lock()

    def client(index: int) -> None:
        n = 0
        with httpx.Client(base_url=server.url, timeout=60) as http:
            while time.monotonic() < stop_at:
                n += 1
                image = png(5_000_000 + index * 100_000 + n % 500)
                files = [("files", ("s.png", image))]
                try:
                    r = http.post(
                        "/register", data={"label": f"soak_{index}"}, files=files, headers=AUTH
                    )
                    q = http.post("/classify", files={"file": ("q.png", image)})
                    d = [http.delete(f"/items/{i}", headers=AUTH) for i in r.json()["added"]]
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {exc}")
                    continue
                with lock:
                    cycles[0] += 1
                    for response in (r, q, *d):
                        if response.status_code != 200:
                            errors.append(f"{response.status_code} {response.text[:200]}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    samples: list[tuple[float, float]] = []
    while time.monotonic() < stop_at and server.alive():
        samples.append((time.monotonic() - began, server.rss_mb()))
        time.sleep(min(sample_s, max(0.0, stop_at - time.monotonic())))
    for thread in threads:
        thread.join(timeout=120)
    if server.alive():
        samples.append((time.monotonic() - began, server.rss_mb()))
    warm = [rss for t, rss in samples if t >= seconds / 6] or [rss for _, rss in samples]
    third = max(1, len(warm) // 3)
    first, last = statistics.median(warm[:third]), statistics.median(warm[-third:])
    return {
        "seconds": time.monotonic() - began,
        "clients": clients,
        "cycles": cycles[0],
        "requests": cycles[0] * 3,
        "errors": errors[:20],
        "error_count": len(errors),
        "rss_mb_samples": [[round(t, 1), round(rss, 1)] for t, rss in samples],
        "rss_start_mb": round(first, 1),
        "rss_end_mb": round(last, 1),
        "rss_growth_mb": round(last - first, 1),
        "server_alive": server.alive(),
    }


def _kill_client(
    url: str,
    acked: set[int],
    in_flight: list[tuple[str, int | None]],
    stop: threading.Event,
    tag: int,
) -> None:
    """Register, and remove every third time, until the server dies; keep ``acked`` true.

    ``in_flight`` holds the operation whose answer has not arrived yet (at most one).
    """
    with httpx.Client(base_url=url, timeout=30) as http:
        n = 0
        while not stop.is_set():
            n += 1
            mine = sorted(acked)
            op = ("remove", mine[n % len(mine)]) if mine and n % 3 == 0 else ("register", None)
            in_flight[:] = [op]
            try:
                if op[0] == "remove":
                    r = http.delete(f"/items/{op[1]}", headers=AUTH)
                    if r.status_code == 200:
                        acked.discard(op[1])
                else:
                    files = [("files", ("k.png", png(7_000_000 + tag * 1000 + n)))]
                    r = http.post("/register", data={"label": "k"}, files=files, headers=AUTH)
                    if r.status_code == 200 and r.json()["saved"]:
                        acked.update(r.json()["added"])
            except httpx.HTTPError:
                return  # the server is gone: the operation stays in flight
            in_flight[:] = []


def server_kill_loop(
    gallery: Path, log: Path, kills: int, seed: int, time_budget_s: float
) -> dict[str, Any]:
    """SIGKILL ``openrecog serve`` while a client registers and removes through it.

    Each round starts the server on the gallery as the last round left it; one client
    registers images and removes some of its acknowledged items until, after a random 0.5-3 s,
    the server is killed. The saved gallery must then hold every acknowledged registration
    that was not acknowledged as removed; the one request in flight at the kill may or may
    not have been applied.
    """
    from openrecog.gallery import Gallery

    rng = np.random.default_rng(seed)
    began = time.monotonic()
    acked = {item["item_id"] for item in Gallery.load(gallery).items()}
    rounds = lost = unexpected = load_failures = acknowledged = 0
    while rounds < kills and time.monotonic() - began < time_budget_s:
        in_flight: list[tuple[str, int | None]] = []
        stop = threading.Event()
        with served(gallery, log) as server:
            args = (server.url, acked, in_flight, stop, rounds)
            thread = threading.Thread(target=_kill_client, args=args, daemon=True)
            thread.start()
            time.sleep(float(rng.uniform(0.5, 3.0)))
            os.kill(server.proc.pid, signal.SIGKILL)
            server.proc.wait(30)
            stop.set()
            thread.join(60)
        rounds += 1
        try:
            found = {item["item_id"] for item in Gallery.load(gallery).items()}
        except Exception:  # any failure to load is what this loop looks for
            load_failures += 1
            break
        op = in_flight[0] if in_flight else None
        must = acked - ({op[1]} if op and op[0] == "remove" else set())
        lost += len(must - found)
        extra = found - acked
        # A registration in flight may have been saved without its answer arriving.
        if op and op[0] == "register" and len(extra) == 1 and min(extra) > max(acked, default=-1):
            extra = set()
        unexpected += len(extra)
        acknowledged += len(acked)
        acked = found
    return {
        "kills": rounds,
        "load_failures": load_failures,
        "lost": lost,
        "unexpected": unexpected,
        "items_checked": acknowledged,
        "seconds": time.monotonic() - began,
    }
