"""Ensembles: several embedders' vectors concatenated, optionally reduced by a fitted PCA.

The GUIE recipe: concatenate the L2-normalised embeddings of a few models, then bring the
result back to the target size with PCA fitted on training embeddings. The ensemble takes
the input of its first member and converts it for the others, so it plugs into
:class:`~openrecog.models.encoder.ImageEncoder`, galleries and artifacts like one model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from openrecog.config import ModelConfig
from openrecog.models.embedder import Embedder, resolve_preprocessing
from openrecog.models.pca import PCAProjection
from openrecog.models.preprocess import convert_preprocessing
from openrecog.models.tta import check_tta_mode


class EnsembleEmbedder(nn.Module):
    """Concatenated member embeddings → optional PCA → L2 normalisation.

    Args:
        members: two or more embedders; the input is preprocessed for ``members[0]``.
        pca_dim: reduce the concatenation to this size (fit with :meth:`fit_pca` or
            :func:`fit_ensemble`); None keeps the full concatenation.

    Attributes:
        config: ``members[0]``'s config with ``pca_dim`` set to the ensemble's; it gives the
            input preprocessing (size, mean, std) like a single model's config.
        embedding_dim: length of the output vectors.
        concat_dim: length of the concatenation before the PCA.

    Raises:
        ValueError: fewer than two members, or ``pca_dim`` not below the concatenated size.
    """

    def __init__(self, members: Sequence[Embedder], pca_dim: int | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 models (got {len(members)})")
        self.members = nn.ModuleList(members)
        self._preprocessing = [resolve_preprocessing(m.config) for m in members]
        self.concat_dim = sum(m.embedding_dim for m in members)
        self.pca: PCAProjection | None = None
        if pca_dim is not None:
            if not 2 <= pca_dim < self.concat_dim:
                raise ValueError(
                    f"pca_dim must be between 2 and {self.concat_dim - 1}, below the "
                    f"concatenated embedding size {self.concat_dim} (got {pca_dim})"
                )
            self.pca = PCAProjection(self.concat_dim, pca_dim)
        self.config = members[0].config.model_copy(update={"pca_dim": pca_dim})
        self.embedding_dim = pca_dim if pca_dim is not None else self.concat_dim

    @property
    def pca_dim(self) -> int | None:
        """The PCA target size, or None without a PCA."""
        return self.pca.out_dim if self.pca is not None else None

    def member_inputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images`` (preprocessed for member 0) converted for every member, in order."""
        source = self._preprocessing[0]
        inputs = [images]
        for pre in self._preprocessing[1:]:
            inputs.append(
                convert_preprocessing(
                    images,
                    source["mean"],
                    source["std"],
                    pre["mean"],
                    pre["std"],
                    pre["image_size"],
                )
            )
        return inputs

    def forward_concat(self, images: torch.Tensor) -> torch.Tensor:
        """The members' L2-normalised embeddings (their TTA applies), concatenated."""
        parts = [m(x) for m, x in zip(self.members, self.member_inputs(images), strict=True)]
        return torch.cat(parts, dim=-1)

    def forward_unnormalized(self, images: torch.Tensor) -> torch.Tensor:
        """The embedding before the final L2 normalisation (after the PCA, if any)."""
        concat = self.forward_concat(images)
        return self.pca(concat) if self.pca is not None else concat

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised float32 embeddings ``(B, embedding_dim)``."""
        return F.normalize(self.forward_unnormalized(images).float(), dim=-1)

    def set_tta(self, mode: str) -> EnsembleEmbedder:
        """Set test-time augmentation ``mode`` on every member (and ``config``); returns self."""
        check_tta_mode(mode)
        for member in self.members:
            member.set_tta(mode)
        self.config = self.config.model_copy(update={"tta": mode})
        return self

    def member_configs(self) -> list[ModelConfig]:
        """The members' configurations, in order."""
        return [m.config for m in self.members]


def fit_ensemble(
    models: Sequence[Embedder],
    dataset: Dataset | None,
    pca_dim: int | None,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[EnsembleEmbedder, dict[str, Any]]:
    """An ensemble of ``models`` whose PCA (if ``pca_dim``) is fitted on ``dataset``.

    The dataset yields ``(PIL image, label)``; it is preprocessed for ``models[0]`` and may
    be None without a PCA. The members are shared with ``models``, not copied. Returns the
    ensemble (eval mode, on the device the embeddings were computed on) and fit statistics.

    Raises:
        ValueError: fewer than two models, a bad ``pca_dim``, or no / too few images for
            the PCA.
    """
    from openrecog.models.encoder import ImageEncoder

    ensemble = EnsembleEmbedder(models, pca_dim)
    stats: dict[str, Any] = {"members": len(models), "concat_dim": ensemble.concat_dim}
    if ensemble.pca is None:
        return ensemble.eval(), stats
    if dataset is None:
        raise ValueError("fitting the ensemble's PCA needs a dataset")
    # The PCA is fitted on the concatenation, so embed with a PCA-free ensemble that
    # shares the same members.
    full = EnsembleEmbedder(list(ensemble.members), None)
    encoder = ImageEncoder(full, batch_size=batch_size)
    embeddings = encoder.encode_dataset(dataset, progress=progress)
    stats.update(ensemble.pca.fit(embeddings))
    stats["fit_images"] = len(embeddings)
    return ensemble.to(encoder.device).eval(), stats
