"""A closed-set classifier: an :class:`Embedder` plus the ``ce`` head, stored beside the model.

Training with ``loss.name: ce`` saves the usual model artifact (the embedding model, usable
for galleries as any other) and, in the same folder, ``classifier.safetensors`` with the
head's weights and ``classifier.json`` with its shape, the class names and a checksum.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from openrecog.config import ModelConfig
from openrecog.losses.classifier import ClassifierHead
from openrecog.models.artifact import ArtifactError, load_artifact
from openrecog.models.embedder import Embedder
from openrecog.storage import read_json, sha256_file

HEAD_WEIGHTS = "classifier.safetensors"
HEAD_CONFIG = "classifier.json"


class Classifier(nn.Module):
    """Images → class logits: ``head.logits(embedder.forward_unnormalized(images))``.

    Attributes:
        embedder: the embedding model.
        head: the trained :class:`~openrecog.losses.classifier.ClassifierHead`.
        class_names: the name of each output.
    """

    def __init__(self, embedder: Embedder, head: ClassifierHead, class_names: list[str]) -> None:
        super().__init__()
        if head.num_classes != len(class_names):
            raise ValueError(f"head has {head.num_classes} outputs for {len(class_names)} names")
        self.embedder = embedder
        self.head = head
        self.class_names = list(class_names)

    @property
    def config(self) -> ModelConfig:
        """The embedder's model configuration (preprocessing, image size)."""
        return self.embedder.config

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, num_classes)``."""
        return self.head.logits(self.embedder.forward_unnormalized(images).float())


def save_classifier_head(head: ClassifierHead, folder: str | Path, class_names: list[str]) -> None:
    """Write the head's weights and description into the model artifact ``folder``."""
    folder = Path(folder)
    save_file({k: v.contiguous() for k, v in head.state_dict().items()}, str(folder / HEAD_WEIGHTS))
    hidden = [m for m in head.classifier if isinstance(m, nn.Linear)][:-1]
    dropouts = [m.p for m in head.classifier if isinstance(m, nn.Dropout)]
    description = {
        "embedding_size": head.embedding_size,
        "num_classes": head.num_classes,
        "hidden_dim": hidden[0].out_features if hidden else None,
        "dropout": dropouts[0] if dropouts else 0.0,
        "label_smoothing": head.label_smoothing,
        "classes": list(class_names),
        "weights_sha256": sha256_file(folder / HEAD_WEIGHTS),
    }
    (folder / HEAD_CONFIG).write_text(json.dumps(description, indent=2), encoding="utf-8")


def load_classifier(path: str | Path) -> Classifier:
    """Load a model artifact written by a ``loss.name: ce`` run as a :class:`Classifier`.

    Raises:
        ArtifactError: the folder has no classifier head, or its files do not match.
    """
    path = Path(path)
    if not (path / HEAD_CONFIG).is_file():
        raise ArtifactError(f"{path}: no {HEAD_CONFIG}; train with loss.name=ce for a classifier")
    info = read_json(path / HEAD_CONFIG, ArtifactError)
    if sha256_file(path / HEAD_WEIGHTS) != info.get("weights_sha256"):
        raise ArtifactError(f"{path / HEAD_WEIGHTS}: checksum mismatch")
    embedder = load_artifact(path)
    if not isinstance(embedder, Embedder):
        raise ArtifactError(f"{path}: an ensemble cannot carry a classifier head")
    head = ClassifierHead(
        info["embedding_size"],
        info["num_classes"],
        info["hidden_dim"],
        info["dropout"],
        info["label_smoothing"],
    )
    head.load_state_dict(load_file(str(path / HEAD_WEIGHTS)))
    return Classifier(embedder, head.eval(), info["classes"]).eval()
