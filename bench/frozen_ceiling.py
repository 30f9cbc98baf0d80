"""How far a linear neck on the default model's frozen features can go on real receipts.

Usage:
    python bench/frozen_ceiling.py                    # the shipped default, configs/default.yaml
    python bench/frozen_ceiling.py --dims 256 512 --lda-shrinkage 0.5

The shipped default trains only a Linear neck on top of a frozen ImageNet trunk. This asks
what *any* linear map of the same neck input (the gated, joined 2288-d features) achieves,
to tell a neck problem from a features problem:

- the shipped neck, and the neck input itself, L2-normalised;
- the neck's PCA start at several widths, computed by the trainer's own ``pca_start`` (whitened
  as the training config says) over the model's own training images
  (``train.neck_init_images``, spread over documents and stamps as the trainer picks them);
- a supervised upper bound: shrinkage LDA fitted on the SROIE *train* split (real receipts,
  class-disjoint from the test split), evaluated on the SROIE test split.

Metrics are quality.md's (leave-one-out on class-disjoint splits; SROIE train is used as a
second receipt set where no row was fitted on it). Writes docs/benchmarks/frozen_ceiling.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from machine import machine_name
from markdown_table import write_between_markers
from shared_data import SHARED_DATA, dataset_roots
from torch.utils.data import Dataset, Subset

from openrecog.config import load_config
from openrecog.data.datasets import csv_dataset
from openrecog.data.factory import build_train_dataset
from openrecog.eval.metrics import evaluate_embeddings
from openrecog.eval.table import format_table
from openrecog.models import load_model
from openrecog.models.encoder import ImageEncoder
from openrecog.train.trainer import PooledFeatures, pca_start, spread_indices

ROOT = Path(__file__).resolve().parents[1]
SETS = (("sroie", "test"), ("sroie", "train"), ("caltech101", "test"))


def unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(min=1e-12)


def shrinkage_lda(features: np.ndarray, labels: list, shrinkage: float) -> np.ndarray:
    """Discriminant axes ``(C - 1, D)`` of shrinkage LDA (scikit-learn's ``solver="eigen"``).

    Written out because scikit-learn is not a dependency of openrecog: the axes solve
    ``S_b v = λ S_w v`` with ``S_w`` shrunk towards ``tr(S_w)/D · I``.
    """
    codes = np.unique(np.asarray(labels), return_inverse=True)[1]
    mean = features.mean(axis=0)
    within = np.zeros((features.shape[1],) * 2)
    between = np.zeros_like(within)
    for code in np.unique(codes):
        group = features[codes == code]
        centred = group - group.mean(axis=0)
        within += centred.T @ centred
        offset = (group.mean(axis=0) - mean)[:, None]
        between += len(group) * offset @ offset.T
    within /= len(features)
    between /= len(features)
    dim = within.shape[0]
    within = (1 - shrinkage) * within + shrinkage * np.trace(within) / dim * np.eye(dim)
    # Whiten by S_w's Cholesky factor, then the ordinary eigenproblem of the whitened S_b.
    factor = np.linalg.cholesky(within)
    inverse = np.linalg.inv(factor)
    values, vectors = np.linalg.eigh(inverse @ between @ inverse.T)
    order = np.argsort(-values)[: int(codes.max())]
    return (inverse.T @ vectors[:, order]).T


def neck_inputs(model: torch.nn.Module, dataset: Dataset) -> np.ndarray:
    """The gated, joined features the neck's Linear reads, for every image of ``dataset``."""
    return ImageEncoder(PooledFeatures(model), batch_size=32).encode_dataset(dataset)


def metrics_row(name: str, embeddings: dict[str, np.ndarray], labels: dict) -> dict:
    """mAP@5 and TPR@FPR=1e-3 of each set's embeddings, one table row."""
    row: dict = {"features": name}
    for key, vectors in embeddings.items():
        scores = evaluate_embeddings(unit(vectors), labels[key])
        row[f"{key} map@5"] = round(scores["map@5"], 3)
        row[f"{key} tpr@1e-3"] = round(scores["tpr@fpr=1e-03"], 3)
    print(row, flush=True)
    return row


def main() -> None:
    """Extract the neck inputs once, then score every linear map of them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--lda-shrinkage", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    roots = dataset_roots(parser, args.data, sorted({name for name, _ in SETS}))
    torch.manual_seed(0)
    model = load_model(args.model).eval()
    config = load_config(args.config)
    if model.taps is None or model.neck.kind != "gap":
        parser.error(f"{args.model}: needs a gap neck on model.taps (the default's neck)")

    train = build_train_dataset(config.data, config.model.image_size)
    picked = spread_indices(len(train), config.train.neck_init_images)
    start = neck_inputs(model, Subset(train, picked))
    print(f"PCA fitted on {len(start)} training images", flush=True)
    inputs, labels = {}, {}
    for name, split in SETS:
        dataset = csv_dataset(roots[name], split=split)
        inputs[f"{name} {split}"] = neck_inputs(model, dataset)
        labels[f"{name} {split}"] = list(dataset.labels)

    shipped_dim = model.neck.fc.out_features
    with torch.no_grad():
        shipped = {
            key: model.forward_head(torch.from_numpy(x)[:, :, None, None]).float().numpy()
            for key, x in inputs.items()
        }
    rows = [
        metrics_row(f"shipped neck ({shipped_dim}-d)", shipped, labels),
        metrics_row(f"neck input ({start.shape[1]}-d)", inputs, labels),
    ]
    power = config.train.neck_init_whiten_power if config.train.neck_init_whiten else None
    for dim in args.dims:
        pca, scale, _ = pca_start(start, dim, power)
        with torch.no_grad():
            projected = {k: (pca(torch.from_numpy(x)) * scale).numpy() for k, x in inputs.items()}
        rows.append(metrics_row(f"PCA start (the trainer's), {dim}-d", projected, labels))
    receipts = inputs["sroie train"]
    for shrinkage in args.lda_shrinkage:
        lda = shrinkage_lda(receipts, labels["sroie train"], shrinkage)
        projected = {"sroie test": inputs["sroie test"] @ lda.T}
        rows.append(
            metrics_row(
                f"LDA fitted on SROIE train (shrinkage {shrinkage}, {len(lda)}-d)",
                projected,
                {"sroie test": labels["sroie test"]},
            )
        )

    machine = machine_name()
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "frozen_ceiling.json").write_text(
        json.dumps(
            {"machine": machine, "model": args.model, "pca_images": len(start), "rows": rows},
            indent=2,
        )
        + "\n"
    )
    write_between_markers(
        args.output / "frozen_ceiling.md",
        "ceiling",
        f"{format_table(rows)}\n\nMeasured with `python bench/frozen_ceiling.py` on {machine}: "
        f"`{args.model}`'s neck input; PCA over {len(start)} of its training images "
        f"(`{args.config.relative_to(ROOT)}`); every figure leave-one-out within one split. "
        "A blank cell: the row was fitted on that split, so it is not scored there.",
        title="How far a linear neck on the frozen features can go",
    )


if __name__ == "__main__":
    main()
