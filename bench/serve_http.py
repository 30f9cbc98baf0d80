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
"""

from __future__ import annotations

import argparse
import io
import os
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


def query_jpeg() -> bytes:
    """A 640×480 JPEG, the size of a typical phone upload after resizing."""
    rng = np.random.default_rng(1)
    pixels = (rng.random((480, 640, 3)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def start_server(gallery: Path, port: int, log: Path) -> subprocess.Popen:
    """Run ``openrecog serve`` in a child process and wait until /health answers.

    Its output goes to the file ``log``: a pipe nobody reads would fill up with uvicorn's
    access log and stall the server mid-benchmark.
    """
    env = {**os.environ, "OPENRECOG_API_KEY": "bench-key"}
    cmd = [sys.executable, "-m", "openrecog", "serve", str(gallery), "--port", str(port)]
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


def load(url: str, image: bytes, clients: int, seconds: float) -> dict:
    """Closed-loop load from ``clients`` threads; latencies in ms, requests/s, errors."""
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
    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - start
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "errors": errors[0],
        "req_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(ordered) if ordered else None,
        "p95_ms": ordered[int(0.95 * (len(ordered) - 1))] if ordered else None,
    }


def run(model: str, items: int, clients: list[int], seconds: float, engine: str) -> list[dict]:
    """Build, serve and load; returns one row per client count."""
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "gallery"
        build_gallery(gallery, model, items, engine)
        port = free_port()
        proc = start_server(gallery, port, Path(tmp) / "server.log")
        try:
            health = httpx.get(f"http://127.0.0.1:{port}/health").json()
            image = query_jpeg()
            rows = []
            for count in clients:
                row = load(f"http://127.0.0.1:{port}/classify", image, count, seconds)
                row.update(model=model, items=items, engine=health.get("engine", "?"))
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
    opts = parser.parse_args()
    run(opts.model, opts.items, opts.clients, opts.seconds, opts.engine)


if __name__ == "__main__":
    main()
