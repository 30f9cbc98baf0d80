"""Plain softmax baseline: a biased linear classifier and cross-entropy.

``z = W · normalize(x) + b`` and ``L = mean_i [ −log softmax(z_i)_{y_i} ]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SoftmaxHead(nn.Module):
    """Linear classifier with bias over (optionally L2-normalised) embeddings + cross-entropy.

    Exposes the same ``forward(embeddings, labels) -> loss`` / ``logits(embeddings)`` interface
    as :class:`~openrecog.losses.partial_fc.PartialFC` (always a single, unsampled shard).

    Args:
        embedding_size: Embedding dimension.
        num_classes: Number of classes.
        normalize: L2-normalise embeddings first, as the cosine heads do, so the learned
            embedding geometry is comparable at retrieval time.

    """

    def __init__(self, embedding_size: int, num_classes: int, normalize: bool = True) -> None:
        super().__init__()
        self.fc = nn.Linear(embedding_size, num_classes)
        self.normalize = normalize
        self.embedding_size, self.num_classes = embedding_size, num_classes
        self.class_start, self.num_local = 0, num_classes

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class scores ``(B, num_classes)``; raw linear outputs, not cosines."""
        return self.fc(F.normalize(embeddings) if self.normalize else embeddings)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return the mean cross-entropy of ``embeddings`` ``(B, D)`` w.r.t. ``labels`` ``(B,)``."""
        return F.cross_entropy(self.logits(embeddings).float(), labels.reshape(-1).long())
