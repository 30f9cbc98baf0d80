"""Reliability report: fuzzing, SIGKILLs, concurrent clients, unauthorised writes, a soak.

Usage:
    python bench/reliability.py                       # defaults: about 12 min on 2 cores
    python bench/reliability.py --soak-seconds 60 --kills 30 --fuzz 1000

What runs (every loop bounded in count and time; network only on 127.0.0.1):

1. the hostile images of ``tests/reliability_tools.py`` and ``--fuzz`` mutated JPEG/PNG/WebP/
   GIF files into ``load_image`` and ``Gallery.classify/register`` (a tiny untrained model);
2. ``--kills`` SIGKILLs of a process registering, removing and saving a gallery, and
   ``--server-kills`` of ``openrecog serve`` during HTTP writes; after each the gallery must
   load and hold every acknowledged item;
3. a real ``openrecog serve`` child (``--model``, default: the shipped ``default``) gets
   the hostile images, ``--http-fuzz`` mutated uploads and ``--body-fuzz`` malformed request
   bodies, then ``--clients`` concurrent clients registering, removing and classifying (the
   gallery must end exactly as their answers say, also on disk), then every wrong-key
   variant on every write route;
4. a soak of ``--soak-seconds`` (register → classify → remove) with the server's RSS
   sampled by psutil.

Writes ``docs/benchmarks/reliability.json`` and the table in ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from machine import machine_name  # noqa: E402
from markdown_table import write_between_markers  # noqa: E402
from reliability_http import (  # noqa: E402
    AUTH,
    concurrent_clients,
    served,
    server_kill_loop,
    soak,
    unauthorised_writes,
)

from tests.reliability_tools import (  # noqa: E402
    fuzz_bodies,
    fuzz_http,
    fuzz_library,
    hostile_bodies,
    hostile_images,
    kill_loop,
    mutated_images,
    noise_image,
    tiny_model,
    torch_threads,
)

JSON_OUT = ROOT / "docs" / "benchmarks" / "reliability.json"
MD_OUT = ROOT / "docs" / "reliability.md"


def library_fuzz(count: int, seed: int) -> dict[str, Any]:
    """Hostile images and ``count`` mutations into the library."""
    from openrecog.gallery import Gallery

    gallery = Gallery(tiny_model(), threshold=0.0, device="cpu")
    gallery.register(noise_image(seed=1), "seed")
    hostile = [(name, data) for name, (data, _) in hostile_images().items()]
    began = time.monotonic()
    report = fuzz_library(gallery, hostile + list(mutated_images(count, seed)))
    return {**report.__dict__, "seconds": time.monotonic() - began, "hostile": len(hostile)}


def killing(kills: int, seed: int, budget_s: float, work: Path) -> dict[str, Any]:
    """The SIGKILL loop on a gallery of the tiny model."""
    from openrecog.gallery import Gallery

    path = Gallery(tiny_model(), threshold=0.0, device="cpu").save(work / "killed_gallery")
    report = kill_loop(path, kills=kills, seed=seed, max_delay_s=0.6, time_budget_s=budget_s)
    return {**report.__dict__, "ok": report.ok}


def server_killing(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """SIGKILL a server of a tiny-model gallery (it starts in seconds) during writes."""
    from openrecog.gallery import Gallery

    path = Gallery(tiny_model(), threshold=0.0, device="cpu").save(work / "killed_server")
    return server_kill_loop(
        path, work / "killed_server.log", args.server_kills, args.seed, args.server_kill_seconds
    )


def http_phases(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Fuzz, concurrency and unauthorised writes against one server; the soak on another."""
    from openrecog.gallery import Gallery
    from openrecog.models import load_model

    path = work / "served_gallery"
    gallery = Gallery(load_model(args.model), threshold=0.5)
    for i in range(8):
        gallery.register(noise_image((96, 96), seed=100 + i), f"base_{i % 4}")
    gallery.save(path)
    log = work / "server.log"
    out: dict[str, Any] = {}
    with served(path, log) as server:
        began = time.monotonic()
        hostile = [(f"hostile_{n}", d) for n, (d, _) in hostile_images().items()]
        inputs = hostile + list(mutated_images(args.http_fuzz, args.seed + 1))
        with httpx.Client(base_url=server.url, timeout=args.request_timeout) as http:
            fuzz = fuzz_http(http, inputs, AUTH)
            health = http.get("/health")
        out["http_fuzz"] = {
            **fuzz.__dict__,
            "seconds": time.monotonic() - began,
            "server_alive": server.alive(),
            "health_after": health.status_code,
        }
        began = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=args.request_timeout) as http:
            bodies = fuzz_bodies(http, hostile_bodies(args.body_fuzz, args.seed + 2), AUTH)
        out["body_fuzz"] = {
            **bodies.__dict__,
            "seconds": time.monotonic() - began,
            "server_alive": server.alive(),
        }
        out["concurrency"] = concurrent_clients(
            server, args.clients, args.operations, args.concurrency_seconds
        )
        began = time.monotonic()
        out["unauthorised"] = {**unauthorised_writes(server), "seconds": time.monotonic() - began}
        out["server_alive_after"] = server.alive()
    # After a graceful stop the saved folder must match what the clients were told.
    expected = out["concurrency"].pop("expected")
    on_disk = {item["item_id"]: item["label"] for item in Gallery.load(path).items()}
    out["concurrency"]["lost_on_disk"] = len(set(expected) - set(on_disk))
    out["concurrency"]["unexpected_on_disk"] = len(set(on_disk) - set(expected))
    with served(path, log) as server:
        out["soak"] = soak(server, args.soak_seconds)
    return out


def _row(check: str, tried: str, seconds: float, **outcome: object) -> dict[str, Any]:
    return {"check": check, "tried": tried, "seconds": seconds, **outcome}


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per check: what was tried, and how it came out."""
    lib, kill, http = result["library_fuzz"], result["kills"], result["http"]
    server = result["server_kills"]
    fuzz, bodies, conc = http["http_fuzz"], http["body_fuzz"], http["concurrency"]
    auth, soaked = http["unauthorised"], http["soak"]
    return [
        _row(
            "hostile + mutated images → library",
            f"{lib['inputs']} inputs ({lib['hostile']} hostile, {lib['refused']} refused)",
            lib["seconds"],
            crashes=len(lib["crashes"]),
            hangs=len(lib["hangs"]),
        ),
        _row(
            "hostile + mutated uploads → HTTP server",
            f"{fuzz['inputs']} requests ({fuzz['refused']} refused with 4xx)",
            fuzz["seconds"],
            crashes=len(fuzz["crashes"]) + (not fuzz["server_alive"]),
            hangs=len(fuzz["hangs"]),
        ),
        _row(
            "malformed request bodies → HTTP server",
            f"{bodies['inputs']} requests (deep JSON, wrong shapes, broken multipart)",
            bodies["seconds"],
            crashes=len(bodies["crashes"]) + (not bodies["server_alive"]),
            hangs=len(bodies["hangs"]),
        ),
        _row(
            "SIGKILL during register / remove / save",
            f"{kill['kills']} kills, {kill['saves_acknowledged']} acknowledged saves, "
            f"{kill['leftovers_seen']} mid-save",
            kill["seconds"],
            # A state never acknowledged (e.g. a removed item back) counts as a failure too.
            crashes=len(kill["load_failures"]) + len(kill["unexpected_states"]),
            lost=kill["lost_items"],
        ),
        _row(
            "SIGKILL of `openrecog serve` during HTTP writes",
            f"{server['kills']} kills, {server['items_checked']} acknowledged items checked",
            server["seconds"],
            crashes=server["load_failures"] + server["unexpected"],
            lost=server["lost"],
        ),
        _row(
            "concurrent HTTP clients",
            f"{conc['clients']} clients, {conc['requests']} requests",
            conc["seconds"],
            crashes=conc["error_count"],
            hangs=conc["hung_clients"],
            lost=conc["lost"]
            + conc["lost_on_disk"]
            + conc["unexpected"]
            + conc["unexpected_on_disk"]
            + conc["wrong_labels"],
        ),
        _row(
            "unauthorised writes",
            f"{auth['attempts']} attempts on 3 routes (answered "
            f"{', '.join(str(s) for s in sorted(auth['statuses']))})",
            auth["seconds"],
            unauthorised=auth["accepted"] + bool(auth["gallery_changed"]),
        ),
        _row(
            "soak: register → classify → remove",
            f"{soaked['clients']} clients, {soaked['requests']} requests",
            soaked["seconds"],
            crashes=soaked["error_count"] + (not soaked["server_alive"]),
            rss=f"{soaked['rss_start_mb']:.0f} → {soaked['rss_end_mb']:.0f} MiB "
            f"({soaked['rss_growth_mb']:+.1f})",
        ),
    ]


def markdown(rows: list[dict[str, Any]]) -> str:
    """The table of ``docs/reliability.md``."""
    lines = [
        "| check | tried | duration | crashes | hangs | items lost | unauthorised writes accepted"
        " | server RSS (soak) |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        cells = [
            row["check"],
            row["tried"],
            f"{row['seconds']:.1f} s" if row["seconds"] < 10 else f"{row['seconds']:.0f} s",
            *(str(row[key]) if key in row else "—" for key in ("crashes", "hangs", "lost")),
            str(row.get("unauthorised", "—")),
            row.get("rss", "—"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """Run every check, print the table, write the JSON and the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fuzz", type=int, default=5000, help="mutated inputs, library")
    parser.add_argument("--http-fuzz", type=int, default=3000, help="mutated uploads, HTTP")
    parser.add_argument("--body-fuzz", type=int, default=500, help="mutated request bodies")
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--kill-seconds", type=float, default=300, help="time budget")
    parser.add_argument("--server-kills", type=int, default=10)
    parser.add_argument("--server-kill-seconds", type=float, default=150, help="time budget")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--operations", type=int, default=40, help="requests per client")
    parser.add_argument("--concurrency-seconds", type=float, default=120, help="time budget")
    parser.add_argument("--soak-seconds", type=float, default=180)
    parser.add_argument("--model", default="default", help="the served gallery's model")
    parser.add_argument("--request-timeout", type=float, default=30, help="per request, s")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="openrecog-reliability-") as tmp:
        work = Path(tmp)
        with torch_threads(1):
            print("library fuzz ...", flush=True)
            library = library_fuzz(args.fuzz, args.seed)
        print("kill loop ...", flush=True)
        kills = killing(args.kills, args.seed, args.kill_seconds, work)
        print("HTTP server: fuzz, concurrent clients, unauthorised writes, soak ...", flush=True)
        http = http_phases(args, work)
        print("SIGKILL of the server during writes ...", flush=True)
        server_kills = server_killing(args, work)
    result = {
        "machine": machine_name(),
        "seconds": time.monotonic() - began,
        "args": vars(args),
        "library_fuzz": library,
        "kills": kills,
        "http": http,
        "server_kills": server_kills,
    }
    rows = table_rows(result)
    result["rows"] = rows
    table = markdown(rows)
    print(table)
    if args.no_write:
        return
    JSON_OUT.write_text(json.dumps(result, indent=2, default=str) + "\n", encoding="utf-8")
    threads = os.environ.get("OMP_NUM_THREADS")
    command = " ".join(
        [f"OMP_NUM_THREADS={threads}"] * bool(threads)
        + ["python bench/reliability.py", *sys.argv[1:]]
    )
    caption = (
        f"`{command}` on {machine_name()} ({os.cpu_count()} cores), "
        f"{result['seconds'] / 60:.1f} min in all:"
    )
    write_between_markers(MD_OUT, "reliability", f"{caption}\n\n{table}", title="Reliability")


if __name__ == "__main__":
    main()
