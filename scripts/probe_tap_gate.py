"""Hand probe behind ``model.taps`` and ``model.tap_gate``: choose them on the *train* splits.

It chooses the tap's grid and the gate's low/high. Frozen EfficientNet-Lite0 features (the
L2-normalised GAP, 1280-d, and the whole stride-16 map, 112 x 14 x 14 at 224 px, float16) are
cached for the default recipe's training images and for the train splits of ../shared/data
(SROIE, Caltech-101, LFW, used here as validation so the test splits stay unseen). For each tap
grid the map is pooled to grid x grid cells as the model does; the gate is fitted as in
training, the 256-d neck start is the whitened PCA of the gated training features, and each
(grid, low, high, whitening power) is scored by mAP@5 / mP@5 / TPR@FPR=1e-3. Not a benchmark:
it writes nothing to docs/, it prints. About 10 min for the cache on 2 CPU cores (≈ 0.5 GB),
then ~5 min per grid.

    python scripts/build_stamps.py   # the training stamps, if not there
    python scripts/probe_tap_gate.py [--cache /tmp/tap_probe_cache] [--grids 3 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import Subset

from openrecog.config import DataConfig, FeatureTap, ModelConfig, TapGate
from openrecog.data.datasets import csv_dataset
from openrecog.data.factory import build_train_dataset
from openrecog.eval.metrics import evaluate_embeddings
from openrecog.models import create_model
from openrecog.models.encoder import ImageEncoder
from openrecog.models.taps import MultiLevelPool, fit_tap_gate
from openrecog.train.trainer import pca_start

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SETS = ("sroie", "caltech101", "lfw")


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


GAP_WIDTH = 1280


class TrunkMaps(nn.Module):
    """ImageNet Lite0 → the L2-normalised GAP and the raw stride-16 map, side by side."""

    def __init__(self) -> None:
        super().__init__()
        config = ModelConfig(embedding_dim=None, taps=[{"index": 3, "grid": 1, "weight": 1.0}])
        self.model = create_model(config).eval()
        self.config = config
        self.embedding_dim = GAP_WIDTH + 112 * 14 * 14

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1280 + 112·14·14)``: GAP part, then the stride-16 map flattened."""
        last, (inner,) = self.model.backbone.forward_intermediates(images, indices=[3])
        return torch.cat([F.normalize(last.mean(dim=(2, 3)), dim=1), inner.flatten(1)], dim=1)


def cache(folder: Path) -> None:
    """Encode the training images and the sets' train splits once (GAP + stride-16 map)."""
    folder.mkdir(parents=True, exist_ok=True)
    encoder = ImageEncoder(TrunkMaps(), batch_size=32)
    for name in SETS:
        if not (folder / f"{name}.npz").exists():
            dataset = csv_dataset(str(DATA / name), split="train")
            x = encoder.encode_dataset(dataset).astype(np.float16)
            np.savez(folder / f"{name}.npz", x=x, labels=np.array(list(dataset.labels), object))
    if not (folder / "train.npz").exists():
        data = DataConfig(**yaml.safe_load((ROOT / "configs/default.yaml").read_text())["data"])
        dataset = build_train_dataset(data, 224)
        x = encoder.encode_dataset(Subset(dataset, range(len(dataset)))).astype(np.float16)
        main = np.array([dataset.part_of(i) == 0 for i in range(len(dataset))], float)
        np.savez(folder / "train.npz", x=x, labels=main)


def cells(maps: np.ndarray, grid: int) -> np.ndarray:
    """The cached stride-16 maps pooled to ``grid`` x ``grid`` cells, L2-normalised, as the tap."""
    out = []
    for chunk in np.array_split(maps, max(1, len(maps) // 512)):
        x = torch.from_numpy(chunk.astype(np.float32)).view(-1, 112, 14, 14)
        out.append(F.normalize(F.adaptive_avg_pool2d(x, grid).flatten(1), dim=1).numpy())
    return np.concatenate(out)


def main() -> None:
    """Cache, fit the gate, print one line per (low, high, whitening power)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("/tmp/tap_probe_cache"))
    parser.add_argument("--grids", type=int, nargs="+", default=[3, 4])
    args = parser.parse_args()
    cache(args.cache)

    def load(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        d = np.load(args.cache / f"{name}.npz", allow_pickle=True)
        x = d["x"]
        return _unit(x[:, :GAP_WIDTH].astype(np.float32)), x[:, GAP_WIDTH:], d["labels"]

    train_gap, train_maps, is_main = load("train")
    tests = {name: load(name) for name in SETS}
    pool = MultiLevelPool([FeatureTap(index=3, grid=1)], TapGate(low=1, high=1), GAP_WIDTH)
    print(fit_tap_gate(pool, train_gap, is_main.astype(float)))

    def join(gap: np.ndarray, tap: np.ndarray, low: float, high: float) -> np.ndarray:
        p = pool.main_probability(torch.as_tensor(gap)).numpy()
        return _unit(np.concatenate([gap, (low + (high - low) * p)[:, None] * tap], 1))

    settings = [(0.8, 0.8, 1.0)] + [
        (lo, hi, a) for a in (0.5, 1.0) for lo in (0.4, 0.6) for hi in (1.6, 2.5, 4.0)
    ]
    for grid in args.grids:
        train_cells = cells(train_maps, grid)
        test_cells = {name: cells(maps, grid) for name, (_, maps, _) in tests.items()}
        for low, high, power in settings:
            # The trainer's own neck start: whitened PCA of the gated training features.
            pca, scale, _ = pca_start(join(train_gap, train_cells, low, high), 256, power)
            line = [f"grid={grid} low={low} high={high} power={power}"]
            for name, (gap, _, labels) in tests.items():
                joined = torch.as_tensor(join(gap, test_cells[name], low, high))
                m = evaluate_embeddings(_unit((pca(joined) * scale).numpy()), list(labels))
                line.append(f"{name} {m['map@5']:.3f}/{m['mp@5']:.3f}/{m['tpr@fpr=1e-03']:.3f}")
            print(" | ".join(line), flush=True)


if __name__ == "__main__":
    main()
