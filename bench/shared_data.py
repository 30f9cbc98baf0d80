"""The real benchmark sets in ../shared/data, as the quality benchmarks take them."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def dataset_roots(
    parser: argparse.ArgumentParser, data: Path, names: Sequence[str]
) -> dict[str, Path]:
    """``{name: data / name}``; a usage error names the first set without a labels.csv."""
    roots = {name: data / name for name in names}
    for name, root in roots.items():
        if not (root / "labels.csv").is_file():
            parser.error(f"{name}: {root}/labels.csv not found (see ../shared/data/README.md)")
    return roots
