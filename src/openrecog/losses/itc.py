"""ALBEF's image–text contrastive loss: momentum encoders, feature queues, momentum distillation.

Follows the ALBEF formulation (Li et al. 2021, ``../shared/seeds``) and its reference code:

* similarities ``s(I, T) = g_v(v)ᵀ g'_w(w')`` of the online image features against the
  momentum text features of the batch *and* of a queue of the last ``M`` batches (and the
  same from text to image), divided by a learnable temperature ``τ`` clamped to
  ``[0.001, 0.5]``;
* targets: the one-hot pairing, or with momentum distillation
  ``α · softmax(s_m / τ) + (1 − α) · one-hot``, where ``s_m`` are the momentum model's own
  similarities — the soft cross-entropy then equals ALBEF's
  ``(1 − α) L_itc + α KL(q ‖ p)`` up to the targets' (constant) entropy;
* ``L = (L_i2t + L_t2i) / 2``;
* after the step, the momentum features of the batch are pushed into the queues, and the
  momentum parameters follow ``θ_m ← m θ_m + (1 − m) θ``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

TEMPERATURE_RANGE = (0.001, 0.5)
"""ALBEF clamps the learnable temperature to this range."""


class FeatureQueue(nn.Module):
    """A ring buffer of the last ``size`` L2-normalised feature vectors (a module buffer).

    Starts as random unit vectors, as in ALBEF and MoCo: the first steps then contrast
    against noise rather than against zeros, which would all score the same.

    Args:
        dim: feature length.
        size: number of vectors kept (``0`` disables the queue).
        seed: seed of the initial random vectors.
    """

    def __init__(self, dim: int, size: int, seed: int = 0) -> None:
        super().__init__()
        if size < 0:
            raise ValueError(f"queue size must be >= 0 (got {size})")
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "features", F.normalize(torch.randn(size, dim, generator=generator), dim=1)
        )
        # Which pair each entry came from (-1: the random start): a queued caption of the same
        # pair as a batch item is a positive, not a negative.
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        """How many vectors the queue holds."""
        return int(self.features.shape[0])

    @torch.no_grad()
    def push(self, features: torch.Tensor, ids: torch.Tensor | None = None) -> None:
        """Replace the oldest entries by ``features`` ``(B, dim)`` (wrapping around).

        Args:
            features: the momentum features of a batch.
            ids: ``(B,)`` their pair ids (see :func:`itc_loss`), or None (-1, unknown).
        """
        if self.size == 0:
            return
        features = features.detach().to(self.features.dtype)
        if ids is None:
            ids = torch.full((features.shape[0],), -1, dtype=torch.long)
        if features.shape[0] > self.size:
            features, ids = features[-self.size :], ids[-self.size :]  # only the newest fit
        start = int(self.pointer)
        positions = ((torch.arange(features.shape[0]) + start) % self.size).to(self.features.device)
        self.features[positions] = features
        self.ids[positions] = ids.to(self.ids.device)
        self.pointer.fill_((start + features.shape[0]) % self.size)


def clamp_temperature(temperature: torch.Tensor) -> None:
    """Keep a learnable temperature in :data:`TEMPERATURE_RANGE` (in place, no gradient)."""
    with torch.no_grad():
        temperature.clamp_(*TEMPERATURE_RANGE)


@torch.no_grad()
def momentum_update(online: nn.Module, momentum: nn.Module, m: float) -> None:
    """``θ_m ← m θ_m + (1 − m) θ`` for every parameter; buffers (BatchNorm) are copied."""
    for p_m, p in zip(momentum.parameters(), online.parameters(), strict=True):
        p_m.mul_(m).add_(p.detach(), alpha=1.0 - m)
    for b_m, b in zip(momentum.buffers(), online.buffers(), strict=True):
        b_m.copy_(b)


def itc_loss(
    image_feat: torch.Tensor,
    text_feat: torch.Tensor,
    image_feat_m: torch.Tensor,
    text_feat_m: torch.Tensor,
    temperature: torch.Tensor,
    image_queue: torch.Tensor | None = None,
    text_queue: torch.Tensor | None = None,
    alpha: float = 0.0,
    ids: torch.Tensor | None = None,
    queue_ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """The (momentum-distilled) image–text contrastive loss of one batch of pairs.

    Args:
        image_feat: ``(B, d)`` L2-normalised image features of the online model.
        text_feat: ``(B, d)`` L2-normalised text features of the online model; row ``i`` is
            the caption of image ``i``.
        image_feat_m: ``(B, d)`` the momentum model's image features (no gradient needed).
        text_feat_m: ``(B, d)`` the momentum model's text features.
        temperature: scalar ``τ`` (learnable; clamp it with :func:`clamp_temperature`).
        image_queue: ``(M, d)`` queued momentum image features (negatives), or None.
        text_queue: ``(M, d)`` queued momentum text features, or None.
        alpha: momentum-distillation weight ``α`` (0: one-hot targets only).
        ids: ``(B,)`` pair ids: items with the same id (e.g. the same caption for several
            images) are all positives of each other, their target weight shared equally, as
            ALBEF's retrieval fine-tuning does with image ids. None: only the diagonal.
        queue_ids: ``(M,)`` pair ids of the queued features (-1: never a positive).

    Returns:
        The scalar loss ``(L_i2t + L_t2i) / 2``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (got {alpha})")
    batch = image_feat.shape[0]
    with torch.no_grad():
        text_all = _with_queue(text_feat_m, text_queue)
        image_all = _with_queue(image_feat_m, image_queue)
        targets = _positive_targets(batch, text_all.shape[0], ids, queue_ids, image_feat.device)
        if alpha > 0:
            i2t_targets = alpha * F.softmax(image_feat_m @ text_all.T / temperature, 1)
            t2i_targets = alpha * F.softmax(text_feat_m @ image_all.T / temperature, 1)
            i2t_targets += (1 - alpha) * targets
            t2i_targets += (1 - alpha) * targets
        else:
            i2t_targets = t2i_targets = targets
    sim_i2t = image_feat @ text_all.T / temperature
    sim_t2i = text_feat @ image_all.T / temperature
    loss_i2t = -(F.log_softmax(sim_i2t, dim=1) * i2t_targets).sum(dim=1).mean()
    loss_t2i = -(F.log_softmax(sim_t2i, dim=1) * t2i_targets).sum(dim=1).mean()
    return (loss_i2t + loss_t2i) / 2


def _positive_targets(
    batch: int,
    columns: int,
    ids: torch.Tensor | None,
    queue_ids: torch.Tensor | None,
    device: torch.device,
) -> torch.Tensor:
    """``(batch, columns)`` target distribution over the batch's and the queue's items."""
    targets = torch.zeros(batch, columns, device=device)
    if ids is None:
        targets[:, :batch] = torch.eye(batch, device=device)
        return targets
    ids = ids.to(device)
    all_ids = ids
    if columns > batch:
        queued = queue_ids if queue_ids is not None else torch.full((columns - batch,), -1)
        all_ids = torch.cat([ids, queued.to(device)])
    positives = (ids[:, None] == all_ids[None, :]).float()
    return positives / positives.sum(dim=1, keepdim=True)


def _with_queue(batch_feat: torch.Tensor, queue: torch.Tensor | None) -> torch.Tensor:
    if queue is None or queue.shape[0] == 0:
        return batch_feat.detach()
    return torch.cat([batch_feat.detach(), queue.detach().to(batch_feat.dtype)])


def itm_hard_negatives(
    image_feat: torch.Tensor, text_feat: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-batch hard negatives for image–text matching, as ALBEF mines them.

    For every image a non-matching caption of the batch is drawn with probability
    ``softmax(s(I, T))`` (its own caption excluded), and for every caption a non-matching
    image likewise: similar-looking wrong pairs are the informative negatives.

    Returns:
        ``(negative_text_index, negative_image_index)``, two ``(B,)`` long tensors.
    """
    batch = image_feat.shape[0]
    if batch < 2:
        raise ValueError("hard negatives need at least 2 pairs in the batch")
    with torch.no_grad():
        sim = (image_feat @ text_feat.T).float()
        eye = torch.eye(batch, dtype=torch.bool, device=sim.device)
        weights_i2t = F.softmax(sim, dim=1).masked_fill(eye, 0) + 1e-9 * (~eye)
        weights_t2i = F.softmax(sim.T, dim=1).masked_fill(eye, 0) + 1e-9 * (~eye)
        negative_text = torch.multinomial(weights_i2t.cpu(), 1, generator=generator).squeeze(1)
        negative_image = torch.multinomial(weights_t2i.cpu(), 1, generator=generator).squeeze(1)
    return negative_text.to(sim.device), negative_image.to(sim.device)
