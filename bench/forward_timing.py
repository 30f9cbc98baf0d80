"""Median forward time of a PyTorch model on one CPU thread (shared by the benchmarks)."""

from __future__ import annotations

import statistics
import time

import torch


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
        for _ in range(warmup):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append((time.perf_counter() - start) / batch * 1000)
        return statistics.median(times)
    finally:
        torch.set_num_threads(threads)
