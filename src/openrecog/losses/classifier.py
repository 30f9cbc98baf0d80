"""Closed-set classification head: an (optionally hidden-layer) classifier and cross-entropy.

``L = CE_ε(f(x), y)`` with label smoothing ``ε``: the target puts ``1 − ε`` on ``y`` and
spreads ``ε`` uniformly over all classes. Unlike :class:`~openrecog.losses.softmax.SoftmaxHead`
the embedding is *not* L2-normalised first: this head is for accuracy on the training
classes (the CP2 recipe), not for the geometry of the embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClassifierHead(nn.Module):
    """``embedding → [GELU → Dropout → Linear → BN] → GELU/none → Dropout → Linear`` + CE.

    With ``hidden_dim`` the head is the tail of the CP2 report's classifier (its first
    ``Linear → BN`` is the model's neck with ``norm: bn``): ``GELU → Dropout → Linear →
    BatchNorm1d → GELU → Dropout → Linear``. Without it, ``Dropout → Linear``. Same interface
    as :class:`~openrecog.losses.partial_fc.PartialFC` (one unsampled shard).

    Args:
        embedding_size: Embedding dimension.
        num_classes: Number of classes.
        hidden_dim: Width of the hidden layer (None: a single Linear).
        dropout: Dropout before each Linear.
        label_smoothing: ε of the smoothed cross-entropy.
    """

    def __init__(
        self,
        embedding_size: int,
        num_classes: int,
        hidden_dim: int | None = None,
        dropout: float = 0.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = embedding_size
        if hidden_dim is not None:
            layers += [nn.GELU(), nn.Dropout(dropout), nn.Linear(width, hidden_dim)]
            layers += [nn.BatchNorm1d(hidden_dim), nn.GELU()]
            width = hidden_dim
        layers += [nn.Dropout(dropout), nn.Linear(width, num_classes)]
        self.classifier = nn.Sequential(*layers)
        self.label_smoothing = label_smoothing
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.class_start, self.num_local = 0, num_classes

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, num_classes)`` of unnormalised embeddings ``(B, D)``."""
        return self.classifier(embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean label-smoothed cross-entropy of ``embeddings`` w.r.t. ``labels`` ``(B,)``."""
        return F.cross_entropy(
            self.logits(embeddings).float(),
            labels.reshape(-1).long(),
            label_smoothing=self.label_smoothing,
        )
