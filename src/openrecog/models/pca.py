"""PCA to a smaller embedding, fitted on training embeddings and stored in the model.

GUIE solutions trained 256–1024-d embeddings and reduced them to the 64-d limit with PCA
fitted on training data; doing the projection inside the model keeps one artifact, one
``encode`` and one index dimension. The projection is a fixed linear map (buffers, not
parameters): ``normalize((normalize(e) - mean) @ components.T)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from openrecog.config import ModelConfig


class PCAProjection(nn.Module):
    """Centre and project L2-normalised embeddings onto fitted principal components."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        # out_dim == in_dim is no reduction, but a learnt square projection (the image side
        # of a cross-modal model, openrecog.models.crossmodal) is stored this way.
        if not 2 <= out_dim <= in_dim:
            raise ValueError(f"pca_dim must be between 2 and {in_dim} (got {out_dim})")
        self.register_buffer("mean", torch.zeros(in_dim))
        # Identity-like start: an unfitted projection keeps the first out_dim coordinates.
        self.register_buffer("components", torch.eye(out_dim, in_dim))
        self.out_dim = out_dim

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Project ``(B, in_dim)`` embeddings to ``(B, out_dim)`` (not re-normalised)."""
        centred = F.normalize(embeddings.float(), dim=-1) - self.mean
        return centred @ self.components.T

    @torch.no_grad()
    def fit(self, embeddings: np.ndarray | torch.Tensor) -> dict[str, float]:
        """Fit mean and components to ``(N, in_dim)`` embeddings; returns explained variance."""
        x = F.normalize(torch.as_tensor(np.asarray(embeddings), dtype=torch.float64), dim=-1)
        if x.shape[0] <= self.out_dim or x.shape[1] != self.mean.numel():
            raise ValueError(
                f"need more than {self.out_dim} embeddings of size {self.mean.numel()} "
                f"to fit PCA (got {tuple(x.shape)})"
            )
        mean = x.mean(dim=0)
        # Right singular vectors of the centred data are the principal axes, sorted.
        _, singular, vh = torch.linalg.svd(x - mean, full_matrices=False)
        self.mean.copy_(mean.float())
        self.components.copy_(vh[: self.out_dim].float())
        variance = singular.pow(2)
        return {"explained_variance": float(variance[: self.out_dim].sum() / variance.sum())}


def fit_pca_model(
    model: nn.Module,
    dataset: Dataset,
    dim: int,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[nn.Module, dict[str, float]]:
    """A copy of ``model`` whose output is reduced to ``dim`` by PCA fitted on ``dataset``.

    Returns the new :class:`~openrecog.models.Embedder` (eval mode) and fit statistics.
    """
    from openrecog.models.embedder import Embedder
    from openrecog.models.encoder import ImageEncoder

    if model.config.pca_dim is not None:
        raise ValueError("the model already ends in a PCA projection; start from its base model")
    embeddings = ImageEncoder(model, batch_size=batch_size).encode_dataset(
        dataset, progress=progress
    )
    config = ModelConfig.model_validate({**model.config.model_dump(), "pca_dim": dim})
    reduced = Embedder(config, load_pretrained=False)
    missing, unexpected = reduced.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not key.startswith("pca.") for key in missing):
        raise ValueError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    stats = reduced.pca.fit(embeddings)
    stats["fit_images"] = float(len(embeddings))
    return reduced.eval(), stats
