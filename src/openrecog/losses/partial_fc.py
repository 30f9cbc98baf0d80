"""PartialFC: a model-parallel, optionally sampled, margin-softmax classifier (An et al., 2022).

Each of ``world_size`` ranks owns the class centres ``W_r`` of a contiguous shard of classes.
Per step, with ``E`` the embeddings gathered from every rank and ``S_r`` the sampled columns::

    z_r = margin(normalize(E) · normalize(W_r[S_r])ᵀ)            (N, |S_r|) on rank r
    M   = max_r max_j z_rj        Z = Σ_r Σ_j exp(z_rj − M)       (two all-reduces)
    L   = mean_i [ log Z_i − (z_{i,y_i} − M_i) ]                  (target lives on one rank)

``S_r`` keeps every positive centre of the batch plus uniformly sampled negatives, so that
``|S_r| = max(#positives, int(sample_rate · num_local))``; ``sample_rate = 1`` is the full FC.

Optimiser note: only the sampled rows of ``weight`` enter the graph, so un-sampled rows get
an all-zero gradient, not "no gradient". Plain SGD leaves them as they are, but SGD with
weight decay still shrinks them and momentum/Adam(W) keep moving them with stale state.
insightface avoids this by handing the optimiser only the sampled rows; we accept the drift.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import distributed as dist
from torch import nn

INIT_BLOCK = 4096  # classes per initialisation block (see PartialFC._initial_centres)


def shard_range(num_classes: int, rank: int, world_size: int) -> tuple[int, int]:
    """Return ``(class_start, num_local)`` of ``rank``'s shard; the first ranks get the extra."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + int(rank < extra)


def _is_distributed(world_size: int) -> bool:
    return world_size > 1 and dist.is_available() and dist.is_initialized()


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the loss built on it is replicated, so the gradient passes unchanged."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        return x

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class _AllGather(torch.autograd.Function):
    """Concatenate equal-sized batches of all ranks; backward sums the ranks' partial grads."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        world = dist.get_world_size()
        # × world cancels DDP's gradient averaging of the (replicated) backbone.
        return grad.chunk(world)[dist.get_rank()] * world


def _all_gather(
    emb: torch.Tensor, labels: torch.Tensor, world_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if not _is_distributed(world_size):
        return emb, labels
    parts = [torch.empty_like(labels) for _ in range(world_size)]
    dist.all_gather(parts, labels.contiguous())
    return _AllGather.apply(emb), torch.cat(parts)


def _all_reduce_max(x: torch.Tensor, world_size: int) -> torch.Tensor:
    if _is_distributed(world_size):
        x = x.detach().clone()  # a constant shift: softmax is invariant to it
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def _all_reduce_sum(x: torch.Tensor, world_size: int) -> torch.Tensor:
    return _AllReduceSum.apply(x) if _is_distributed(world_size) else x


def _distributed_softmax_ce(
    logits: torch.Tensor, local_labels: torch.Tensor, world_size: int = 1
) -> torch.Tensor:
    """Mean cross-entropy of a softmax whose columns are split across ranks.

    Rows whose target is on no rank (label ``-1`` everywhere) are ignored.
    """
    has_target = local_labels != -1
    shifted = logits - _all_reduce_max(logits.max(dim=1, keepdim=True).values.detach(), world_size)
    log_z = _all_reduce_sum(shifted.exp().sum(dim=1), world_size).log()
    target = shifted.gather(1, local_labels.clamp_min(0).unsqueeze(1)).squeeze(1)
    target = _all_reduce_sum(target * has_target, world_size)
    valid = _all_reduce_sum(has_target.to(logits.dtype), world_size) > 0
    return ((log_z - target) * valid).sum() / valid.sum().clamp_min(1)


class PartialFC(nn.Module):
    """Sharded, optionally sampled classifier over class centres + margin softmax loss.

    Args:
        margin_loss: Maps ``(cosines (N, C), labels (N,))`` to scaled logits, e.g. ArcFace.
        embedding_size: Embedding dimension.
        num_classes: Total number of classes over all ranks.
        sample_rate: Fraction of this shard's centres used per step (positives always are).
        rank: This process's rank.
        world_size: Number of ranks sharing the classes. Without an initialised process group
            each module only sees its own shard (used to test sharding in one process).
        seed: Seed of the sampling generator (offset by ``rank``); ``None`` draws one.

    """

    def __init__(
        self,
        margin_loss: nn.Module,
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
        rank: int = 0,
        world_size: int = 1,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is out of range for world_size {world_size}")
        if num_classes < world_size:
            raise ValueError(f"num_classes ({num_classes}) < world_size ({world_size})")
        if _is_distributed(world_size) and (dist.get_world_size(), dist.get_rank()) != (
            world_size,
            rank,
        ):
            raise ValueError("rank/world_size disagree with the torch.distributed process group")
        self.margin_loss = margin_loss
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.sample_rate, self.rank, self.world_size = sample_rate, rank, world_size
        self.class_start, self.num_local = shard_range(num_classes, rank, world_size)
        self.num_sample = max(1, int(sample_rate * self.num_local))
        init_seed = int(torch.randint(0, 2**31 - 1, ())) if seed is None else seed
        self.weight = nn.Parameter(self._initial_centres(init_seed))
        self._generator = torch.Generator()
        if seed is None:
            self._generator.seed()
        else:
            self._generator.manual_seed(seed + rank)

    def _initial_centres(self, seed: int) -> torch.Tensor:
        """``N(0, 0.01)`` rows of this shard, equal to the same rows of any other sharding.

        Each block of ``INIT_BLOCK`` classes has its own generator, so ranks draw different
        centres (one shared stream would give every shard the same ones) and a run on N ranks
        starts from exactly the table a single process would draw.
        """
        start, end = self.class_start, self.class_start + self.num_local
        generator, parts = torch.Generator(), []
        for block in range(start // INIT_BLOCK, (end - 1) // INIT_BLOCK + 1):
            first = block * INIT_BLOCK
            rows = min(INIT_BLOCK, self.num_classes - first)
            generator.manual_seed(seed * 1_000_003 + block)
            chunk = torch.normal(0.0, 0.01, (rows, self.embedding_size), generator=generator)
            parts.append(chunk[max(start - first, 0) : min(end - first, rows)])
        return torch.cat(parts)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose this step's centres and remap labels to their columns.

        Args:
            labels: Global class ids ``(N,)``.

        Returns:
            ``(index, local_labels)``: sorted sampled rows of ``weight`` ``(K,)`` and, per
            sample, its column in ``weight[index]`` or ``-1`` if its class is not in the shard.

        """
        labels = labels.reshape(-1).long()
        in_shard = (labels >= self.class_start) & (labels < self.class_start + self.num_local)
        local = torch.where(in_shard, labels - self.class_start, -1)
        if self.sample_rate >= 1.0:
            return torch.arange(self.num_local, device=labels.device), local
        positive = torch.unique(local[in_shard])
        # Drawn on the CPU generator every step so its state alone fixes future samples.
        score = torch.rand(self.num_local, generator=self._generator).to(labels.device)
        score[positive] = 2.0  # above any U[0, 1) draw: positives always win the top-k
        k = max(positive.numel(), self.num_sample)
        index = torch.topk(score, k).indices.sort().values
        return index, torch.where(in_shard, torch.searchsorted(index, local.clamp_min(0)), -1)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine scores ``(B, num_local)`` against all of this rank's centres (no margin).

        Column ``j`` is class ``class_start + j``.
        """
        return F.linear(F.normalize(embeddings), F.normalize(self.weight))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Compute the margin-softmax loss of a batch.

        Args:
            embeddings: This rank's embeddings ``(B, embedding_size)``; ranks need equal ``B``.
            labels: Their global class ids ``(B,)``.

        Returns:
            Scalar mean loss over the batch of all ranks.

        """
        embeddings, labels = _all_gather(embeddings, labels.reshape(-1).long(), self.world_size)
        index, local_labels = self.sample(labels)
        weight = self.weight if self.sample_rate >= 1.0 else self.weight[index]
        logits = F.linear(F.normalize(embeddings), F.normalize(weight))
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()
        logits = self.margin_loss(logits.clamp(-1.0, 1.0), local_labels)
        return _distributed_softmax_ce(logits, local_labels, self.world_size)

    def get_extra_state(self) -> dict:
        """Return the sampling RNG state, saved in ``state_dict()`` for exact resumption."""
        shard = (self.class_start, self.num_local)
        return {"rng_state": self._generator.get_state(), "shard": shard}

    def set_extra_state(self, state: dict) -> None:
        """Restore the sampling RNG state saved by :meth:`get_extra_state`."""
        if tuple(state["shard"]) != (self.class_start, self.num_local):
            raise ValueError(f"checkpoint is for shard {tuple(state['shard'])}, not this one")
        self._generator.set_state(state["rng_state"])

    def extra_repr(self) -> str:
        """Summarise the shard for ``print(module)``."""
        return (
            f"embedding_size={self.embedding_size}, num_classes={self.num_classes}, "
            f"shard=[{self.class_start}, {self.class_start + self.num_local}), "
            f"sample_rate={self.sample_rate}"
        )
