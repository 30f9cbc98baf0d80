"""Ablation of the training recipes: one switch toggled per row against a fixed base recipe.

Usage:
    python bench/ablate.py                         # the table in docs/benchmarks/ablations.md
    python bench/ablate.py --seeds 1 --resume      # seed 1 for every row, keep finished runs
    python bench/ablate.py --rows base neck_flatten --data sroie

Every row trains ``configs/ablate.yaml`` plus the row's overrides on the train split of
``../shared/data/<set>`` (same steps, data and seed for every row) and is scored on the
class-disjoint test split, each test image queried against all others. Caltech-101's test
split is capped at 20 images per class (1020 images) to keep one row under two minutes on
2 CPU cores. Rows marked *post-hoc* (TTA, PCA, ensemble) reuse the base run's model.
Each run is a child process, so its peak memory (max RSS, or CUDA peak) is its own.
Writes docs/benchmarks/ablations.json and the table in docs/benchmarks/ablations.md;
runs live in runs/ablate/.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from machine import machine_name
from markdown_table import write_between_markers

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RUNS = ROOT / "runs" / "ablate"
OUT = ROOT / "docs" / "benchmarks"
BASE_CONFIG = ROOT / "configs" / "ablate.yaml"
CALTECH_TEST_PER_CLASS = 20


@dataclass(frozen=True)
class Row:
    """One ablation row: overrides of the base config, or a post-hoc step on the base model."""

    name: str
    group: str
    what: str
    overrides: list[str] = field(default_factory=list)
    post: str | None = None  # imagenet | eval160 | tta_flip | tta_flip_crops | pca64 | ensemble2


LITE2 = "lite2_gap_imagenet"
ROWS: list[Row] = [
    Row("base", "base", "GAP neck, LN→BN, CosFace s32 m0.3, full FC, joint training"),
    Row(
        "imagenet_only",
        "base",
        "no training: ImageNet Lite0 GAP features (1280-d) at the same 128 px",
        post="imagenet",
    ),
    Row(
        "neck_flatten",
        "neck",
        "flatten neck (random-init Linear)",
        ["model.neck=flatten", "train.neck_init_images=0"],
    ),
    Row(
        "neck_squeeze",
        "neck",
        "squeeze neck: 1×1 conv to C/4, flatten (random init)",
        ["model.neck=squeeze", "train.neck_init_images=0"],
    ),
    Row(
        "gap_random_init",
        "neck",
        "GAP neck with a random-init Linear (no PCA start)",
        ["train.neck_init_images=0"],
    ),
    Row("norm_none", "norm", "no embedding norm", ["model.norm=none"]),
    Row("norm_bn", "norm", "BatchNorm only", ["model.norm=bn"]),
    Row("norm_ln", "norm", "LayerNorm only", ["model.norm=ln"]),
    Row(
        "loss_arcface",
        "loss",
        "ArcFace s30 m0.5 (GUIE)",
        ["loss.name=arcface", "loss.s=30", "loss.m=0.5"],
    ),
    Row(
        "loss_softmax", "loss", "plain softmax", ["loss.name=softmax", "loss.s=null", "loss.m=null"]
    ),
    Row("cosface_pfc03", "loss", "CosFace + PartialFC 0.3", ["loss.sample_rate=0.3"]),
    Row(
        "arcface_pfc03",
        "loss",
        "ArcFace s30 m0.5 + PartialFC 0.3",
        ["loss.name=arcface", "loss.s=30", "loss.m=0.5", "loss.sample_rate=0.3"],
    ),
    Row(
        "matmul_medium",
        "precision",
        "float32_matmul_precision=medium",
        ["train.matmul_precision=medium"],
    ),
    Row("autocast_bf16", "precision", "bf16 autocast", ["train.autocast=bf16"]),
    Row(
        "distill_cosine",
        "distillation",
        "feature distillation, Lite2 teacher, cosine, w5",
        [f"distill.teacher={LITE2}", "distill.kind=cosine", "distill.weight=5"],
    ),
    Row(
        "distill_mse",
        "distillation",
        "feature distillation, Lite2 teacher, MSE, w5",
        [f"distill.teacher={LITE2}", "distill.kind=mse", "distill.weight=5"],
    ),
    Row(
        "distill_kl",
        "distillation",
        "logit distillation (KL, T1, α5) from the Lite2 ImageNet classifier",
        ["distill.teacher=tf_efficientnet_lite2", "distill.kind=kl", "distill.weight=5"],
    ),
    Row("lp_ft", "schedule", "LP-FT: 12 head-only steps first", ["train.freeze_backbone_steps=12"]),
    Row(
        "alternating",
        "schedule",
        "alternating: 8 head-only / 8 backbone-only (lr/10) steps",
        ["train.alternate_steps=8"],
    ),
    Row("layer_decay", "schedule", "layer-wise lr decay 0.7", ["train.layer_decay=0.7"]),
    Row(
        "dynamic_margin",
        "loss",
        "dynamic margin 0.1 → 0.3 (+0.05 per 8 steps)",
        ["loss.margin_start=0.1", "loss.margin_step=0.05", "loss.margin_every=8"],
    ),
    Row(
        "class_natural",
        "balancing",
        "classes drawn by frequency (power 1) instead of uniformly",
        ["data.class_sampling_power=1.0"],
    ),
    Row(
        "class_max10", "balancing", "at most 10 images per class", ["data.max_images_per_class=10"]
    ),
    Row("class_min2", "balancing", "drop classes with < 2 images", ["data.min_images_per_class=2"]),
    Row(
        "multires",
        "resolution",
        "28 steps at 128 px, then 12 at 160 px (eval at 160)",
        ["train.max_steps=null", "train.stages=[{steps: 28}, {steps: 12, image_size: 160}]"],
    ),
    Row(
        "base_eval160",
        "resolution",
        "base model evaluated at 160 px (post-hoc): separates the multires fine-tune "
        "from the larger test size",
        post="eval160",
    ),
    Row("tta_flip", "tta", "TTA: + horizontal flip (post-hoc)", post="tta_flip"),
    Row("tta_flip_crops", "tta", "TTA: flip + 5 zoomed crops (post-hoc)", post="tta_flip_crops"),
    Row("pca64", "pca", "PCA 256→64 fitted on train embeddings (post-hoc)", post="pca64"),
    Row("ensemble2", "ensemble", "base ⊕ base(seed+100), PCA 512→256 (post-hoc)", post="ensemble2"),
    Row(
        "head_mlp64",
        "head",
        "GUIE head FC(1024)→dropout 0.2→FC(64)",
        [
            "model.projection=mlp",
            "model.embedding_dim=64",
            "model.dropout=0.2",
            "train.neck_init_images=0",
        ],
    ),
    Row(
        "head_bn_linear",
        "head",
        "GUIE head BN(affine=False)→Linear",
        ["model.projection=bn_linear", "train.neck_init_images=0"],
    ),
    Row(
        "instance_k4",
        "data",
        "instance-as-class, K=4 views (labels unused)",
        ["data.instance_as_class=true", "data.views_per_instance=4"],
    ),
    Row("mixup", "usi", "MixUp α0.8", ["train.mixup_alpha=0.8"]),
    Row("cutmix", "usi", "CutMix α1.0", ["train.cutmix_alpha=1.0"]),
    Row("ema", "usi", "EMA of weights (0.9997, timm warmup)", ["train.ema_decay=0.9997"]),
    Row("onecycle", "usi", "one-cycle schedule", ["train.schedule=onecycle"]),
    Row(
        "usi",
        "usi",
        "USI preset: KL-KD α5 + MixUp/CutMix + EMA + one-cycle (lr 2e-3, wd 2e-2)",
        [
            "distill.teacher=tf_efficientnet_lite2",
            "distill.kind=kl",
            "distill.weight=5",
            "train.mixup_alpha=0.8",
            "train.cutmix_alpha=1.0",
            "train.ema_decay=0.9997",
            "train.schedule=onecycle",
            "train.lr=0.002",
            "train.weight_decay=0.02",
        ],
    ),
    Row(
        "cp2_staged",
        "cp2",
        "CP2: 3 stages, lr 2e-4 → 6e-5 → 2e-5, MixUp 0.1 → 0.3 → 0.5",
        [
            "train.max_steps=null",
            "train.stages=[{steps: 16, mixup_alpha: 0.1},"
            " {steps: 12, lr: 6.0e-5, mixup_alpha: 0.3},"
            " {steps: 12, lr: 2.0e-5, mixup_alpha: 0.5}]",
        ],
    ),
]
ROWS_BY_NAME = {row.name: row for row in ROWS}
DATASETS = ("sroie", "caltech101")
# Rows the conclusions lean on, run with a second seed (SROIE's 188 test images are noisy).
SECOND_SEED_ROWS = {
    "sroie": {"base", "lp_ft", "multires", "cutmix", "ema", "onecycle"},
    "caltech101": {"base", "multires", "onecycle"},
}


# ---------------------------------------------------------------- one run (child process)
def test_split(data: str):
    """The scored split of ``data`` (Caltech capped per class, see module docstring)."""
    from openrecog.data.datasets import csv_dataset

    dataset = csv_dataset(DATA / data, split="test")
    if data == "caltech101":
        dataset = dataset.limit_images_per_class(CALTECH_TEST_PER_CLASS, seed=0)
    return dataset


def run_dir(row: str, data: str, seed: int) -> Path:
    """Where the run of ``row`` on ``data`` with ``seed`` keeps its files."""
    return RUNS / data / f"{row}_s{seed}"


def train(row: Row, data: str, seed: int, name: str | None = None) -> tuple[Path, float, float]:
    """Train ``row``; returns (artifact, median img/s after warm-up, minutes)."""
    from openrecog.config import load_config
    from openrecog.train import Trainer

    name = name or row.name
    overrides = [
        f"data.root={DATA / data}",
        f"train.seed={seed}",
        f"train.name={name}_s{seed}",
        f"train.output_dir={RUNS / data}",
        *row.overrides,
    ]
    config = load_config(BASE_CONFIG, overrides)
    start = time.perf_counter()
    result = Trainer(config).fit()
    minutes = (time.perf_counter() - start) / 60
    log = [json.loads(x) for x in (result.run_dir / "log.jsonl").read_text().splitlines()]
    speeds = [r["img_per_s"] for r in log if "img_per_s" in r][3:]
    return result.run_dir / "last", statistics.median(speeds), minutes


def base_artifact(data: str, seed: int) -> Path:
    """The base run's model for post-hoc rows (trained first by the row order)."""
    path = run_dir("base", data, seed) / "last"
    if not path.is_dir():
        raise SystemExit(f"post-hoc rows need the base run first: {path} is missing")
    return path


def post_process(row: Row, data: str, seed: int):
    """The model of a post-hoc row, built from the base model."""
    from openrecog.data.datasets import csv_dataset
    from openrecog.models import fit_ensemble, load_model
    from openrecog.models.pca import fit_pca_model

    if row.post == "imagenet":
        from openrecog.config import load_config
        from openrecog.models import create_model

        size = load_config(BASE_CONFIG).model.image_size
        return create_model("lite0_gap_imagenet", image_size=size).eval()
    model = load_model(base_artifact(data, seed))
    train_split = csv_dataset(DATA / data, split="train")
    if row.post == "eval160":
        # A GAP neck takes any input size; only the preprocessing size changes.
        model.config = model.config.model_copy(update={"image_size": 160})
        return model
    if row.post in ("tta_flip", "tta_flip_crops"):
        return model.set_tta(row.post.removeprefix("tta_"))
    if row.post == "pca64":
        return fit_pca_model(model, train_split, 64)[0]
    if row.post == "ensemble2":
        other = run_dir("base", data, seed + 100) / "last"
        if not other.is_dir():
            other = train(ROWS_BY_NAME["base"], data, seed + 100, name="base")[0]
        return fit_ensemble([model, load_model(other)], train_split, pca_dim=256)[0]
    raise ValueError(f"unknown post-hoc step {row.post!r}")


def peak_memory_mb() -> float:
    """Peak memory of this process: CUDA peak if a GPU was used, else max RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(row_name: str, data: str, seed: int) -> dict:
    """Train (or post-process) and score one row; the result dict of one table cell group."""
    from openrecog.eval.evaluate import evaluate_model

    row = ROWS_BY_NAME[row_name]
    speed = minutes = None
    if row.post:
        model = post_process(row, data, seed)
    else:
        from openrecog.models import load_model

        artifact, speed, minutes = train(row, data, seed)
        model = load_model(artifact)
    metrics = evaluate_model(model, test_split(data), batch_size=64)
    return {
        "row": row.name,
        "data": data,
        "seed": seed,
        "map@5": metrics["map@5"],
        "tpr@fpr=1e-03": metrics["tpr@fpr=1e-03"],
        "p@1": metrics["p@1"],
        "dim": model.embedding_dim,
        "img_per_s": speed,
        "train_min": minutes,
        "peak_mb": peak_memory_mb() if not row.post else None,
    }


# ---------------------------------------------------------------- the table (parent)
def summarise(results: list[dict]) -> list[dict]:
    """Mean over seeds per (row, data), with the change against the base row."""
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        cells.setdefault((r["row"], r["data"]), []).append(r)

    def mean(values: list) -> float | None:
        values = [v for v in values if v is not None]
        return statistics.fmean(values) if values else None

    table = []
    for row in ROWS:
        line: dict = {"row": row.name, "group": row.group, "what": row.what}
        for data in DATASETS:
            runs = cells.get((row.name, data), [])
            # Compare like with like: the base runs of the seeds this row ran with.
            seeds = {r["seed"] for r in runs}
            base = [r for r in cells.get(("base", data), []) if r["seed"] in seeds]
            for metric in ("map@5", "tpr@fpr=1e-03"):
                value = mean([r[metric] for r in runs])
                ref = mean([r[metric] for r in base])
                line[f"{data}/{metric}"] = value
                line[f"{data}/{metric}/delta"] = (
                    value - ref if value is not None and ref is not None else None
                )
                values = [r[metric] for r in runs]
                line[f"{data}/{metric}/spread"] = (
                    max(values) - min(values) if len(values) > 1 else None
                )
            line[f"{data}/seeds"] = len(runs)
            line[f"{data}/img_per_s"] = mean([r["img_per_s"] for r in runs])
            line[f"{data}/peak_mb"] = mean([r["peak_mb"] for r in runs])
        table.append(line)
    return table


def _fmt(value: float | None, digits: int = 3, signed: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def markdown(table: list[dict], machine: str, seeds: list[int]) -> str:
    """The Markdown table of docs/benchmarks/ablations.md (numbers only, no prose)."""
    head = (
        "| row | what | SROIE mAP@5 (Δ) | SROIE TPR@1e-3 (Δ) | Caltech mAP@5 (Δ) | "
        "Caltech TPR@1e-3 (Δ) | img/s | peak MB |\n|---|---|---|---|---|---|---:|---:|\n"
    )
    lines = []
    for line in table:
        cells = []
        for data in DATASETS:
            for metric in ("map@5", "tpr@fpr=1e-03"):
                value = line[f"{data}/{metric}"]
                delta = line[f"{data}/{metric}/delta"]
                spread = line[f"{data}/{metric}/spread"]
                text = _fmt(value)
                if spread is not None:
                    text += f" ±{spread / 2:.3f}"
                if line["row"] != "base" and delta is not None:
                    text += f" ({_fmt(delta, signed=True)})"
                cells.append(text)
        speed = line["sroie/img_per_s"]
        memory = line["sroie/peak_mb"]
        lines.append(
            f"| {line['row']} | {line['what']} | {' | '.join(cells)} | "
            f"{_fmt(speed, 1)} | {_fmt(memory, 0)} |"
        )
    caption = (
        f"Measured by `python bench/ablate.py` on {machine}; seeds {seeds}; "
        "± is half the range over seeds where more than one ran; img/s and peak MB are "
        "the SROIE training runs (– for post-hoc rows, which do not train).\n\n"
    )
    return caption + head + "\n".join(lines) + "\n"


def main() -> None:
    """Run the requested rows × data sets × seeds (one child process each), write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="*", default=[r.name for r in ROWS])
    parser.add_argument("--data", nargs="*", default=list(DATASETS), choices=DATASETS)
    parser.add_argument(
        "--seeds",
        nargs="*",
        type=int,
        help="run every row with these seeds (default: seed 0 for all rows, seed 1 for "
        "the rows in SECOND_SEED_ROWS, as in docs/benchmarks/ablations.md)",
    )
    parser.add_argument("--resume", action="store_true", help="keep results already saved")
    parser.add_argument("--one", nargs=3, metavar=("ROW", "DATA", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        row, data, seed = args.one
        result = run_one(row, data, int(seed))
        args.result.write_text(json.dumps(result), encoding="utf-8")
        return
    unknown = sorted(set(args.rows) - set(ROWS_BY_NAME))
    if unknown:
        raise SystemExit(f"unknown rows {unknown}; known: {', '.join(ROWS_BY_NAME)}")
    OUT.mkdir(parents=True, exist_ok=True)
    json_path = OUT / "ablations.json"
    saved = json.loads(json_path.read_text())["runs"] if args.resume and json_path.exists() else []
    done = {(r["row"], r["data"], r["seed"]) for r in saved}
    results = list(saved)
    machine = machine_name()
    order = [r for r in ROWS if r.name in args.rows]  # base first: post-hoc rows need it
    if args.seeds is not None:
        plan = [(seed, data, row) for seed in args.seeds for data in args.data for row in order]
    else:
        plan = [(0, data, row) for data in args.data for row in order]
        plan += [
            (1, data, row)
            for data in args.data
            for row in order
            if row.name in SECOND_SEED_ROWS[data]
        ]
    jobs = [
        (row.name, data, seed) for seed, data, row in plan if (row.name, data, seed) not in done
    ]
    for number, (row, data, seed) in enumerate(jobs, 1):
        print(f"[{number}/{len(jobs)}] {row} {data} seed {seed}", flush=True)
        result_file = RUNS / f".{row}_{data}_{seed}.json"
        result_file.parent.mkdir(parents=True, exist_ok=True)
        cmd = [
            sys.executable,
            __file__,
            "--one",
            row,
            data,
            str(seed),
            "--result",
            str(result_file),
        ]
        if subprocess.run(cmd, cwd=ROOT).returncode != 0:
            print(f"  FAILED: {row} {data} seed {seed}", flush=True)
            continue
        result = json.loads(result_file.read_text())
        results.append(result)
        print(f"  mAP@5 {result['map@5']:.3f}  TPR@1e-3 {result['tpr@fpr=1e-03']:.3f}", flush=True)
        seeds = sorted({r["seed"] for r in results})
        json_path.write_text(
            json.dumps({"machine": machine, "seeds": seeds, "runs": results}, indent=1),
            encoding="utf-8",
        )
        write_between_markers(
            OUT / "ablations.md",
            "ablation-table",
            markdown(summarise(results), machine, seeds),
            title="Ablations",
        )


if __name__ == "__main__":
    main()
