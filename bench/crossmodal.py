"""Cross-modal retrieval: text→image and image→text R@1/5/10 (docs/benchmarks/crossmodal.md).

Usage:
    python scripts/build_stamps.py            # once: data/tuxpaint-stamps with captions.csv
    python bench/crossmodal.py                # 60 steps a row: about 25 minutes on 2 CPU cores
    python bench/crossmodal.py --steps 200    # the longer table (12-30 minutes a row)
    python bench/crossmodal.py --steps 20     # a smoke run (not for the record: --no-write)

Each step count has its own table in docs/benchmarks/crossmodal.md (between the markers
``crossmodal-<steps>steps``), rows in ``crossmodal-<steps>steps.json`` and runs in
``runs/bench_crossmodal/<steps>steps/``; ``--reuse`` keeps finished runs, ``--rows`` runs only
some (``--rows 1 2 3``: the first three variants below).

Data: the Debian ``tuxpaint-stamps-default`` stamps with their English descriptions
(``captions.csv`` written by ``scripts/build_stamps.py``; 621 training pairs, 164 held out by
a hash of the file name). Every row starts from the shipped ``default`` image model (at
``--image-size`` px) and the offline MiniLM text encoder, with the same steps, batch and
seed (``CrossModalTrainer``); R@K is measured on the held-out pairs, each caption against
all 164 images and each image against all 164 captions.

Rows:
* ``floor``: no training — the untrained (random) projections of the first run;
* ``locked text``: MiniLM frozen, the image side (embedder + projection) and the text
  projection trained with plain in-batch ITC (no momentum model, no queue);
* ``locked text + momentum, queue``: the same with momentum encoders and feature queues
  (256), α = 0;
* ``locked text + MoD``: with momentum distillation (α = 0.4);
* ``locked text + MoD + ITM``: with the matching head trained on in-batch hard negatives,
  scored both by the contrastive similarity and after ITM re-ranking of each query's top 16;
* ``full ITC (both towers)``: MiniLM trained too (at a small lr), momentum and queues, α = 0;
* ``full ITC + MoD``: the same with α = 0.4.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import yaml
from machine import machine_name
from markdown_table import write_between_markers

from openrecog.eval.table import format_table
from openrecog.train.crossmodal import CrossModalTrainer, load_crossmodal_config

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "tuxpaint-stamps"
OUT = ROOT / "docs" / "benchmarks"
COLUMNS = ["t2i_r@1", "t2i_r@5", "t2i_r@10", "i2t_r@1", "i2t_r@5", "i2t_r@10", "mean_r"]

# Cheapest first: on a busy 2-core machine the runs with a trainable text tower take
# several times longer, and every finished row is written at once.
VARIANTS: list[tuple[str, list[str]]] = [
    ("locked text", ["lock_text=true", "momentum_encoders=false"]),
    ("locked text + momentum, queue", ["lock_text=true", "momentum_encoders=true", "alpha=0"]),
    ("locked text + MoD", ["lock_text=true", "momentum_encoders=true", "alpha=0.4"]),
    ("locked text + MoD + ITM", ["lock_text=true", "alpha=0.4", "itm=true"]),
    ("full ITC (both towers)", ["lock_text=false", "momentum_encoders=true", "alpha=0"]),
    ("full ITC + MoD", ["lock_text=false", "momentum_encoders=true", "alpha=0.4"]),
]


def main() -> None:
    """Train every variant, evaluate, write the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument(
        "--reuse", action="store_true", help="keep finished runs with the same configuration"
    )
    parser.add_argument(
        "--rows", type=int, nargs="+", help="run only these variants (1-based, in order)"
    )
    opts = parser.parse_args()
    if not (DATA / "captions.csv").exists():
        raise SystemExit(f"no {DATA / 'captions.csv'}: run python scripts/build_stamps.py first")
    common = [
        f"data_root={DATA}",
        f"steps={opts.steps}",
        f"batch_size={opts.batch_size}",
        f"image_size={opts.image_size}",
        "queue_size=256",
        f"output_dir={ROOT / 'runs' / 'bench_crossmodal' / f'{opts.steps}steps'}",
    ]
    if opts.rows and not all(1 <= i <= len(VARIANTS) for i in opts.rows):
        parser.error(f"--rows: variants are numbered 1 to {len(VARIANTS)}")
    chosen = [VARIANTS[i - 1] for i in opts.rows] if opts.rows else VARIANTS
    rows = []
    for label, overrides in chosen:
        name = label.replace(" ", "").replace("+", "_").replace(",", "").lower()
        name = name.replace("(", "").replace(")", "")
        cfg = load_crossmodal_config(None, [*common, *overrides, f"name={name}"])
        summary = _finished(cfg) if opts.reuse else None
        if summary is None:
            CrossModalTrainer(cfg).fit(progress=False)
            summary = _finished(cfg)
        metrics, minutes = summary["metrics"], summary["train_minutes"]
        if not rows:
            rows.append({"model": "floor (untrained projections)", **summary["floor_metrics"]})
        rows.append({"model": label, **metrics, "train_min": minutes})
        if cfg.itm:
            itm = {k.removeprefix("itm_"): v for k, v in metrics.items() if k.startswith("itm_")}
            rows.append({"model": f"{label}, ITM re-ranked top-16", **itm, "train_min": minutes})
        print(format_table(rows, columns=["model", *COLUMNS]), flush=True)
        if not opts.no_write:
            write(rows, opts)


def _finished(cfg) -> dict | None:
    """The metrics.json of a finished run with exactly this configuration, or None."""
    run = Path(cfg.output_dir) / cfg.name
    try:
        same = yaml.safe_load((run / "config.yaml").read_text()) == cfg.model_dump()
        summary = json.loads((run / "metrics.json").read_text()) if same else None
    except (OSError, ValueError):
        return None
    # config.yaml is written when a run starts: a run stopped midway leaves the metrics.json
    # of an earlier run with another step count next to it.
    return summary if summary is not None and summary.get("steps") == cfg.steps else None


def write(rows: list[dict], opts: argparse.Namespace) -> None:
    """The rows so far into crossmodal-<steps>steps.json and their table in crossmodal.md."""
    payload = {"machine": machine_name(), "options": vars(opts), "rows": rows}
    marker = f"crossmodal-{opts.steps}steps"
    (OUT / f"{marker}.json").write_text(json.dumps(payload, indent=2) + "\n")
    caption = (
        f"Measured by `python bench/crossmodal.py` on {machine_name()}; {opts.steps} steps × "
        f"{opts.batch_size} pairs at {opts.image_size} px, seed 0, 164 held-out pairs; "
        f"1-minute load average {os.getloadavg()[0]:.1f} when written; `train_min`: "
        "wall-clock minutes of each row's training run (on a shared machine, inflated by "
        "whatever else ran)."
    )
    table = format_table(rows, columns=["model", *COLUMNS, "train_min"])
    write_between_markers(OUT / "crossmodal.md", marker, f"{caption}\n\n{table}", "Cross-modal")
    print(f"wrote {OUT / 'crossmodal.md'}")


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
