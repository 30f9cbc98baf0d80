"""Serving benchmark: inference engines and HTTP /classify under load (docs/benchmarks/serving.md).

Usage:
    python bench/serve.py                  # everything, about 12 minutes on 2 CPU cores
    python bench/serve.py --skip-http      # engines and accuracy only
    python bench/serve.py --only-http      # the HTTP table only (the others are kept)
    python bench/serve.py --quick          # a smoke run with few repetitions (not recorded)

Three parts, each a table between markers in ``docs/benchmarks/serving.md`` (the prose around
them is kept), all rows in ``docs/benchmarks/serving.json``:

1. ``engines``: latency p50/p95 of the shipped ``default`` model (224 px) at batch 1 and 32
   for eager PyTorch, onnxruntime fp32 and the dynamically quantised int8 files
   (``bench/onnx_latency.py``), with 1 thread and with every core.
2. ``int8``: what dynamic int8 quantisation costs in accuracy: mAP@5 / TPR@FPR=1e-3 on the
   class-disjoint SROIE and Caltech-101 test splits of ``../shared/data`` (where present) for
   onnxruntime fp32, the shipped int8 variant (projection only) and an int8 variant with the
   convolutions quantised too, next to each one's single-image latency.
3. ``http``: ``openrecog serve`` (one uvicorn worker, in a child process) with a 10k-item
   gallery; ``--clients`` concurrent clients post the same JPEG (a 483×640 synthetic
   document, 26 kB) to ``/classify`` in a closed loop for ``--seconds`` each
   (``bench/serve_http.py``); requests/s, p50/p95, CPU time per request of server and clients
   and the latency floor it implies. Rows for the shipped default model and for the
   DocClassifier-sized ``docclassifier_lcnet050`` (LCNet-0.5, 128 px; untrained here, a speed
   reference only), served as ``openrecog serve`` does by default and with the access log off;
   one row of the default model with the 232 kB random-pixel JPEG. Bounded and on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import onnx_latency
import serve_http
import torch
from machine import machine_name
from markdown_table import write_between_markers

from openrecog.data import csv_dataset
from openrecog.eval.metrics import evaluate_embeddings
from openrecog.eval.table import format_table
from openrecog.models import load_artifact, load_model, save_artifact
from openrecog.models.encoder import ImageEncoder
from openrecog.models.onnx_engine import ONNX_FILE, ONNX_INT8_FILE, OnnxEngine, recorded_onnx
from openrecog.models.onnx_export import add_onnx_to_artifact, quantize_int8
from openrecog.storage import sha256_file

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "docs" / "benchmarks"
CACHE = ROOT / "runs" / "bench_cache"
CONV_INT8_FILE = "model.int8-conv.onnx"


def engine_rows(folder: Path, runs: int) -> list[dict]:
    """Part 1: latency of every engine, as ``bench/onnx_latency.py`` measures it."""
    model = load_artifact(folder).eval()
    cl_model = load_artifact(folder).eval().to(memory_format=torch.channels_last)
    size = model.config.image_size
    rows = []
    for threads in sorted({1, len(os.sched_getaffinity(0))}):
        torch.set_num_threads(threads)
        engines = {
            "onnxruntime fp32": OnnxEngine(folder / ONNX_FILE, threads=threads),
            "onnxruntime int8": OnnxEngine(folder / ONNX_INT8_FILE, threads=threads),
        }
        for batch in (1, 32):
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
            x_cl = x.contiguous(memory_format=torch.channels_last)
            x_np = x.numpy()
            candidates = {
                "torch eager": partial(onnx_latency.eager, model, x),
                "torch eager, channels_last": partial(onnx_latency.eager, cl_model, x_cl),
                **{name: partial(engine.run, x_np) for name, engine in engines.items()},
            }
            timings = onnx_latency.time_round_robin(
                candidates, runs if batch == 1 else max(5, runs // 4)
            )
            base = timings["torch eager"][0]
            for name, (p50, p95) in timings.items():
                rows.append(
                    {
                        "engine": name,
                        "threads": threads,
                        "batch": batch,
                        "p50_ms": round(p50, 1),
                        "p95_ms": round(p95, 1),
                        "ms_per_image": round(p50 / batch, 1),
                        "speedup_vs_eager": round(base / p50, 2),
                    }
                )
                print(f"  {name} threads={threads} batch={batch}: p50 {p50:.1f} ms", flush=True)
    return rows


def int8_rows(folder: Path, runs: int, max_images: int | None) -> list[dict]:
    """Part 2: accuracy and latency of fp32 vs the int8 variants on real test splits."""
    conv = folder / CONV_INT8_FILE
    if not conv.exists():
        report = quantize_int8(folder / ONNX_FILE, conv, op_types=("MatMul", "Gemm", "Conv"))
        print(f"  int8 with Conv: {report.quantized_ops} {report.parity.summary()}")
    files = {
        "onnxruntime fp32": folder / ONNX_FILE,
        "onnxruntime int8 (projection)": folder / ONNX_INT8_FILE,
        "onnxruntime int8 (projection + convolutions)": conv,
    }
    model = load_artifact(folder)
    torch_encoder = ImageEncoder(model, device="cpu", engine="torch", batch_size=32)
    sets = [name for name in ("sroie", "caltech101") if (DATA / name / "labels.csv").exists()]
    rows = []
    for name, path in files.items():
        engine = OnnxEngine(path, expected_sha256=sha256_file(path), threads=1)
        x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0)).numpy()
        ((p50, _),) = onnx_latency.time_round_robin({name: partial(engine.run, x)}, runs).values()
        row: dict = {"engine": name, "MB": round(path.stat().st_size / 1e6, 2), "ms_b1_1t": p50}
        torch_encoder.onnx_engine = engine  # same preprocessing, this engine's forward pass
        for data_name in sets:
            dataset = csv_dataset(DATA / data_name, split="test")
            if max_images and len(dataset) > max_images:
                dataset = _every_nth(dataset, max_images)
            start = time.perf_counter()
            embeddings = torch_encoder.encode_dataset(dataset, progress=False)
            metrics = evaluate_embeddings(embeddings, list(dataset.labels))
            row[f"{data_name} map@5"] = round(metrics["map@5"], 3)
            row[f"{data_name} tpr@1e-3"] = round(metrics["tpr@fpr=1e-03"], 3)
            seconds = time.perf_counter() - start
            print(f"  {name} {data_name}: map@5 {metrics['map@5']:.3f} ({seconds:.0f} s)")
        rows.append(row)
    return rows


class _Subset:
    """Every n-th item of a labelled dataset (keeps ``labels`` aligned)."""

    def __init__(self, dataset, indices: list[int]) -> None:
        self.dataset, self.indices = dataset, indices
        self.labels = [dataset.labels[i] for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[self.indices[i]]


def _every_nth(dataset, count: int) -> _Subset:
    return _Subset(dataset, np.linspace(0, len(dataset) - 1, count).astype(int).tolist())


def exported(name: str, folder: Path) -> Path:
    """An artifact of ``name`` with model.onnx and model.int8.onnx (cached)."""
    source = load_model(name)
    if (folder / "config.json").exists() and recorded_onnx(folder, "int8") is not None:
        cached = load_artifact(folder)
        if cached.config == source.config and all(
            torch.equal(a, b)
            for a, b in zip(cached.state_dict().values(), source.state_dict().values(), strict=True)
        ):
            return folder
    save_artifact(
        source, folder, weights_dtype=getattr(source, "artifact_weights_dtype", "float32")
    )
    report = add_onnx_to_artifact(folder, int8=True)
    print(f"exported {name} -> {folder}: {report.fp32.parity.summary()}")
    return folder


def main() -> None:
    """Run the parts asked for and write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--max-images", type=int, default=1000, help="per test split, for int8")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--only-http", action="store_true", help="keep the other tables")
    parser.add_argument("--quick", action="store_true", help="few repetitions, nothing written")
    opts = parser.parse_args()
    if opts.quick:
        opts.runs, opts.seconds, opts.max_images = 5, 3.0, 100

    default = exported("default", CACHE / "serve_default")
    results: dict = {"machine": machine_name(), "load_before": os.getloadavg()[0]}
    if not opts.only_http:
        print("engines:")
        results["engines"] = engine_rows(default, opts.runs)
        print("int8:")
        results["int8"] = int8_rows(default, opts.runs, opts.max_images)
    if not opts.skip_http:
        print("http:")
        results["http"] = http_rows(default, opts)
    if opts.quick:
        print(json.dumps(results, indent=2))
        return
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    results["load_after"] = os.getloadavg()[0]
    # Other work on a shared machine slows every row; say how busy it was.
    machine = (
        f"Measured by `python bench/serve.py` on {results['machine']}; 1-minute load average "
        f"{results['load_before']:.1f} before, {results['load_after']:.1f} after."
    )
    doc = OUT / "serving.md"
    if opts.only_http:  # the other parts keep their rows (and captions) from an earlier run
        earlier = json.loads((OUT / "serving.json").read_text())
        results = {**earlier, "http": results["http"], "http_measured": machine}
    else:
        if opts.skip_http:  # the HTTP table keeps its rows (and caption) from an earlier run
            earlier = json.loads((OUT / "serving.json").read_text())
            results.update({k: earlier[k] for k in ("http", "http_measured") if k in earlier})
        else:
            results["http_measured"] = machine
        write_between_markers(
            doc,
            "engines",
            f"{machine}\n\n{format_table(results['engines'], floatfmt='.1f')}",
            title="Serving",
        )
        write_between_markers(doc, "int8", f"{machine}\n\n{format_table(results['int8'])}")
    (OUT / "serving.json").write_text(json.dumps(results, indent=2) + "\n")
    if "http" in results:
        http = [{k: row.get(k) for k in HTTP_COLUMNS} for row in results["http"]]
        write_between_markers(doc, "http", f"{machine}\n\n{format_table(http, floatfmt='.1f')}")
    print(f"wrote {doc}")


HTTP_COLUMNS = (
    "model",
    "server",
    "image_kb",
    "clients",
    "requests",
    "errors",
    "req_per_s",
    "p50_ms",
    "p95_ms",
    "mean_ms",
    "server_cpu_ms",
    "client_cpu_ms",
    "bound_ms",
)


def http_rows(default: Path, opts: argparse.Namespace) -> list[dict]:
    """``/classify`` under load for each model and server setting (see the docstring)."""
    compact = exported("docclassifier_lcnet050", CACHE / "serve_lcnet050")
    setups = [
        ("default", default, "document", ()),
        ("default", default, "document", ("--no-access-log",)),
        ("default", default, "noise", ("--no-access-log",)),
        ("docclassifier_lcnet050", compact, "document", ("--no-access-log",)),
    ]
    rows = []
    for label, model, image, args in setups:
        for row in serve_http.run(
            str(model), opts.items, opts.clients, opts.seconds, "auto", image, args
        ):
            row["model"] = label
            row["server"] = row["server_args"] or "defaults"
            rows.append(row)
    return rows


if __name__ == "__main__":
    sys.exit(main())
