"""Compact CNNs under a 5M-parameter budget (the CP2 report) against timm baselines.

Usage:
    python bench/compact_cnn.py                          # the table in compact_cnn.md (CPU)
    python bench/compact_cnn.py --steps 3000 --image-size 128 --batch-size 64   # a GPU run
    python bench/compact_cnn.py --rows cp2_dense lite0_imagenet --resume

Data: the 10 Caltech-101 classes with the most images in ../shared/data/caltech101 (both of
its class-disjoint splits pooled, since this is closed-set classification), split per class
into train / val by a seeded shuffle (``--val-fraction`` of each class to val). The split is
written as runs/compact_cnn/data/labels.csv with absolute paths: no image is copied.

Every row trains ``configs/cp2_classify.yaml`` — the CP2 recipe: its augmentation list,
label-smoothed cross-entropy with the report's classifier head, staged fine-tuning with falling
learning rates and MixUp alpha 0.1 → 0.2 → 0.5 — for the same number of steps at the same
image size and batch size; only the backbone changes. The timm baselines are built with
``pretrained=False`` except the EfficientNet-Lite0 fine-tune (offline ImageNet weights).
Columns: parameters the classifier uses (those that get a gradient; timm's MobileNetV3 and
LCNet keep a ``conv_head`` the feature map never reaches), multiply-accumulates of one image,
top-1 on val, median single-image CPU latency on one thread, training minutes.
Writes docs/benchmarks/compact_cnn.json and the table in docs/benchmarks/compact_cnn.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch
from forward_timing import forward_ms_per_image
from machine import machine_name
from markdown_table import write_between_markers

from openrecog.config import load_config
from openrecog.eval.table import format_table
from openrecog.models.budget import count_macs
from openrecog.models.classifier import Classifier, load_classifier
from openrecog.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "caltech101"
RUNS = ROOT / "runs" / "compact_cnn"
OUT = ROOT / "docs" / "benchmarks"
CONFIG = ROOT / "configs" / "cp2_classify.yaml"
COLUMNS = ["model", "kind", "params_M", "MMACs", "top1", "val_loss", "ms_b1_1t", "train_min"]


@dataclass(frozen=True)
class Row:
    """One model of the comparison: overrides of the CP2 recipe's model section."""

    name: str
    kind: str
    overrides: list[str] = field(default_factory=list)


def _scratch(backbone: str, *extra: str) -> list[str]:
    return [f"model.backbone={backbone}", "model.pretrained=false", *extra]


ROWS: list[Row] = [
    Row("cp2_deep", "CP2, from scratch", _scratch("cp2_deep")),
    Row("cp2_dropout", "CP2, from scratch", _scratch("cp2_dropout")),
    Row("cp2_concat", "CP2, from scratch", _scratch("cp2_concat")),
    Row("cp2_multilevel", "CP2, from scratch", _scratch("cp2_multilevel")),
    Row("cp2_dense", "CP2, from scratch", _scratch("cp2_dense")),
    Row(
        "cp2_dense_w32",
        "CP2, from scratch",
        _scratch("cp2_dense", "model.backbone_kwargs={width: 32}"),
    ),
    Row(
        "resnet18_w0.625",
        "timm, from scratch",
        _scratch("resnet18", "model.backbone_kwargs={channels: [40, 80, 160, 320]}"),
    ),
    Row("mobilenetv3_large_100", "timm, from scratch", _scratch("mobilenetv3_large_100")),
    Row("mobilenetv3_small_100", "timm, from scratch", _scratch("mobilenetv3_small_100")),
    Row("lcnet_150", "timm, from scratch", _scratch("lcnet_150")),
    Row("lcnet_100", "timm, from scratch", _scratch("lcnet_100")),
    Row("lite0_scratch", "timm, from scratch", _scratch("tf_efficientnet_lite0")),
    Row(
        "lite0_imagenet",
        "ImageNet weights, fine-tuned",
        ["model.backbone=tf_efficientnet_lite0", "model.pretrained=true"],
    ),
]
# What a default run trains: the four CP2 steps of the issue and baselines of 1-5M.
DEFAULT_ROWS = [
    "cp2_deep",
    "cp2_concat",
    "cp2_multilevel",
    "cp2_dense",
    "resnet18_w0.625",
    "mobilenetv3_large_100",
    "lcnet_150",
    "lite0_scratch",
    "lite0_imagenet",
]


def write_split(data: Path, out: Path, classes: int, val_fraction: float, seed: int) -> dict:
    """Write ``out/labels.csv`` (absolute paths, train/val) for the ``classes`` largest classes.

    Ties in class size are broken by name; each class's images are shuffled with
    ``random.Random(seed)`` and the first ``round(n × val_fraction)`` go to val.
    """
    with open(data / "labels.csv", encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    counts = Counter(r["label"] for r in rows)
    chosen = sorted(counts, key=lambda c: (-counts[c], c))[:classes]
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    split_rows, summary = [], {}
    for label in sorted(chosen):
        paths = sorted(str((data / r["path"]).resolve()) for r in rows if r["label"] == label)
        rng.shuffle(paths)
        n_val = round(len(paths) * val_fraction)
        summary[label] = {"train": len(paths) - n_val, "val": n_val}
        split_rows += [{"path": p, "label": label, "split": "val"} for p in paths[:n_val]]
        split_rows += [{"path": p, "label": label, "split": "train"} for p in paths[n_val:]]
    with open(out / "labels.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["path", "label", "split"])
        writer.writeheader()
        writer.writerows(split_rows)
    return summary


def used_parameters(classifier: Classifier, image_size: int) -> int:
    """Parameters that receive a gradient from a forward/backward pass of one batch."""
    classifier.train()
    classifier.zero_grad(set_to_none=True)
    classifier(torch.randn(2, 3, image_size, image_size)).sum().backward()
    used = sum(p.numel() for p in classifier.parameters() if p.grad is not None)
    classifier.zero_grad(set_to_none=True)
    return used


def latency_ms(model: torch.nn.Module, image_size: int, repeats: int, warmup: int = 5) -> float:
    """Median single-image forward time in ms on one CPU thread, after ``warmup`` passes."""
    return forward_ms_per_image(model, 1, image_size, repeats, warmup)


def recipe_overrides(args: argparse.Namespace, split_dir: Path) -> list[str]:
    """The CP2 recipe at this run's budget: stages of 60 / 25 / 15 % of ``--steps``."""
    first, second = round(args.steps * 0.6), round(args.steps * 0.25)
    third = args.steps - first - second
    stages = (
        f"[{{steps: {first}, lr: {args.lr}, mixup_alpha: 0.1}}, "
        f"{{steps: {second}, lr: {args.lr / 4}, mixup_alpha: 0.2}}, "
        f"{{steps: {third}, lr: {args.lr / 20}, mixup_alpha: 0.5}}]"
    )
    return [
        f"model.image_size={args.image_size}",
        f"data.root={split_dir}",
        f"eval.root={split_dir}",
        "eval.every=null",
        f"train.batch_size={args.batch_size}",
        f"train.warmup_steps={max(1, first // 10)}",
        f"train.stages={stages}",
        f"train.threads={args.threads}",
        f"train.device={args.device}",
        f"train.output_dir={RUNS}",
        f"train.checkpoint_every={args.steps}",
        "train.progress=false",
        "train.log_every=20",
    ]


def run_row(row: Row, args: argparse.Namespace, split_dir: Path) -> dict:
    """Train one row by the shared recipe and measure its classifier."""
    overrides = recipe_overrides(args, split_dir) + row.overrides + [f"train.name={row.name}"]
    print(f"[{row.name}] openrecog train {CONFIG.relative_to(ROOT)} {' '.join(overrides)}")
    start = time.perf_counter()
    result = Trainer(load_config(CONFIG, overrides)).fit()
    minutes = (time.perf_counter() - start) / 60
    classifier = load_classifier(result.run_dir / "last")
    return {
        "model": row.name,
        "kind": row.kind,
        "params_M": used_parameters(classifier, args.image_size) / 1e6,
        "MMACs": count_macs(classifier, args.image_size) / 1e6,
        "top1": result.final_metrics["top1"],
        "val_loss": result.final_metrics["loss"],
        "ms_b1_1t": latency_ms(classifier, args.image_size, args.latency_repeats),
        "train_min": minutes,
        "overrides": row.overrides,
    }


def main() -> None:
    """Train and measure every row, rewriting the JSON and the Markdown table after each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=DEFAULT_ROWS, choices=[r.name for r in ROWS])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--val-fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=50, help="training steps of every row")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="first stage's learning rate")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--latency-repeats", type=int, default=30)
    parser.add_argument("--resume", action="store_true", help="keep finished rows of the JSON")
    parser.add_argument("--output", type=Path, default=OUT)
    args = parser.parse_args()
    if not (args.data / "labels.csv").is_file():
        parser.error(f"{args.data}/labels.csv not found (see ../shared/data/README.md)")

    split_dir = RUNS / "data"
    split = write_split(args.data, split_dir, args.classes, args.val_fraction, args.seed)
    settings = {
        key: getattr(args, key)
        for key in ("steps", "image_size", "batch_size", "lr", "threads", "val_fraction", "seed")
    }
    json_path = args.output / "compact_cnn.json"
    rows: list[dict] = []
    if args.resume and json_path.is_file():
        previous = json.loads(json_path.read_text())
        if previous.get("settings") == settings:
            rows = [r for r in previous["rows"] if r["model"] in args.rows]
    by_name = {r.name: r for r in ROWS}
    for name in args.rows:
        if any(r["model"] == name for r in rows):
            continue
        rows.append(run_row(by_name[name], args, split_dir))
        print(format_table([rows[-1]], columns=COLUMNS), flush=True)
        write_outputs(args.output, rows, settings, split)
    print(format_table(rows, columns=COLUMNS))


def write_outputs(output: Path, rows: list[dict], settings: dict, split: dict) -> None:
    """Rewrite compact_cnn.json and the table between the markers of compact_cnn.md."""
    output.mkdir(parents=True, exist_ok=True)
    order = [r.name for r in ROWS]
    rows = sorted(rows, key=lambda r: order.index(r["model"]))  # table order, not run order
    machine = machine_name()
    payload = {"machine": machine, "settings": settings, "split": split, "rows": rows}
    (output / "compact_cnn.json").write_text(json.dumps(payload, indent=2))
    table = format_table(rows, columns=COLUMNS)
    images = {k: sum(v[k] for v in split.values()) for k in ("train", "val")}
    caption = (
        f"{len(split)} classes, {images['train']} train / {images['val']} val images; "
        f"{settings['steps']} steps of batch {settings['batch_size']} at "
        f"{settings['image_size']} px for every row. Measured by `python bench/compact_cnn.py` "
        f"on {machine}."
    )
    write_between_markers(
        output / "compact_cnn.md", "compact_cnn", f"{table}\n\n{caption}", title="Compact CNNs"
    )


if __name__ == "__main__":
    main()
