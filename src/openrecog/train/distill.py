"""Feature distillation from a frozen teacher network.

DocClassifier distils CLIP image features into its small student; GUIE solutions keep a
large model's general-purpose features in a compact embedding the same way. The student's
embedding is mapped by a trained linear projection to the teacher's feature size, so the
student's dimension is free, and pulled towards the teacher's feature of the *same*
augmented view.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openrecog.config import DistillConfig
from openrecog.models import Embedder, load_model, resolve_preprocessing

DISTILL_KINDS: tuple[str, ...] = ("cosine", "mse")


class FrozenTeacher:
    """A frozen :class:`Embedder` that maps the student's input batches to teacher features.

    The student's views are re-normalised to the teacher's mean/std and, if ``image_size``
    is given, resized, so one augmented view feeds both networks. Not an ``nn.Module`` on
    purpose: the teacher's weights must not enter the student's checkpoints or optimizer.
    """

    def __init__(
        self,
        teacher: Embedder,
        student_mean: list[float],
        student_std: list[float],
        image_size: int | None = None,
    ) -> None:
        self.model = teacher.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        pre = resolve_preprocessing(teacher.config)
        self.image_size = image_size
        self._student = _stats(student_mean, student_std)
        self._teacher = _stats(pre["mean"], pre["std"])
        self.feature_dim = teacher.embedding_dim

    def to(self, device: torch.device, memory_format: torch.memory_format) -> FrozenTeacher:
        """Move the teacher to ``device`` in ``memory_format``; returns self."""
        self.model = self.model.to(device, memory_format=memory_format)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher features ``(B, feature_dim)`` (before any L2 normalisation)."""
        s_mean, s_std = (t.to(images.device, images.dtype) for t in self._student)
        t_mean, t_std = (t.to(images.device, images.dtype) for t in self._teacher)
        x = (images * s_std + s_mean - t_mean) / t_std
        if self.image_size and self.image_size != x.shape[-1]:
            x = F.interpolate(
                x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True
            )
        return self.model.forward_unnormalized(x).float()


def _stats(mean: list[float], std: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)


def build_distillation(
    cfg: DistillConfig,
    student_dim: int,
    student_mean: list[float],
    student_std: list[float],
) -> tuple[FrozenTeacher, nn.Linear] | None:
    """The frozen teacher and the trainable projection for ``cfg`` (None if no teacher)."""
    if cfg.teacher is None:
        return None
    teacher = FrozenTeacher(load_model(cfg.teacher), student_mean, student_std, cfg.image_size)
    projection = nn.Linear(student_dim, teacher.feature_dim, bias=False)
    return teacher, projection


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str) -> torch.Tensor:
    """Distance between projected student features and teacher features, batch mean.

    ``cosine``: ``1 - cos``; ``mse``: squared distance between the L2-normalised vectors
    (scale-free, so a teacher with large raw activations does not swamp the margin loss).
    """
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind == "mse":
        diff = F.normalize(student, dim=-1) - F.normalize(teacher, dim=-1)
        return diff.pow(2).sum(dim=-1).mean()
    raise ValueError(f"unknown distillation kind {kind!r}; choose one of {DISTILL_KINDS}")
