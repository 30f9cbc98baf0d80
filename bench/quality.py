"""Retrieval quality of models on the real class-disjoint test splits in ../shared/data.

Usage:
    python bench/quality.py                      # everything the issue asks for
    python bench/quality.py --models default lite0_gap_imagenet --no-finetune --no-train
    python bench/quality.py --resume --models default@320 --no-finetune --no-train

Rows: the shipped default model (and its 64-d variant), the ImageNet-only GAP baselines,
the default model fine-tuned on each set's train split (``configs/finetune.yaml``, the
"user fine-tunes on their own data" path) and the DocClassifier-like LCNet-0.5 trained by
the default recipe (``configs/default.yaml`` with LCNet-0.5 at 128 px). ``MODEL@SIZE`` runs
a model at another input size (``Embedder.set_image_size``; same weights, gap necks only).
Each test image is queried against all other test images of its set (leave-one-out).
Latency is the median forward time per image on one CPU thread, after warm-up.
Writes docs/benchmarks/quality.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from forward_timing import forward_ms_per_image
from machine import machine_name
from shared_data import SHARED_DATA, dataset_roots

from openrecog.config import load_config
from openrecog.data.datasets import csv_dataset
from openrecog.eval.evaluate import evaluate_model
from openrecog.eval.table import format_table
from openrecog.models import Embedder, load_model
from openrecog.models.artifact import WEIGHTS_FILE, is_artifact
from openrecog.models.registry import SHIPPED_WEIGHTS_DIR
from openrecog.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODELS = ["default", "default_64", "lite0_gap_imagenet", "lite2_gap_imagenet"]
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
    "train_min",
]


def model_size_mb(model: Embedder, name: str) -> float:
    """Size of the weights file as stored (artifact), else fp32 parameter bytes."""
    for path in (Path(name), SHIPPED_WEIGHTS_DIR / name):
        if is_artifact(path):
            return (path / WEIGHTS_FILE).stat().st_size / 1e6
    return sum(p.numel() * p.element_size() for p in model.state_dict().values()) / 1e6


def load_bench_model(spec: str) -> tuple[Embedder, str]:
    """``(model, source)`` for ``NAME`` or ``NAME@SIZE`` (the model run at SIZE px)."""
    name, _, size = spec.partition("@")
    model = load_model(name)
    if size:
        model.set_image_size(int(size))
    return model, name


def latency_ms(model: Embedder, batch: int, repeats: int, warmup: int = 3) -> float:
    """Median forward time per image in ms on one CPU thread, after ``warmup`` passes."""
    return forward_ms_per_image(model, batch, model.config.image_size, repeats, warmup)


def measure(
    label: str, model: Embedder, source: str, datasets: dict[str, Path], repeats: int
) -> list[dict]:
    """Rows of ``model`` on each dataset, with its size and latency."""
    speed = {
        "dim": model.embedding_dim,
        "size_mb": model_size_mb(model, source),
        "ms_b1": latency_ms(model, 1, repeats),
        "ms_b32": latency_ms(model, 32, max(2, repeats // 5)),
    }
    rows = []
    for data_name, root in datasets.items():
        metrics = evaluate_model(model, csv_dataset(root, split="test"), batch_size=32)
        rows.append({"model": label, "data": data_name, **metrics, **speed})
        print(format_table([rows[-1]], columns=COLUMNS), flush=True)
    return rows


def train_run(config: Path, overrides: list[str]) -> tuple[Path, float]:
    """Train like ``openrecog train CONFIG OVERRIDES``; returns the final artifact and minutes."""
    print(f"openrecog train {config} {' '.join(overrides)}", flush=True)
    start = time.perf_counter()
    result = Trainer(load_config(config, overrides)).fit()
    return result.run_dir / "last", (time.perf_counter() - start) / 60


def main() -> None:
    """Measure every row and write docs/benchmarks/quality.{json,md} after each one."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--datasets", nargs="+", default=["sroie", "caltech101", "lfw"])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "bench")
    parser.add_argument("--finetune", default="default", help="model fine-tuned per dataset")
    parser.add_argument("--no-finetune", action="store_true")
    parser.add_argument("--no-train", action="store_true", help="skip the DocClassifier row")
    parser.add_argument(
        "--resume", action="store_true", help="keep rows already in quality.json, measure the rest"
    )
    parser.add_argument("--latency-repeats", type=int, default=20)
    args = parser.parse_args()

    datasets = dataset_roots(parser, args.data, args.datasets)
    report = Report(args.output, machine_name())
    if args.resume:
        report.load()

    for name in args.models:
        todo = {d: r for d, r in datasets.items() if not report.has(name, d)}
        if todo:
            model, source = load_bench_model(name)
            report.add(measure(name, model, source, todo, args.latency_repeats))

    if not args.no_finetune:
        label = f"{args.finetune}+ft"
        for data_name, root in datasets.items():
            if report.has(label, data_name):
                continue
            artifact, minutes = train_run(
                ROOT / "configs" / "finetune.yaml",
                [
                    f"model.init_from={args.finetune}",
                    f"data.root={root}",
                    f"train.name=ft_{data_name}",
                    f"train.output_dir={args.runs}",
                ],
            )
            rows = measure(
                label,
                load_model(artifact),
                str(artifact),
                {data_name: root},
                args.latency_repeats,
            )
            report.add([{**row, "train_min": minutes} for row in rows])

    label = "docclassifier_lcnet050"
    if not args.no_train and not all(report.has(label, d) for d in datasets):
        # The default recipe's data, loss and schedule on DocClassifier's network: LCNet-0.5
        # at 128 px with a squeeze neck (so no taps, which need a gap neck). No frozen trunk,
        # no PCA start and no distillation from its own start: LCNet has no offline ImageNet
        # weights, so there is nothing to keep; it distils from the ImageNet Lite0 instead.
        artifact, minutes = train_run(
            ROOT / "configs" / "default.yaml",
            [
                "model.backbone=lcnet_050",
                "model.pretrained=false",
                "model.image_size=128",
                "model.neck=squeeze",
                "model.taps=[]",
                "train.freeze_backbone_steps=0",
                "train.neck_init_images=0",
                "train.neck_init_whiten=false",
                "distill.teacher=lite0_gap_imagenet",
                "distill.weight=1.0",
                f"train.name={label}",
                f"train.output_dir={args.runs}",
            ],
        )
        rows = measure(label, load_model(artifact), str(artifact), datasets, args.latency_repeats)
        report.add([{**row, "train_min": minutes} for row in rows])
    print(report.table())


class Report:
    """The rows measured so far, rewritten to JSON and Markdown after every addition."""

    def __init__(self, output: Path, machine: str) -> None:
        self.output = output
        self.machine = machine
        self.rows: list[dict] = []

    def load(self) -> None:
        """Take the rows of an earlier (possibly interrupted) run."""
        path = self.output / "quality.json"
        if path.is_file():
            data = json.loads(path.read_text())
            # Files written before rows named their machine: the file's is the best guess.
            self.rows = [{"machine": data.get("machine"), **row} for row in data["rows"]]

    def has(self, model: str, data: str) -> bool:
        """Whether a row for ``model`` on ``data`` exists."""
        return any(r["model"] == model and r["data"] == data for r in self.rows)

    def add(self, rows: list[dict]) -> None:
        """Append rows (measured on this machine) and rewrite both files."""
        self.rows += [{**row, "machine": self.machine} for row in rows]
        self.output.mkdir(parents=True, exist_ok=True)
        (self.output / "quality.json").write_text(
            json.dumps({"machine": self.machine, "rows": self.rows}, indent=2, default=float)
        )
        (self.output / "quality.md").write_text(
            f"{self.table()}\n\nMeasured with `python bench/quality.py` on "
            f"{self.machines()}. Latencies compare only between rows of one machine. "
            "Test splits are class-disjoint from the train splits; every test image is "
            "queried against the other test images of its set. `size_mb`: weights file as "
            "stored. `ms_b1`/`ms_b32`: median forward time per image on one CPU thread at the "
            "model's input size. `train_min`: wall-clock minutes of the training run of that "
            "row (`+ft`: fine-tuning the default model on the set's train split with "
            "`configs/finetune.yaml`; `docclassifier_lcnet050`: `configs/default.yaml` on "
            "LCNet-0.5 at 128 px from random initialisation). `MODEL@SIZE`: that model's weights "
            "run at SIZE × SIZE px (`Embedder.set_image_size`).\n"
        )

    def machines(self) -> str:
        """Which machine measured which models (resumed runs may span several)."""
        models: dict[str, list[str]] = {}
        for row in self.rows:
            names = models.setdefault(row.get("machine") or "an unrecorded machine", [])
            if row["model"] not in names:
                names.append(row["model"])
        return "; ".join(
            f"{machine} ({', '.join(f'`{m}`' for m in names)})" for machine, names in models.items()
        )

    def table(self) -> str:
        """The Markdown table of all rows."""
        return format_table(
            self.rows, columns=COLUMNS, title="Leave-one-out retrieval on test splits"
        )


if __name__ == "__main__":
    main()
