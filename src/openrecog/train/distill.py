"""Feature distillation from a frozen teacher network.

DocClassifier distils CLIP image features into its small student; GUIE solutions keep a
large model's general-purpose features in a compact embedding the same way. The student's
embedding is mapped by a trained linear projection to the teacher's feature size, so the
student's dimension is free, and pulled towards the teacher's feature of the *same*
augmented view.

``kind=kl`` is USI's logit distillation instead: the teacher is an ImageNet classifier, the
student's embedding goes through a trained linear classifier onto the teacher's classes,
and the loss is ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` (USI: ``T = 1``, weight ``α = 5``).

``kind=relation`` distils the *geometry* of the teacher's features rather than the features:
for every image of the batch, the softmax over its cosine similarities to the other images
(centred features, temperature ``T``), teacher vs student, compared by KL (the relational
distillation of CompRess and SEED, on in-batch neighbours). It needs no projection, so no
trained layer can absorb the loss while the embedding drifts away from the teacher's
neighbourhoods, and it asks only for what retrieval uses: which images are near which.

``teacher: initial`` is the student itself, frozen as training starts (learning without
forgetting): a fine-tune, or a neck trained on documents, keeps the neighbourhoods its
starting point gets right elsewhere. While the student's trunk is still untouched the
teacher reuses the student's feature maps and runs only its own neck.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from openrecog.config import INITIAL_TEACHER, DistillConfig
from openrecog.models import Embedder, load_model, resolve_preprocessing
from openrecog.models.preprocess import convert_preprocessing
from openrecog.models.pretrained import has_offline_weights, load_offline_pretrained

DISTILL_KINDS: tuple[str, ...] = ("cosine", "mse", "kl", "relation")
# kl: USI's T = 1; relation: peaked on the nearest neighbours of centred cosines in [-1, 1].
DEFAULT_TEMPERATURE: dict[str, float] = {"kl": 1.0, "relation": 0.1}


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

    @torch.no_grad()
    def from_features(self, features: torch.Tensor) -> torch.Tensor:
        """Teacher embeddings from the student's feature maps.

        For an Embedder teacher whose trunk is the student's, as ``teacher: initial`` is
        until the student's trunk first trains.
        """
        return self.model.forward_head(features).float()


def build_distillation(
    cfg: DistillConfig,
    student: Embedder,
    student_mean: list[float],
    student_std: list[float],
) -> tuple[FrozenTeacher, nn.Module] | None:
    """The frozen teacher and the trainable projection for ``cfg`` (None if no teacher).

    ``kind=relation`` compares similarities, not vectors: its "projection" is the identity.
    ``teacher: initial`` copies ``student`` as it is now; a trainer that changes the student
    before the first step (the neck's PCA start) refreshes the copy with
    :func:`refresh_initial_teacher`.
    """
    if cfg.teacher is None:
        return None
    if cfg.teacher == INITIAL_TEACHER:
        network: nn.Module = copy.deepcopy(student)
    elif cfg.kind == "kl":
        network = load_classifier_teacher(cfg.teacher)
    else:
        network = load_model(cfg.teacher)
    teacher = FrozenTeacher(network, student_mean, student_std, cfg.image_size)
    if cfg.kind == "relation":
        return teacher, nn.Identity()
    # The kl projection is the student's classifier over the teacher's classes (with bias).
    projection = nn.Linear(student.embedding_dim, teacher.feature_dim, bias=cfg.kind == "kl")
    return teacher, projection


def refresh_initial_teacher(teacher: FrozenTeacher, student: Embedder) -> None:
    """Make a ``teacher: initial`` copy the student as it is now (weights and buffers)."""
    teacher.model.load_state_dict(student.state_dict())
    teacher.model.eval()


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


def relation_distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL between the teacher's and the student's in-batch neighbour distributions.

    Row ``i`` of each side is ``softmax_j(cos(x_i, x_j) / T)`` over the other images
    ``j ≠ i``, after subtracting the batch mean from the features: ImageNet GAP features are
    non-negative, so their raw cosines all sit near 0.5–0.9, while a normalised embedding's
    spread over [-1, 1]; centring compares the two on the same footing. Batch mean of
    ``KL(teacher row ‖ student row)``; zero (with a gradient path) below 3 images, where the
    neighbour distribution is trivial.
    """
    n = student.shape[0]
    if n < 3:
        return student.sum() * 0.0
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=student.device)

    def neighbour_log_probs(features: torch.Tensor) -> torch.Tensor:
        centred = F.normalize(features - features.mean(dim=0, keepdim=True), dim=-1)
        logits = (centred @ centred.T)[off_diagonal].view(n, n - 1) / temperature
        return F.log_softmax(logits, dim=-1)

    return F.kl_div(
        neighbour_log_probs(student),
        neighbour_log_probs(teacher),
        log_target=True,
        reduction="batchmean",
    )


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float | None = None
) -> torch.Tensor:
    """Distance between projected student outputs and teacher outputs, batch mean.

    ``cosine``: ``1 - cos``; ``mse``: squared distance between the L2-normalised vectors
    (scale-free, so a teacher with large raw activations does not swamp the margin loss);
    ``kl``: ``T² · KL(softmax(teacher/T) ‖ softmax(student/T))`` over logits (Hinton et al.;
    the ``T²`` keeps gradient size independent of ``T``); ``relation``: see
    :func:`relation_distillation_loss`. ``temperature`` None: :data:`DEFAULT_TEMPERATURE`.
    """
    if temperature is None:
        temperature = DEFAULT_TEMPERATURE.get(kind, 1.0)
    if kind == "relation":
        return relation_distillation_loss(student, teacher, temperature)
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
