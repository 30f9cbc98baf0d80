"""The machine a benchmark ran on, for the captions of the tables in docs/benchmarks."""

from __future__ import annotations

import platform
from pathlib import Path

import torch


def machine_name() -> str:
    """CPU model, thread count, torch version, and the GPU if one is visible."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads = torch.get_num_threads()
    gpu = f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU"
    return f"{cpu} ({platform.machine()}), {threads} CPU threads, {gpu}, torch {torch.__version__}"
