"""Hand probe behind ``model.tap_gate``: choose its low/high on the *train* splits.

Frozen EfficientNet-Lite0 parts (GAP 1280-d, stride-16 map at 3x3 cells) are cached for the
default recipe's training images and for the train splits of ../shared/data (SROIE,
Caltech-101, LFW, used here as validation so the test splits stay unseen); the gate is fitted
as in training, the 256-d neck start is the whitened PCA of the gated training features, and
each (low, high, whitening power) is scored by mAP@5 / mP@5 / TPR@FPR=1e-3. Not a benchmark:
it writes nothing to docs/, it prints. About 10 min for the cache on 2 CPU cores, then ~5 min.

    python scripts/build_stamps.py   # the training stamps, if not there
    python scripts/probe_tap_gate.py [--cache /tmp/tap_gate_cache]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import yaml
from torch.utils.data import Subset

from openrecog.config import DataConfig, FeatureTap, ModelConfig, TapGate
from openrecog.data.datasets import csv_dataset
from openrecog.data.factory import build_train_dataset
from openrecog.eval.metrics import evaluate_embeddings
from openrecog.models import create_model
from openrecog.models.encoder import ImageEncoder
from openrecog.models.taps import MultiLevelPool, fit_tap_gate

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SETS = ("sroie", "caltech101", "lfw")


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def cache(folder: Path) -> None:
    """Encode the training images and the sets' train splits once (GAP + s16 3x3 parts)."""
    folder.mkdir(parents=True, exist_ok=True)
    config = ModelConfig(embedding_dim=None, taps=[{"index": 3, "grid": 3, "weight": 1.0}])
    encoder = ImageEncoder(create_model(config).eval(), batch_size=32)
    for name in SETS:
        if not (folder / f"{name}.npz").exists():
            dataset = csv_dataset(str(DATA / name), split="train")
            x = encoder.encode_dataset(dataset)
            np.savez(folder / f"{name}.npz", x=x, labels=np.array(list(dataset.labels), object))
    if not (folder / "train.npz").exists():
        data = DataConfig(**yaml.safe_load((ROOT / "configs/default.yaml").read_text())["data"])
        dataset = build_train_dataset(data, 224)
        x = encoder.encode_dataset(Subset(dataset, range(len(dataset))))
        main = np.array([dataset.part_of(i) == 0 for i in range(len(dataset))], float)
        np.savez(folder / "train.npz", x=x, labels=main)


def main() -> None:
    """Cache, fit the gate, print one line per (low, high, whitening power)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/tap_gate_cache"))
    args = parser.parse_args()
    cache(args.cache)

    def load(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = np.load(args.cache / f"{name}.npz", allow_pickle=True)
        return _unit(d["x"][:, :1280]), _unit(d["x"][:, 1280:]), d["labels"]

    train_gap, train_cells, is_main = load("train")
    tests = {name: load(name) for name in SETS}
    pool = MultiLevelPool([FeatureTap(index=3, grid=3)], TapGate(low=1, high=1), 1280)
    print(fit_tap_gate(pool, train_gap, is_main.astype(float)))

    def join(gap: np.ndarray, cells: np.ndarray, low: float, high: float) -> np.ndarray:
        p = pool.main_probability(torch.as_tensor(gap)).numpy()
        return _unit(np.concatenate([gap, (low + (high - low) * p)[:, None] * cells], 1))

    grid = [(0.8, 0.8, 1.0)] + [
        (lo, hi, a) for a in (0.5, 1.0) for lo in (0.4, 0.6) for hi in (1.6, 2.5, 4.0)
    ]
    for low, high, power in grid:
        x = join(train_gap, train_cells, low, high)
        mean = x.mean(0)
        _, singular, vt = np.linalg.svd(x - mean, full_matrices=False)
        w = vt[:256].T / (singular[:256] / np.sqrt(len(x) - 1)) ** power
        line = [f"low={low} high={high} power={power}"]
        for name, (gap, cells, labels) in tests.items():
            m = evaluate_embeddings(_unit((join(gap, cells, low, high) - mean) @ w), list(labels))
            line.append(f"{name} {m['map@5']:.3f}/{m['mp@5']:.3f}/{m['tpr@fpr=1e-03']:.3f}")
        print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
