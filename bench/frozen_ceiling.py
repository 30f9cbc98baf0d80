"""How far a linear neck on the default model's frozen features can go on real receipts.

Usage:
    python bench/frozen_ceiling.py                    # the shipped default, configs/default.yaml
    python bench/frozen_ceiling.py --dims 256 512 --lda-shrinkage 0.5

The shipped default trains only a Linear neck on top of a frozen ImageNet trunk. This asks
what *any* linear map of the same neck input (the gated, joined 3072-d features) achieves,
to tell a neck problem from a features problem:

- the shipped neck, and the neck input itself, L2-normalised;
- the neck's PCA start at several widths, computed by the trainer's own ``pca_start`` (whitened
  as the training config says) over the model's own training images
  (``train.neck_init_images``, spread over documents and stamps as the trainer picks them);
- a supervised upper bound: shrinkage LDA fitted on the SROIE *train* split (real receipts,
  class-disjoint from the test split), evaluated on the SROIE test split.

A second table asks the same of the compact (64-d) variant on photographs: its shipped neck
against PCA of the ImageNet GAP alone fitted on the training images, on the clip-art of
``data.extra_folders`` alone, and on real photographs (Caltech-101 train), and LDA fitted on
Caltech-101 train's labels, all scored on the class-disjoint Caltech-101 test split.

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
# The compact rows are scored on these; Caltech-101 train (real photographs, class-disjoint
# from the test split) is what the best-placed PCA and the supervised LDA are fitted on.
COMPACT_SCORED = ("caltech101 test", "sroie test")
COMPACT_FIT = "caltech101 train"


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


def tap_parts(model: torch.nn.Module, dataset: Dataset) -> np.ndarray:
    """The taps' unweighted parts side by side (the GAP first), for every image of ``dataset``."""
    return ImageEncoder(PooledFeatures(model, parts=True), batch_size=32).encode_dataset(dataset)


def neck_inputs(model: torch.nn.Module, parts: np.ndarray) -> np.ndarray:
    """The gated, joined features ``model``'s neck Linear reads, from :func:`tap_parts`."""
    split = torch.from_numpy(parts).split(model.tap_part_widths(), dim=1)
    with torch.no_grad():
        return model.taps.join(list(split)).numpy()


def gap_part(model: torch.nn.Module, parts: np.ndarray) -> np.ndarray:
    """The L2-normalised ImageNet GAP of the last map: the first of :func:`tap_parts`."""
    return parts[:, : model.tap_part_widths()[0]]


COLUMNS = {"map@5": "map@5", "mp@5": "mp@5", "tpr@1e-3": "tpr@fpr=1e-03"}


def metrics_row(
    name: str,
    embeddings: dict[str, np.ndarray],
    labels: dict,
    columns: tuple[str, ...] = ("map@5", "tpr@1e-3"),
) -> dict:
    """``columns`` (names of :data:`COLUMNS`) of each set's embeddings, one table row."""
    row: dict = {"features": name}
    for key, vectors in embeddings.items():
        scores = evaluate_embeddings(unit(vectors), labels[key])
        for column in columns:
            row[f"{key} {column}"] = round(scores[COLUMNS[column]], 3)
    print(row, flush=True)
    return row


def compact_rows(
    compact: torch.nn.Module,
    compact_name: str,
    parts: dict[str, np.ndarray],
    labels: dict,
    fits: dict[str, np.ndarray],
    power: float | None,
) -> list[dict]:
    """64-d-style rows: ``compact``'s shipped neck, and linear maps of the ImageNet GAP alone.

    ``fits`` names the image sets each PCA is fitted on; the supervised bound is LDA fitted
    on the Caltech-101 *train* split (class-disjoint from the scored test split).
    """
    dim = compact.embedding_dim
    scored = {key: parts[key] for key in COMPACT_SCORED}
    columns = ("map@5", "mp@5", "tpr@1e-3")

    def row(name: str, project) -> dict:
        projected = {key: project(x) for key, x in scored.items()}
        return metrics_row(name, projected, labels, columns)

    with torch.no_grad():
        rows = [
            row(
                f"shipped neck of `{compact_name}` ({dim}-d)",
                lambda x: compact.forward_head(
                    torch.from_numpy(neck_inputs(compact, x))[:, :, None, None]
                ).numpy(),
            ),
            row("ImageNet GAP alone (1280-d), no projection", lambda x: gap_part(compact, x)),
        ]
        for fit_name, fit in fits.items():
            pca, scale, _ = pca_start(gap_part(compact, fit), dim, power)
            rows.append(
                row(
                    f"PCA of the GAP to {dim}-d, fitted on {fit_name} ({len(fit)} images)",
                    lambda x, pca=pca, scale=scale: (
                        pca(torch.from_numpy(gap_part(compact, x))) * scale
                    ).numpy(),
                )
            )
    photos = gap_part(compact, parts[COMPACT_FIT])
    lda = shrinkage_lda(photos, labels[COMPACT_FIT], 0.5)[:dim]
    rows.append(
        row(
            f"LDA of the GAP fitted on Caltech-101 train (shrinkage 0.5, {len(lda)}-d)",
            lambda x: gap_part(compact, x) @ lda.T,
        )
    )
    return rows


def main() -> None:
    """Extract the neck inputs once, then score every linear map of them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "default.yaml")
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 256, 512, 1024])
    parser.add_argument("--lda-shrinkage", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    parser.add_argument(
        "--compact-model", default="default_64", help="the GUIE-style compact variant to compare"
    )
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    names = sorted({name for name, _ in SETS} | {COMPACT_FIT.split()[0]})
    roots = dataset_roots(parser, args.data, names)
    torch.manual_seed(0)
    model = load_model(args.model).eval()
    compact = load_model(args.compact_model).eval()
    config = load_config(args.config)
    for embedder, option in ((model, "--model"), (compact, "--compact-model")):
        if embedder.taps is None or embedder.neck.kind != "gap":
            parser.error(f"{option}: needs a gap neck on model.taps (the default's neck)")
    if (compact.config.backbone, compact.tap_part_widths()) != (
        model.config.backbone,
        model.tap_part_widths(),
    ):
        parser.error("--compact-model must have --model's trunk and taps (its parts are reused)")

    train = build_train_dataset(config.data, config.model.image_size)
    picked = spread_indices(len(train), config.train.neck_init_images)
    start_parts = tap_parts(model, Subset(train, picked))
    start = neck_inputs(model, start_parts)
    print(f"PCA fitted on {len(start)} training images", flush=True)
    parts, labels = {}, {}
    for key in [f"{name} {split}" for name, split in SETS] + [COMPACT_FIT]:
        name, split = key.split()
        dataset = csv_dataset(roots[name], split=split)
        parts[key] = tap_parts(model, dataset)
        labels[key] = list(dataset.labels)
    inputs = {
        f"{name} {split}": neck_inputs(model, parts[f"{name} {split}"]) for name, split in SETS
    }

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

    extra = np.array([train.part_of(i) != 0 for i in picked])
    fits = {
        "the training images": start_parts,
        "the training images of data.extra_folders": start_parts[extra],
        "Caltech-101 train": parts[COMPACT_FIT],
    }
    compact_table = compact_rows(compact, args.compact_model, parts, labels, fits, power)

    machine = machine_name()
    args.output.mkdir(parents=True, exist_ok=True)
    result = {
        "machine": machine,
        "model": args.model,
        "compact_model": args.compact_model,
        "pca_images": len(start),
        "rows": rows,
        "compact_rows": compact_table,
    }
    (args.output / "frozen_ceiling.json").write_text(json.dumps(result, indent=2) + "\n")
    write_between_markers(
        args.output / "frozen_ceiling.md",
        "ceiling",
        f"{format_table(rows)}\n\nMeasured with `python bench/frozen_ceiling.py` on {machine}: "
        f"`{args.model}`'s neck input; PCA over {len(start)} of its training images "
        f"(`{args.config.relative_to(ROOT)}`); every figure leave-one-out within one split. "
        "A blank cell: the row was fitted on that split, so it is not scored there.",
        title="How far a linear neck on the frozen features can go",
    )
    write_between_markers(
        args.output / "frozen_ceiling.md",
        "compact",
        f"{format_table(compact_table)}\n\nMeasured in the same run: `{args.compact_model}`'s "
        f"neck, and linear maps to {compact.embedding_dim} dimensions of the trunk's ImageNet "
        "GAP alone (the taps left out: photographs need the GAP), whitened as the training "
        "config says; Caltech-101 train is class-disjoint from the test split scored here.",
    )


if __name__ == "__main__":
    main()
