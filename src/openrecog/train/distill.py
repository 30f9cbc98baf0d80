"""Feature distillation from a frozen teacher network.

DocClassifier distils CLIP image features into its small student; GUIE solutions keep a
large model's general-purpose features in a compact embedding the same way. The student's
embedding is mapped by a trained linear projection to the teacher's feature size, so the
student's dimension is free, and pulled towards the teacher's feature of the *same*
augmented view.

``kind=kl`` is USI's logit distillation instead: the teacher is an ImageNet classifier, the
student's embedding goes through a trained linear classifier onto the teacher's classes,
and the loss is ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` (USI: ``T = 1``, weight ``α = 5``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from openrecog.config import DistillConfig
from openrecog.models import Embedder, load_model, resolve_preprocessing
from openrecog.models.preprocess import convert_preprocessing
from openrecog.models.pretrained import has_offline_weights, load_offline_pretrained

DISTILL_KINDS: tuple[str, ...] = ("cosine", "mse", "kl")


class FrozenTeacher:
    """A frozen network that maps the student's input batches to teacher features or logits.

    The student's views are re-normalised to the teacher's mean/std and, if ``image_size``
    is given, resized, so one augmented view feeds both networks. Not an ``nn.Module`` on
    purpose: the teacher's weights must not enter the student's checkpoints or optimizer.

    Args:
        teacher: an :class:`Embedder` (gives its unnormalised embedding) or a timm classifier
            (gives its logits).
        student_mean, student_std: normalisation of the student's input batches.
        image_size: teacher input size (None: the student's size).
    """

    def __init__(
        self,
        teacher: nn.Module,
        student_mean: list[float],
        student_std: list[float],
        image_size: int | None = None,
    ) -> None:
        self.model = teacher.eval()
        for param in self.model.parameters():
            param.requires_grad_(False)
        if isinstance(teacher, Embedder):
            pre = resolve_preprocessing(teacher.config)
            mean, std = pre["mean"], pre["std"]
            self.feature_dim = teacher.embedding_dim
            self._forward = teacher.forward_unnormalized
        else:
            mean, std = teacher.pretrained_cfg["mean"], teacher.pretrained_cfg["std"]
            self.feature_dim = teacher.num_classes
            self._forward = teacher
        self.image_size = image_size
        self._student = (list(student_mean), list(student_std))
        self._teacher = (list(mean), list(std))

    def to(self, device: torch.device, memory_format: torch.memory_format) -> FrozenTeacher:
        """Move the teacher to ``device`` in ``memory_format``; returns self."""
        self.model = self.model.to(device, memory_format=memory_format)
        return self

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher features or logits ``(B, feature_dim)`` (before any L2 normalisation)."""
        x = convert_preprocessing(images, *self._student, *self._teacher, self.image_size)
        return self._forward(x).float()


def build_distillation(
    cfg: DistillConfig,
    student_dim: int,
    student_mean: list[float],
    student_std: list[float],
) -> tuple[FrozenTeacher, nn.Linear] | None:
    """The frozen teacher and the trainable projection for ``cfg`` (None if no teacher)."""
    if cfg.teacher is None:
        return None
    if cfg.kind == "kl":
        network: nn.Module = load_classifier_teacher(cfg.teacher)
    else:
        network = load_model(cfg.teacher)
    teacher = FrozenTeacher(network, student_mean, student_std, cfg.image_size)
    # The kl projection is the student's classifier over the teacher's classes (with bias).
    projection = nn.Linear(student_dim, teacher.feature_dim, bias=cfg.kind == "kl")
    return teacher, projection


def load_classifier_teacher(name: str) -> nn.Module:
    """A timm ImageNet classifier with offline weights, by timm name or registered config.

    ``tf_efficientnet_lite2`` and ``lite2_gap_imagenet`` both give EfficientNet-Lite2 with
    its 1000-class head.

    Raises:
        ValueError: no offline classifier weights exist for ``name``.
    """
    import timm

    from openrecog.models import get_model_config, list_models

    backbone = name
    if name in {m.name for m in list_models()}:
        backbone = get_model_config(name).backbone
    if not has_offline_weights(backbone):
        raise ValueError(
            f"distill.kind=kl needs an ImageNet classifier teacher with offline weights; "
            f"{name!r} has none (use tf_efficientnet_lite0/1/2)"
        )
    model = timm.create_model(backbone, pretrained=False)
    load_offline_pretrained(model, backbone)
    return model


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float = 1.0
) -> torch.Tensor:
    """Distance between projected student outputs and teacher outputs, batch mean.

    ``cosine``: ``1 - cos``; ``mse``: squared distance between the L2-normalised vectors
    (scale-free, so a teacher with large raw activations does not swamp the margin loss);
    ``kl``: ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))`` over logits (Hinton et al.;
    the ``T²`` keeps gradient size independent of ``T``).
    """
    if kind == "kl":
        log_p_student = F.log_softmax(student / temperature, dim=-1)
        log_p_teacher = F.log_softmax(teacher / temperature, dim=-1)
        kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean")
        return kl * temperature**2
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student, teacher, dim=-1)).mean()
    if kind == "mse":
        diff = F.normalize(student, dim=-1) - F.normalize(teacher, dim=-1)
        return diff.pow(2).sum(dim=-1).mean()
    raise ValueError(f"unknown distillation kind {kind!r}; choose one of {DISTILL_KINDS}")
