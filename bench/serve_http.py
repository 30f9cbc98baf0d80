"""HTTP load on `openrecog serve`: requests/s and latency of POST /classify, local only.

Usage:
    python bench/serve_http.py                        # default model, 10k-item gallery
    python bench/serve_http.py --clients 1 8 --seconds 10

A gallery of ``--items`` (10k) items is built from random unit vectors in 1,000 classes (the
search cost of a real gallery of that size; the model is the shipped ``default``), saved, and
served by the real command line (``openrecog serve``, one uvicorn worker, in a child process).
Then ``--clients`` concurrent clients (threads with their own HTTP connection) post the same
JPEG to ``/classify`` in a closed loop for ``--seconds``; every response must be 200. Bounded
and on 127.0.0.1 only. Prints one row per client count; ``bench/serve.py`` puts the rows in
docs/benchmarks/serving.md.

The query (``--image``) is a ``document``: a receipt-like page from openrecog's synthetic
generator, 483×640 px, JPEG quality 85 (26 kB, what a phone upload of a document resized for
sending weighs), or ``noise``: 640×480 px of random pixels (232 kB, the worst case for the
JPEG decoder and the upload). Besides latency, each row gives the CPU time per request of the
server process and of the client threads (psutil): with ``N`` closed-loop clients on ``C``
cores, the mean latency cannot be below ``N × (server + client CPU per request) / C``
(Little's law with the cores saturated), which ``bound_ms`` states.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_gallery(path: Path, model: str, items: int, engine: str) -> None:
    """Save a gallery of ``items`` random unit vectors in 1,000 classes under ``model``."""
    from openrecog.gallery import Gallery
    from openrecog.models import load_model

    gallery = Gallery(load_model(model), threshold=0.5, engine=engine)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((items, gallery.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    gallery.add_embeddings(vectors, [f"class_{i % 1000}" for i in range(items)])
    gallery.save(path)


QUERY_IMAGES = ("document", "noise")


def query_jpeg(kind: str = "document") -> bytes:
    """The query JPEG: a 483×640 synthetic document, or 640×480 random pixels (``noise``)."""
    if kind == "document":
        from openrecog.data.synthetic import make_template, render

        image = render(make_template(0), random.Random(0), size=640).convert("RGB")
    elif kind == "noise":
        rng = np.random.default_rng(1)
        image = Image.fromarray((rng.random((480, 640, 3)) * 255).astype(np.uint8))
    else:
        raise ValueError(f"unknown query image {kind!r}; choose one of {QUERY_IMAGES}")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def start_server(
    gallery: Path, port: int, log: Path, server_args: tuple[str, ...] = ()
) -> subprocess.Popen:
    """Run ``openrecog serve`` in a child process and wait until /health answers.

    Its output goes to the file ``log``: a pipe nobody reads would fill up with uvicorn's
    access log and stall the server mid-benchmark.
    """
    env = {**os.environ, "OPENRECOG_API_KEY": "bench-key"}
    cmd = [sys.executable, "-m", "openrecog", "serve", str(gallery), "--port", str(port)]
    cmd += list(server_args)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text(errors='replace')[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError("server did not start within 120 s")


def load(
    url: str, image: bytes, clients: int, seconds: float, server_pid: int | None = None
) -> dict:
    """Closed-loop load from ``clients`` threads; latencies in ms, requests/s, errors.

    With ``server_pid``, also the CPU milliseconds per request of the server process and of
    this process (the clients), and the Little's-law floor of the mean latency they imply.
    """
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while time.monotonic() < stop:
                tick = time.perf_counter()
                response = http.post(url, files={"file": ("q.jpg", image, "image/jpeg")})
                elapsed = (time.perf_counter() - tick) * 1000
                with lock:
                    if response.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        errors[0] += 1

    # A short warm-up so the first requests do not pay for lazy initialisation.
    with httpx.Client(timeout=60) as http:
        for _ in range(3):
            http.post(url, files={"file": ("q.jpg", image, "image/jpeg")})
    server = psutil.Process(server_pid) if server_pid is not None else None
    me = psutil.Process()
    cpu_before = [_cpu_seconds(p) for p in (server, me)]
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start
    cpu_after = [_cpu_seconds(p) for p in (server, me)]
    ordered = sorted(latencies)
    row = {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors[0],
        "req_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(ordered) if ordered else None,
        "p95_ms": ordered[int(0.95 * (len(ordered) - 1))] if ordered else None,
        "mean_ms": statistics.fmean(ordered) if ordered else None,
    }
    if server is not None and ordered:
        served = len(ordered) + errors[0]
        spent = [b - a for a, b in zip(cpu_before, cpu_after, strict=True)]
        row["server_cpu_ms"] = 1000 * spent[0] / served
        row["client_cpu_ms"] = 1000 * spent[1] / served
        cores = len(os.sched_getaffinity(0))
        row["bound_ms"] = clients * (row["server_cpu_ms"] + row["client_cpu_ms"]) / cores
    return row


def _cpu_seconds(process: psutil.Process | None) -> float:
    """User + system CPU seconds of ``process`` and all its threads so far (0 for None)."""
    if process is None:
        return 0.0
    times = process.cpu_times()
    return times.user + times.system


def run(
    model: str,
    items: int,
    clients: list[int],
    seconds: float,
    engine: str,
    image: str = "document",
    server_args: tuple[str, ...] = (),
) -> list[dict]:
    """Build, serve (with extra ``server_args``) and load; one row per client count."""
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "gallery"
        build_gallery(gallery, model, items, engine)
        port = free_port()
        proc = start_server(gallery, port, Path(tmp) / "server.log", server_args)
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/health").json()
            data = query_jpeg(image)
            rows = []
            for count in clients:
                row = load(f"http://127.0.0.1:{port}/classify", data, count, seconds, proc.pid)
                row.update(
                    model=model,
                    items=items,
                    engine=health.get("engine", "?"),
                    image=image,
                    image_kb=len(data) / 1000,
                    server_args=" ".join(server_args),
                )
                rows.append(row)
                print(row, flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return rows


def main() -> None:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--image", choices=QUERY_IMAGES, default="document")
    parser.add_argument(
        "--server-args", default="", help='extra `openrecog serve` options, e.g. "--threads 2"'
    )
    opts = parser.parse_args()
    extra = tuple(opts.server_args.split())
    run(opts.model, opts.items, opts.clients, opts.seconds, opts.engine, opts.image, extra)


if __name__ == "__main__":
    main()
