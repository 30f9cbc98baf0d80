"""What BatchNorm statistics re-estimated on the training stream alone do to pretrained features.

Usage:
    python bench/bn_statistics.py                     # ImageNet lite0 GAP, 60 batches
    python bench/bn_statistics.py --batches 20 60 --datasets caltech101

Runs a model's backbone in training mode, without any gradient step, over batches of the
training stream of ``configs/default.yaml`` (synthetic documents and Tux Paint stamps, the same
augmented views the trainer sees), so only the BatchNorm running mean and variance change,
then evaluates it on the class-disjoint test splits in ../shared/data like bench/quality.py.
This is the part of fine-tuning that ``train.freeze_bn_stats`` switches off.
Writes docs/benchmarks/bn_statistics.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from machine import machine_name
from shared_data import SHARED_DATA, dataset_roots
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from openrecog.config import ExperimentConfig, load_config
from openrecog.data.datasets import AugmentedDataset, csv_dataset
from openrecog.data.factory import build_train_dataset
from openrecog.data.transforms import build_train_transform
from openrecog.eval.evaluate import evaluate_model
from openrecog.eval.table import format_table
from openrecog.models import Embedder, load_model
from openrecog.models.embedder import resolve_preprocessing
from openrecog.train.trainer import class_balanced_sampler

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["model", "bn_batches", "data", "p@1", "map@5", "mp@5", "tpr@fpr=1e-03", "auroc"]


def training_batches(config: ExperimentConfig, image_size: int) -> DataLoader:
    """The class-balanced loader of augmented training views that ``config`` trains on.

    Every ``iter()`` starts the same first epoch, so shorter runs see a prefix of longer ones.
    """
    pre = resolve_preprocessing(config.model)
    base = build_train_dataset(config.data, image_size)
    transform = build_train_transform(image_size, pre["mean"], pre["std"], config.data.augment)
    sampler = class_balanced_sampler(config, base.labels, config.train.batch_size)
    return DataLoader(AugmentedDataset(base, transform), batch_sampler=sampler)


@torch.no_grad()
def reestimate_bn_statistics(model: Embedder, loader: DataLoader, batches: int) -> None:
    """Run ``batches`` training batches through the backbone in training mode, no gradients."""
    model.backbone.train()
    stream = iter(loader)
    for _ in tqdm(range(batches), desc="BN statistics", leave=False):
        images, _labels = next(stream)
        model.backbone(images)
    model.eval()


def main() -> None:
    """Measure each model as loaded and after each number of re-estimation batches."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lite0_gap_imagenet")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--batches", type=int, nargs="+", default=[60])
    parser.add_argument("--datasets", nargs="+", default=["caltech101", "sroie"])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    datasets = dataset_roots(parser, args.data, args.datasets)
    if any(n < 1 for n in args.batches):
        parser.error("--batches must be positive")

    config = load_config(args.config)
    loader = None
    rows = []
    for batches in [0, *args.batches]:
        model = load_model(args.model).eval()
        if batches:
            loader = loader or training_batches(config, model.config.image_size)
            reestimate_bn_statistics(model, loader, batches)
        for data_name, root in datasets.items():
            metrics = evaluate_model(model, csv_dataset(root, split="test"), batch_size=32)
            rows.append({"model": args.model, "bn_batches": batches, "data": data_name, **metrics})
            print(format_table([rows[-1]], columns=COLUMNS), flush=True)

    machine = machine_name()
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "bn_statistics.json").write_text(
        json.dumps({"machine": machine, "config": str(args.config.name), "rows": rows}, indent=2)
    )
    table = format_table(
        rows, columns=COLUMNS, title="BatchNorm statistics from the training stream"
    )
    (args.output / "bn_statistics.md").write_text(
        f"{table}\n\nMeasured with `python bench/bn_statistics.py` on {machine}. "
        f"`bn_batches`: batches of {args.config.name}'s training stream (batch "
        f"{config.train.batch_size}) run through the backbone in training "
        "mode with no gradient step before evaluating (0: the model as loaded); only the "
        "BatchNorm running statistics change. Leave-one-out retrieval on the class-disjoint "
        "test splits, as in quality.md.\n"
    )
    print(table)


if __name__ == "__main__":
    main()
