"""Which frozen ImageNet feature maps hold what: the probe behind ``model.taps``.

Usage:
    python bench/feature_taps.py                        # SROIE and Caltech-101, 224 px
    python bench/feature_taps.py --datasets sroie --image-size 320

The ImageNet EfficientNet-Lite0 is run once per test split with two inner maps tapped
(timm feature indices 2 and 3: 40 channels at stride 8 and 112 at stride 16, each
average-pooled to 3 x 3 cells) besides the last map's GAP, each part L2-normalised as
``model.taps`` does. Every row re-weights and joins those parts, untrained, and is scored
by leave-one-out retrieval on the class-disjoint test split, like bench/quality.py. Receipts
are told apart by layout (inner maps), objects by the last map; the rows show the trade.
Writes docs/benchmarks/feature_taps.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from machine import machine_name
from shared_data import SHARED_DATA, dataset_roots

from openrecog.config import ModelConfig
from openrecog.data.datasets import csv_dataset
from openrecog.eval.metrics import evaluate_embeddings
from openrecog.eval.table import format_table
from openrecog.models import create_model
from openrecog.models.encoder import ImageEncoder

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["features", "dim", "data", "p@1", "map@5", "mp@5", "tpr@fpr=1e-03", "auroc"]
GRID = 3
# Part name -> timm feature index of the inner map; "last" is the last map's GAP.
PARTS = {"last": None, "s8": 2, "s16": 3}
# Row label -> weight of each part joined (absent parts are left out).
ROWS = {
    "last-map GAP (ImageNet baseline)": {"last": 1.0},
    "stride-8 map, 3x3 cells": {"s8": 1.0},
    "stride-16 map, 3x3 cells": {"s16": 1.0},
    "GAP + stride-16 3x3 × 0.4": {"last": 1.0, "s16": 0.4},
    "GAP + stride-16 3x3 × 0.8": {"last": 1.0, "s16": 0.8},
    "GAP + stride-16 3x3 × 1.2": {"last": 1.0, "s16": 1.2},
    "GAP + stride-8 3x3 × 0.8 + stride-16 3x3 × 0.8": {"last": 1.0, "s8": 0.8, "s16": 0.8},
}


def tapped_features(root: Path, image_size: int) -> tuple[dict[str, np.ndarray], list]:
    """``({part: (N, D) unit vectors}, labels)`` of the test split under ``root``."""
    config = ModelConfig(
        backbone="tf_efficientnet_lite0",
        embedding_dim=None,
        image_size=image_size,
        taps=[{"index": index, "grid": GRID} for index in PARTS.values() if index is not None],
    )
    model = create_model(config).eval()
    # The joined vector is the last map's GAP, then each inner map's grid cells, in PARTS order.
    widths = model.tap_part_widths()
    dataset = csv_dataset(root, split="test")
    joined = ImageEncoder(model, batch_size=32).encode_dataset(dataset, progress=True)
    assert sum(widths) == joined.shape[1], "the joined layout does not match PARTS"
    blocks = np.split(joined, np.cumsum(widths)[:-1], axis=1)
    parts = {
        name: block / np.linalg.norm(block, axis=1, keepdims=True)
        for name, block in zip(PARTS, blocks, strict=True)
    }
    return parts, list(dataset.labels)


def main() -> None:
    """Embed each test split once, then score every weighting of the parts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["sroie", "caltech101"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    datasets = dataset_roots(parser, args.data, args.datasets)

    rows = []
    for data_name, root in datasets.items():
        parts, labels = tapped_features(root, args.image_size)
        for label, weights in ROWS.items():
            x = np.concatenate([w * parts[name] for name, w in weights.items()], axis=1)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            metrics = evaluate_embeddings(x, labels)
            rows.append({"features": label, "dim": x.shape[1], "data": data_name, **metrics})
            print(format_table([rows[-1]], columns=COLUMNS), flush=True)

    machine = machine_name()
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "feature_taps.json").write_text(
        json.dumps({"machine": machine, "image_size": args.image_size, "rows": rows}, indent=2)
    )
    table = format_table(rows, columns=COLUMNS, title="Frozen ImageNet Lite0 feature maps")
    (args.output / "feature_taps.md").write_text(
        f"{table}\n\nMeasured with `python bench/feature_taps.py` on {machine}: the ImageNet "
        f"`tf_efficientnet_lite0` at {args.image_size} px, untrained, no projection; each "
        "part L2-normalised, multiplied by its weight, joined and L2-normalised again (what "
        "`model.taps` feeds the neck). Leave-one-out retrieval on the class-disjoint test "
        "splits, as in quality.md.\n"
    )
    print(table)


if __name__ == "__main__":
    main()
