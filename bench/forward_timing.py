"""Median timings shared by the benchmarks: any call, and a PyTorch forward on one CPU thread."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_ms(work: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``work()`` in milliseconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


@torch.inference_mode()
def forward_ms_per_image(
    model: torch.nn.Module, batch: int, image_size: int, repeats: int, warmup: int
) -> float:
    """Median forward time per image in ms on one CPU thread, after ``warmup`` passes.

    The caller's torch thread count is restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model.eval()
        x = torch.randn(batch, 3, image_size, image_size)
        return median_ms(lambda: model(x), repeats, warmup) / batch
    finally:
        torch.set_num_threads(threads)
