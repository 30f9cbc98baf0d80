"""Retrieval quality of models on the real class-disjoint test splits in ../shared/data.

Usage:
    python bench/quality.py [--models lite0_gap_imagenet lite2_gap_imagenet runs/x/best]
                            [--datasets sroie caltech101 lfw] [--data ../shared/data]

Writes docs/benchmarks/quality.json and docs/benchmarks/quality.md. Each test image is queried
against all other test images (leave-one-out); latency is measured on one CPU thread.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from openrecog.data.datasets import csv_dataset
from openrecog.eval.evaluate import evaluate_model
from openrecog.eval.table import format_table
from openrecog.models import load_model
from openrecog.models.artifact import WEIGHTS_FILE, is_artifact

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = [
    "model",
    "data",
    "p@1",
    "map@5",
    "mp@5",
    "recall@1",
    "recall@5",
    "tpr@fpr=1e-03",
    "tpr@fpr=1e-04",
    "auroc",
    "dim",
    "size_mb",
    "ms_b1",
    "ms_b32",
]


def model_size_mb(model, name: str) -> float:
    """Size of the weights file if the model is an artifact, else fp32 parameter bytes."""
    path = Path(name)
    if is_artifact(path):
        return (path / WEIGHTS_FILE).stat().st_size / 1e6
    return sum(p.numel() * p.element_size() for p in model.state_dict().values()) / 1e6


@torch.inference_mode()
def latency_ms(model, batch: int, repeats: int = 10) -> float:
    """Median forward time per image in ms on one CPU thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        size = model.config.image_size
        x = torch.randn(batch, 3, size, size)
        model.eval()
        model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) / batch * 1000)
        return statistics.median(times)
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lite0_gap_imagenet", "lite2_gap_imagenet"])
    parser.add_argument("--datasets", nargs="+", default=["sroie", "caltech101", "lfw"])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--latency-repeats", type=int, default=10)
    args = parser.parse_args()

    rows = []
    for name in args.models:
        model = load_model(name)
        speed = {
            "dim": model.embedding_dim,
            "size_mb": model_size_mb(model, name),
            "ms_b1": latency_ms(model, 1, args.latency_repeats),
            "ms_b32": latency_ms(model, 32, max(2, args.latency_repeats // 5)),
        }
        for data_name in args.datasets:
            dataset = csv_dataset(args.data / data_name, split="test")
            metrics = evaluate_model(model, dataset, batch_size=32, progress=True)
            rows.append({"model": name, "data": data_name, **metrics, **speed})
            print(format_table([rows[-1]], columns=COLUMNS))

    machine = (
        f"{platform.machine()}, {torch.get_num_threads()} CPU threads, torch {torch.__version__}"
    )
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "quality.json").write_text(
        json.dumps({"machine": machine, "rows": rows}, indent=2, default=float)
    )
    table = format_table(rows, columns=COLUMNS, title="Leave-one-out retrieval on test splits")
    (args.output / "quality.md").write_text(
        f"{table}\n\nMeasured with `python bench/quality.py` on {machine}. Latency: median "
        "forward time per image on one CPU thread at the model's input size.\n"
    )
    print(table)


if __name__ == "__main__":
    main()
