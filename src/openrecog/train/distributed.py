"""Data-parallel training across processes (torchrun) with a model-parallel PartialFC head.

Every rank runs the same backbone and neck on its own slice of the global batch; their
gradients are averaged across ranks after each backward pass. The classification head is
*not* replicated: each rank owns a shard of the class centres (see ``losses/partial_fc.py``),
so its parameters and optimizer state are never averaged, and gradient clipping has to sum
the squared norms of all shards.

Why not ``DistributedDataParallel``: the trainer calls the backbone and the neck separately,
freezes one or the other in alternating/LP-FT phases and runs the head twice per step with
MixUp. DDP's reducer assumes one ``forward()`` per backward and a fixed set of parameters
with gradients (``find_unused_parameters`` would have to search the graph every step). One
flattened all-reduce per step after ``backward()`` is simpler, and for the small backbones
openrecog trains the lost overlap of communication with compute costs little.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import distributed as dist
from torch import nn
from torch.utils.data import Sampler

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) training job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, evaluates and saves artifacts."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment, if any.

    Without ``WORLD_SIZE`` > 1 in the environment (a plain ``python``/``openrecog`` run) this
    is a single-process context and nothing is initialised. The backend is ``nccl`` when the
    job trains on CUDA and ``gloo`` otherwise; the same code runs on both.

    Args:
        device: the configured ``train.device`` (``auto``, ``cpu``, ``cuda``, ...).
        timeout_s: how long collectives wait for a slow rank (rank 0 evaluates alone).

    Raises:
        RuntimeError: the environment names a distributed job that cannot be joined.
    """
    if dist.is_available() and dist.is_initialized():
        backend = dist.get_backend()
        return DistributedContext(
            dist.get_rank(), dist.get_world_size(), _local_rank(), str(backend)
        )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedContext()
    missing = [name for name in ENV_VARS if name not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} not set: start distributed "
            "training with torchrun (torchrun --nproc_per_node=N -m openrecog.train CONFIG)"
        )
    if not dist.is_available():
        raise RuntimeError("this PyTorch build has no torch.distributed support")
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    backend = "nccl" if use_cuda else "gloo"
    local_rank = _local_rank()
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, backend)


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_device(context: DistributedContext, device: str) -> str:
    """This rank's device: ``cuda`` becomes ``cuda:<local_rank>`` in a multi-GPU job."""
    if context.enabled and context.backend == "nccl" and device in ("auto", "cuda"):
        return f"cuda:{context.local_rank}"
    return device


def shutdown_distributed(context: DistributedContext) -> None:
    """Leave the process group (no-op for a single process)."""
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(context: DistributedContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if context.enabled:
        dist.barrier()


@torch.no_grad()
def broadcast_module(
    module: nn.Module, context: DistributedContext, buffers_only: bool = False
) -> None:
    """Copy rank 0's parameters (and/or buffers) to every rank.

    At the start this guarantees identical replicas; after each step it keeps the BatchNorm
    running statistics, which every rank updates from its own slice, equal (as DDP does).
    """
    if not context.enabled:
        return
    tensors = list(module.buffers()) if buffers_only else [*module.parameters(), *module.buffers()]
    for tensor in tensors:
        dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def average_gradients(params: Iterable[nn.Parameter], context: DistributedContext) -> None:
    """Average the gradients of replicated parameters over ranks in one flat all-reduce.

    Parameters without a gradient are skipped; every rank is in the same training phase, so
    they are the same parameters everywhere.
    """
    if not context.enabled:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    by_kind: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for grad in grads:
        by_kind.setdefault((grad.dtype, grad.device), []).append(grad)
    for group in by_kind.values():
        flat = torch.cat([g.reshape(-1) for g in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= context.world_size
        offset = 0
        for grad in group:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()


@torch.no_grad()
def clip_grad_norm(
    replicated: Iterable[nn.Parameter],
    sharded: Iterable[nn.Parameter],
    max_norm: float,
    context: DistributedContext,
) -> float:
    """Clip by the global gradient norm of a model whose head is sharded across ranks.

    Replicated parameters count once; the shards' squared norms are summed over ranks, so the
    result equals ``clip_grad_norm_`` over the whole (unsharded) model.
    """
    replicated = [p.grad for p in replicated if p.grad is not None]
    sharded = [p.grad for p in sharded if p.grad is not None]
    all_grads = replicated + sharded
    if not all_grads:
        return 0.0
    device = all_grads[0].device
    zero = torch.zeros((), device=device)
    rep_sq = sum((g.float().pow(2).sum() for g in replicated), zero)
    shard_sq = sum((g.float().pow(2).sum() for g in sharded), zero)
    if context.enabled:
        dist.all_reduce(shard_sq, op=dist.ReduceOp.SUM)
    total = float((rep_sq + shard_sq).sqrt())
    scale = max_norm / (total + 1e-6)
    if scale < 1.0:
        for grad in all_grads:
            grad.mul_(scale)
    return total


def all_ranks_sum(value: float, context: DistributedContext) -> float:
    """Sum a number over ranks (identity for a single process)."""
    if not context.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    if context.backend == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return float(tensor.item())


class RankSliceBatchSampler(Sampler[list]):
    """This rank's share of each global batch drawn by another batch sampler.

    The wrapped sampler draws ``world_size × batch_size`` items per step; rank ``r`` takes
    items ``[r·B, (r+1)·B)``. So N ranks together see exactly the batches a single process
    with an N-times larger batch would see (same items, same augmentation seeds), and
    ``m_per_class`` groups stay whole on one rank because ``B`` is a multiple of ``m``.
    """

    def __init__(self, sampler: Sampler, batch_size: int, rank: int, world_size: int) -> None:
        self.sampler, self.batch_size = sampler, batch_size
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list]:
        """Yield this rank's slice of every global batch."""
        begin = self.rank * self.batch_size
        for batch in self.sampler:
            if len(batch) != self.batch_size * self.world_size:
                raise RuntimeError(
                    f"a global batch has {len(batch)} items, not {self.world_size} ranks × "
                    f"{self.batch_size}: ranks would get unequal batches"
                )
            yield batch[begin : begin + self.batch_size]

    def __getattr__(self, name: str):
        # set_epoch / state_dict / seed ... belong to the wrapped sampler.
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)
