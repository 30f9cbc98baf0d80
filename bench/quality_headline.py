"""Copy the headline rows of docs/benchmarks/quality.json into README.md and the model card.

Usage: python bench/quality_headline.py   (after python bench/quality.py)
"""

from __future__ import annotations

import json
from pathlib import Path

from markdown_table import write_between_markers

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "default": "**default**",
    "default_64": "**default_64**",
    "lite0_gap_imagenet": "ImageNet lite0 GAP",
    "lite2_gap_imagenet": "ImageNet lite2 GAP (260 px)",
    "default+ft": "default, fine-tuned on each train split",
    "docclassifier_lcnet050": "DocClassifier-like LCNet-0.5, 128 px",
}
CELLS = [
    ("sroie", "map@5"),
    ("sroie", "tpr@fpr=1e-03"),
    ("caltech101", "map@5"),
    ("caltech101", "mp@5"),
    ("lfw", "map@5"),
]
HEADER = (
    "| model | dim | MB | SROIE mAP@5 | SROIE TPR@1e-3 | Caltech-101 mAP@5 | Caltech mP@5 "
    "| LFW mAP@5 | ms/img (1 thread) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|"
)


def headline(rows: list[dict]) -> str:
    """One line per model with the figures the README quotes."""
    lines = [HEADER]
    for model, name in MODELS.items():
        found = {r["data"]: r for r in rows if r["model"] == model}
        if not found:
            continue
        first = next(iter(found.values()))
        cells = [f"{found[d][k]:.3f}" if d in found else "—" for d, k in CELLS]
        ms = "—" if model == "default+ft" else f"{first['ms_b1']:.0f}"
        lines.append(
            f"| {name} | {first['dim']} | {first['size_mb']:.2f} | {' | '.join(cells)} | {ms} |"
        )
    return "\n".join(lines)


def main() -> None:
    """Rewrite the headline tables."""
    rows = json.loads((ROOT / "docs" / "benchmarks" / "quality.json").read_text())["rows"]
    table = headline(rows)
    for path in (ROOT / "README.md", ROOT / "docs" / "models" / "default.md"):
        write_between_markers(path, "quality", table)
    print(table)


if __name__ == "__main__":
    main()
