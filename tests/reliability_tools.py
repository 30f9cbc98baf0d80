"""Shared by the reliability tests and ``bench/reliability.py``: one import for all of it.

The inputs live in :mod:`tests.reliability_inputs`, the fuzz drivers in
:mod:`tests.reliability_fuzz`, the SIGKILL loop in :mod:`tests.reliability_kill`; here are
the tiny model they run with and a thread setting.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from tests.reliability_fuzz import (
    BODY_ROUTES,
    FuzzReport,
    Hang,
    fuzz_bodies,
    fuzz_http,
    fuzz_library,
    time_limit,
)
from tests.reliability_inputs import (
    encode,
    hostile_bodies,
    hostile_images,
    mutate,
    mutated_images,
    noise_image,
    png_declaring,
    seed_files,
)
from tests.reliability_kill import KillReport, gallery_state, item_label, item_source, kill_loop

__all__ = [
    "BODY_ROUTES",
    "FuzzReport",
    "Hang",
    "KillReport",
    "encode",
    "fuzz_bodies",
    "fuzz_http",
    "fuzz_library",
    "gallery_state",
    "hostile_bodies",
    "hostile_images",
    "item_label",
    "item_source",
    "kill_loop",
    "mutate",
    "mutated_images",
    "noise_image",
    "png_declaring",
    "seed_files",
    "time_limit",
    "tiny_model",
    "torch_threads",
]


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run torch on ``count`` intra-op threads inside the block.

    Tiny models on a busy 2-core machine are many times slower with 2 threads than with
    one (the threads spin waiting for each other), and the fuzz runs thousands of them.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_model():
    """An untrained LCNet-0.5 at 32 px with 16-d embeddings: fast enough to fuzz with.

    Its batch-norm statistics are measured on a few noise images first: with the initial
    ones every input gives the same embedding, and nearest-neighbour checks mean nothing.
    """
    import torch

    from openrecog.config import ModelConfig
    from openrecog.models import Embedder

    config = ModelConfig(backbone="lcnet_050", pretrained=False, image_size=32, embedding_dim=16)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = Embedder(config, load_pretrained=False)
        pixels = np.stack([np.array(noise_image((32, 32), seed=10_000 + i)) for i in range(32)])
        batch = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255.0
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.reset_running_stats()
                module.momentum = None  # a plain average over the calibration passes
        model.train()
        with torch.no_grad():
            for _ in range(3):
                model((batch - 0.45) / 0.25)
    return model.eval()
