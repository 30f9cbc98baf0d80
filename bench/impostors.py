"""Which class pairs set the strict-verification threshold (TPR@FPR) on a real test split.

Usage:
    python bench/impostors.py                                   # SROIE, baseline and default
    python bench/impostors.py --models default --dataset lfw --top 100

TPR@FPR=1e-3 is decided by a handful of impostor pairs: with N different-label pairs the
threshold is the (⌊N·FPR⌋+1)-th highest impostor score, so on SROIE's 188 test receipts
(16 149 impostor pairs) 16 pairs set it. This lists the class pairs behind the ``--top``
highest impostor scores of each model, and for every test class with at least ``--min-pairs``
genuine pairs the share of them above the threshold (its part of the TPR). Leave-one-out on
the class-disjoint test split, as in quality.md. Writes docs/benchmarks/impostors.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from machine import machine_name
from markdown_table import write_between_markers
from shared_data import SHARED_DATA, dataset_roots

from openrecog.data.datasets import csv_dataset
from openrecog.eval.evaluate import embed_and_evaluate
from openrecog.eval.table import format_table
from openrecog.models import load_model

ROOT = Path(__file__).resolve().parents[1]
FPR = 1e-3


def pair_table(embeddings: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(i, j, score, same)`` of every pair ``i < j``."""
    i, j = np.triu_indices(len(codes), k=1)
    scores = np.einsum("nd,nd->n", embeddings[i], embeddings[j])
    return i, j, scores, codes[i] == codes[j]


def analyse(
    embeddings: np.ndarray, codes: np.ndarray, names: list[str], top: int, min_pairs: int
) -> dict:
    """The top impostor class pairs and each class's genuine pairs above the threshold."""
    i, j, scores, same = pair_table(embeddings, codes)
    impostor = np.flatnonzero(~same)
    ranked = impostor[np.argsort(-scores[impostor], kind="stable")]
    allowed = int(np.floor(round(FPR * impostor.size, 9)))
    threshold = float(scores[ranked[allowed]])
    pairs = Counter()
    best: dict[tuple[str, str], float] = {}
    for k in ranked[:top]:
        key = tuple(sorted((names[codes[i[k]]], names[codes[j[k]]])))
        pairs[key] += 1
        best[key] = max(best.get(key, -1.0), float(scores[k]))
    classes = []
    for code in np.unique(codes):
        mask = same & (codes[i] == code)
        if mask.sum() >= min_pairs:
            classes.append(
                {
                    "class": names[code],
                    "genuine_pairs": int(mask.sum()),
                    "above_threshold": float(np.mean(scores[mask] > threshold)),
                    "median_score": float(np.median(scores[mask])),
                }
            )
    return {
        "impostor_pairs": int(impostor.size),
        "allowed_false_accepts": allowed,
        "threshold": threshold,
        "tpr": float(np.mean(scores[same] > threshold)),
        "top_pairs": [
            {"classes": " / ".join(key), "pairs": count, "max_score": best[key]}
            for key, count in pairs.most_common()
        ],
        "classes": sorted(classes, key=lambda row: -row["genuine_pairs"]),
    }


def markdown(model: str, result: dict, top: int) -> str:
    """One model's section: the class-pair table, then the per-class table."""
    head = (
        f"## {model}: TPR@FPR=1e-3 {result['tpr']:.3f}, threshold {result['threshold']:.3f} "
        f"({result['allowed_false_accepts']} of {result['impostor_pairs']} impostor pairs "
        "may score above it)"
    )
    pairs = format_table(
        result["top_pairs"],
        columns=["classes", "pairs", "max_score"],
        title=f"Class pairs of the {top} highest impostor scores",
    )
    classes = format_table(
        result["classes"],
        columns=["class", "genuine_pairs", "above_threshold", "median_score"],
        title="Genuine pairs of each class above the threshold",
    )
    return f"{head}\n\n{pairs}\n\n{classes}\n"


def main() -> None:
    """Embed the test split with each model and write the two tables per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["lite0_gap_imagenet", "default"])
    parser.add_argument("--dataset", default="sroie")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--min-pairs", type=int, default=6)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks")
    args = parser.parse_args()
    root = dataset_roots(parser, args.data, [args.dataset])[args.dataset]
    dataset = csv_dataset(root, split="test")
    names = list(dataset.class_names)

    results = {}
    for name in args.models:
        embeddings, labels, _ = embed_and_evaluate(load_model(name), dataset, batch_size=32)
        results[name] = analyse(embeddings, np.asarray(labels), names, args.top, args.min_pairs)
        print(f"{name}: TPR@1e-3 {results[name]['tpr']:.3f}", flush=True)

    machine = machine_name()
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "impostors.json").write_text(
        json.dumps({"machine": machine, "dataset": args.dataset, "models": results}, indent=2)
    )
    sections = "\n".join(markdown(name, result, args.top) for name, result in results.items())
    write_between_markers(
        args.output / "impostors.md",
        "impostors",
        f"{sections}\nMeasured with `python bench/impostors.py --dataset {args.dataset}` on "
        f"{machine}: the class-disjoint `{args.dataset}` test split, every pair of test images "
        "scored once (cosine), as quality.md's tpr@fpr=1e-03.",
        title="Which pairs set the strict-verification threshold",
    )


if __name__ == "__main__":
    main()
