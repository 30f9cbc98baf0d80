"""CPU latency of the shipped ``default`` model: eager PyTorch vs onnxruntime fp32 and int8.

Usage:
    python bench/onnx_latency.py                 # batch 1 and 32, 1 thread and all threads
    python bench/onnx_latency.py --runs 20 --batch-sizes 1

The model is exported once with ``openrecog export default <cache> --int8-onnx`` (cached in
``runs/bench_cache/onnx_default``; the export also prints its parity numbers). Every engine
gets the same preprocessed float32 batch at the model's image size (224 px); each
configuration runs a few warm-up passes, then ``--runs`` timed ones (a quarter of them at
batch 32, at least 5) with the engines taking turns; the table gives p50 / p95 in
milliseconds and the speed-up of the p50 over eager PyTorch with the same threads and batch.

Engines: ``torch`` (eager, ``torch.inference_mode``, NCHW as ``ImageEncoder`` runs it),
``torch-cl`` (eager with channels_last weights and input: a cheap PyTorch-side speed-up, to
tell how much of the gap is memory layout), ``ort-fp32`` and ``ort-int8`` (``OnnxEngine``:
all graph optimisations, sequential execution, ``threads`` intra-op threads).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from machine import machine_name

from openrecog.eval.table import format_table
from openrecog.models import load_artifact, load_model, save_artifact
from openrecog.models.artifact import read_artifact_config
from openrecog.models.onnx_engine import ONNX_FILE, ONNX_INT8_FILE, OnnxEngine, recorded_onnx
from openrecog.models.onnx_export import add_onnx_to_artifact

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "runs" / "bench_cache" / "onnx_default"


def exported_default(folder: Path) -> Path:
    """An artifact of the shipped ``default`` model with model.onnx and model.int8.onnx."""
    source = load_model("default")
    try:
        config = read_artifact_config(folder)
        fresh = (
            config["model"] == source.config.model_dump(mode="json")
            and recorded_onnx(folder, "int8") is not None
        )
    except ValueError:
        fresh = False
    if not fresh:
        save_artifact(source, folder)
        report = add_onnx_to_artifact(folder, int8=True)
        print(f"exported default -> {folder}")
        print(f"  fp32: {report.fp32.parity.summary()}")
        print(f"  int8 ({report.int8.quantized_ops}): {report.int8.parity.summary()}")
    return folder


def eager(model: torch.nn.Module, images: torch.Tensor) -> None:
    """One eager PyTorch forward pass, as ``ImageEncoder`` runs it."""
    with torch.inference_mode():
        model(images)


def time_round_robin(
    candidates: dict[str, Callable[[], object]], runs: int, warmup: int = 3
) -> dict[str, tuple[float, float]]:
    """p50 and p95 wall time in ms of each candidate, timed in turns.

    Taking turns (one run of each, ``runs`` times) rather than one candidate after the other
    exposes every engine to the same background load on a shared machine.
    """
    for run in candidates.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(runs):
        for name, run in candidates.items():
            start = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - start) * 1000)
    return {
        name: (float(np.percentile(t, 50)), float(np.percentile(t, 95)))
        for name, t in times.items()
    }


def main() -> None:
    """Print the latency table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="timed runs at batch 1")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--threads", type=int, nargs="+", default=None)
    parser.add_argument("--artifact", type=Path, default=CACHE)
    args = parser.parse_args()

    folder = exported_default(args.artifact)
    model = load_artifact(folder).eval()
    size = model.config.image_size
    cl_model = load_artifact(folder).eval().to(memory_format=torch.channels_last)
    all_threads = len(os.sched_getaffinity(0))
    rows = []
    for threads in args.threads or sorted({1, all_threads}):
        torch.set_num_threads(threads)
        engines = {
            "ort-fp32": OnnxEngine(folder / ONNX_FILE, threads=threads),
            "ort-int8": OnnxEngine(folder / ONNX_INT8_FILE, threads=threads),
        }
        for batch in args.batch_sizes:
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
            x_cl = x.contiguous(memory_format=torch.channels_last)
            x_np = x.numpy()
            runs = args.runs if batch == 1 else max(5, args.runs // 4)

            candidates = {
                "torch": partial(eager, model, x),
                "torch-cl": partial(eager, cl_model, x_cl),
                **{name: partial(engine.run, x_np) for name, engine in engines.items()},
            }
            timings = time_round_robin(candidates, runs)
            base = timings["torch"][0]
            for name, (p50, p95) in timings.items():
                rows.append(
                    {
                        "engine": name,
                        "threads": threads,
                        "batch": batch,
                        "p50_ms": p50,
                        "p95_ms": p95,
                        "img/s": batch * 1000 / p50,
                        "speedup": base / p50,
                    }
                )
                print(f"  {name:<9} threads={threads} batch={batch}: p50 {p50:.1f} ms", flush=True)
    print()
    print(f"default model ({size} px) on {machine_name()}, onnxruntime fp32/int8 vs eager torch")
    print(format_table(rows, floatfmt=".1f"))


if __name__ == "__main__":
    main()
