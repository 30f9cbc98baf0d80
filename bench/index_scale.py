"""Gallery indexes at scale: build time, size, queries/s and recall against exact search.

Usage:
    python bench/index_scale.py                        # 1M synthetic + real embeddings
    python bench/index_scale.py --n 100000 --galleries synthetic --out /tmp/x  # a quick look
    python bench/index_scale.py --galleries real       # redo one gallery, keep the other
    python bench/index_scale.py --pg-n 1000000         # pgvector on the full million too

Galleries:
* ``synthetic``: ``--n`` (1M) × 256-d L2-normalised vectors in 20k clusters on a random
  32-d subspace plus 2 % isotropic noise (clustered and of low intrinsic dimension like
  learned embeddings; uniform noise would make every ANN index look worse than it will be
  in use).
* ``real``: the shipped ``default`` model's 256-d embeddings of every image in
  ``../shared/data`` (SROIE, Caltech-101, LFW; cached in ``runs/bench_cache``).

For each gallery 1,000 held-out queries (real: 500) are searched with every backend: exact
FAISS (``Flat``), HNSW (``HNSW32``, efSearch 64 and 128), IVF-PQ (``IVF<nlist>,PQ32``, nprobe
16 and 64; nlist ≈ 4·√N, at most N/39) and PostgreSQL + pgvector (HNSW m=16, ef_construction=64,
ef_search 100; on the first ``--pg-n`` vectors when that is smaller, since its build is
single-threaded SQL). recall@1 is the share of queries whose top hit is the exact top hit,
recall@10 the mean overlap of the top 10 with the exact top 10. Size is the serialised
index (FAISS) or the table + index on disk (PostgreSQL). queries/s are measured at batch 1
(200 queries one by one) and batch 64.

Writes docs/benchmarks/index_scale.json and the table between the ``index-scale`` markers
in docs/benchmarks/scale.md.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from machine import machine_name
from markdown_table import write_between_markers

from openrecog.eval.table import format_table
from openrecog.index import FlatIndex, create_index

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "runs" / "bench_cache"
SHARED = ROOT.parent / "shared" / "data"
COLUMNS = [
    "gallery",
    "n",
    "backend",
    "search",
    "build_s",
    "size_mb",
    "qps_b1",
    "qps_b64",
    "recall@1",
    "recall@10",
]


def clustered(n: int, dim: int, centres: int, seed: int, latent: int = 32) -> np.ndarray:
    """``n`` unit vectors in clusters on a ``latent``-dimensional subspace, plus a little noise.

    Learned embeddings have a low intrinsic dimension and form clusters; isotropic noise in
    all ``dim`` directions would instead make every point nearly equidistant from every other
    (the worst case of every ANN index, and unlike any real gallery).
    """
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.standard_normal((dim, latent)))[0].T.astype(np.float32)
    middle = rng.standard_normal((centres, latent)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        stop = min(n, start + 100_000)
        which = rng.integers(0, centres, stop - start)
        spread = rng.standard_normal((stop - start, latent)).astype(np.float32) * 0.3
        noise = rng.standard_normal((stop - start, dim)).astype(np.float32) * 0.02
        out[start:stop] = (middle[which] + spread) @ basis + noise
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def real_embeddings() -> np.ndarray:
    """The default model's embeddings of every image in ../shared/data (cached)."""
    cache = CACHE / "real_embeddings_default.npy"
    if cache.is_file():
        return np.load(cache)
    from openrecog.data.datasets import csv_dataset
    from openrecog.models import load_model
    from openrecog.models.encoder import ImageEncoder

    encoder = ImageEncoder(load_model("default"), batch_size=32, device="cpu")
    parts = []
    for name in ("sroie", "caltech101", "lfw"):
        dataset = csv_dataset(SHARED / name, split=None)
        parts.append(encoder.encode_dataset(dataset, progress=True))
    vectors = np.concatenate(parts).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(cache, vectors)
    return vectors


def timed(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes."""
    tick = time.perf_counter()
    fn()
    return time.perf_counter() - tick


def qps(search: Callable[[np.ndarray, int], object], queries: np.ndarray) -> tuple[float, float]:
    """Queries per second at batch 1 (200 queries) and batch 64 (all queries)."""
    single = queries[:200]
    t1 = timed(lambda: [search(q[None], 10) for q in single])
    t64 = timed(lambda: [search(queries[i : i + 64], 10) for i in range(0, len(queries), 64)])
    return len(single) / t1, len(queries) / t64


def recall(ids: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    """recall@1 and recall@10 of ``ids`` against the exact top-10 ``exact``."""
    at1 = float(np.mean(ids[:, 0] == exact[:, 0]))
    at10 = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact, strict=True)]))
    return at1, at10


def faiss_rows(
    gallery: str,
    vectors: np.ndarray,
    queries: np.ndarray,
    exact: np.ndarray,
    specs: list[tuple[str, str, list[tuple[str, int]]]],
) -> list[dict]:
    """Build each FAISS-backed index once and measure every search setting of it."""
    rows = []
    ids = np.arange(len(vectors), dtype=np.int64)
    for spec, label, settings in specs:
        index = create_index(spec, vectors.shape[1])
        build = timed(lambda index=index: index.add(vectors, ids))
        size = len(index.to_bytes()) / 2**20 if not isinstance(index, FlatIndex) else None
        if size is None:
            size = vectors.nbytes / 2**20
        for name, value in settings or [("", None)]:
            if name:
                setattr(index, name, value)
            b1, b64 = qps(index.search, queries)
            r1, r10 = recall(index.search(queries, 10)[1], exact)
            search = f"{name}={value}" if name else "exact"
            rows.append(
                dict(
                    gallery=gallery,
                    n=len(vectors),
                    backend=label,
                    search=search,
                    build_s=build,
                    size_mb=size,
                    qps_b1=b1,
                    qps_b64=b64,
                    **{"recall@1": r1, "recall@10": r10},
                )
            )
            print(format_table([rows[-1]], columns=COLUMNS), flush=True)
        del index
    return rows


def pgvector_row(gallery: str, vectors: np.ndarray, queries: np.ndarray, data_dir: Path) -> dict:
    """Load ``vectors`` into PostgreSQL + pgvector and measure it against its own exact top-10."""
    from openrecog.index.pgserver import start_local_postgres
    from openrecog.index.pgvector import PgVectorIndex

    uri = start_local_postgres(data_dir)
    table = f"bench_{gallery}_{len(vectors)}"
    index = PgVectorIndex(uri, vectors.shape[1], table=table)
    index.reset()
    ids = np.arange(len(vectors), dtype=np.int64)
    build = timed(lambda: index.add(vectors, ids))
    exact = FlatIndex(vectors.shape[1])
    exact.add(vectors, ids)
    truth = exact.search(queries, 10)[1]
    b1, b64 = qps(index.search, queries)
    r1, r10 = recall(index.search(queries, 10)[1], truth)
    size = index.disk_bytes() / 2**20
    index.reset()
    index.close()
    row = dict(
        gallery=gallery,
        n=len(vectors),
        backend="pgvector HNSW16",
        search="ef_search=100",
        build_s=build,
        size_mb=size,
        qps_b1=b1,
        qps_b64=b64,
        **{"recall@1": r1, "recall@10": r10},
    )
    print(format_table([row], columns=COLUMNS), flush=True)
    return row


def bench_gallery(name: str, vectors: np.ndarray, queries: np.ndarray, opts) -> list[dict]:
    """Every backend on one gallery."""
    n = len(vectors)
    # FAISS's rule of thumb (4·√N lists), but no more than N/39 so that the gallery itself
    # is enough to train on (39 points per list): a smaller gallery would stay exact.
    nlist = 2 ** min(round(math.log2(4 * math.sqrt(n))), math.floor(math.log2(n / 39)))
    exact_index = FlatIndex(vectors.shape[1])
    exact_index.add(vectors, np.arange(n, dtype=np.int64))
    exact = exact_index.search(queries, 10)[1]
    del exact_index
    specs = [
        ("Flat", "FAISS Flat", []),
        ("HNSW32", "FAISS HNSW32", [("ef_search", 64), ("ef_search", 128)]),
        (f"IVF{nlist},PQ32", f"FAISS IVF{nlist},PQ32", [("nprobe", 16), ("nprobe", 64)]),
    ]
    rows = faiss_rows(name, vectors, queries, exact, specs)
    if not opts.no_pg:
        pg_n = min(n, opts.pg_n)
        with tempfile.TemporaryDirectory(prefix="pgbench.") as tmp:
            rows.append(pgvector_row(name, vectors[:pg_n], queries, Path(tmp) / "pg"))
    return rows


def main() -> None:
    """Run the galleries and write the JSON and the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--pg-n", type=int, default=100_000, help="vectors loaded in pgvector")
    parser.add_argument("--no-pg", action="store_true")
    parser.add_argument(
        "--galleries",
        nargs="+",
        default=["synthetic", "real"],
        choices=["synthetic", "real"],
        help="galleries to (re)measure; rows of the others are kept from the JSON",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    opts = parser.parse_args()
    json_path = opts.out / "index_scale.json"
    previous = json.loads(json_path.read_text())["rows"] if json_path.exists() else []
    rows = [row for row in previous if row["gallery"] not in opts.galleries]
    if "synthetic" in opts.galleries:
        data = clustered(opts.n + 1000, opts.dim, centres=20_000, seed=0)
        rows += bench_gallery("synthetic", data[:-1000], data[-1000:], opts)
        del data
    if "real" in opts.galleries:
        real = real_embeddings()
        rng = np.random.default_rng(0)
        order = rng.permutation(len(real))
        rows += bench_gallery("real", real[order[500:]], real[order[:500]], opts)
    machine = machine_name()
    opts.out.mkdir(parents=True, exist_ok=True)
    payload = {
        "machine": machine,
        "settings": {k: str(v) for k, v in vars(opts).items()},
        "rows": rows,
    }
    json_path.write_text(json.dumps(payload, indent=2))
    caption = (
        f"Measured by `python bench/index_scale.py` on {machine}. Recall is against exact "
        "search over the same vectors; pgvector rows use the first "
        f"{opts.pg_n:,} vectors of a gallery when it is larger (see `n`)."
    )
    table = caption + "\n\n" + format_table(rows, columns=COLUMNS, floatfmt=".3g")
    write_between_markers(opts.out / "scale.md", "index-scale", table, title="Scale")
    print(table)


if __name__ == "__main__":
    main()
