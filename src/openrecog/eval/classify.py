"""Closed-set classification metrics: top-1 accuracy and cross-entropy on labelled images."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from openrecog.data.transforms import build_eval_transform
from openrecog.models.embedder import resolve_preprocessing


class _Transformed(Dataset):
    def __init__(self, base: Dataset, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return self.transform(image), label


def target_indices(dataset: Dataset, class_names: Sequence[str]) -> list[int]:
    """The index in ``class_names`` of each item's class (matched by name, not by number).

    The evaluation split lists its own classes (e.g. sorted names of its own rows), so a
    class missing from it would shift every index after it; names do not shift.

    Raises:
        ValueError: an item's class is not one of ``class_names``.
    """
    index = {name: i for i, name in enumerate(class_names)}
    names = dataset.class_names  # type: ignore[attr-defined]
    unknown = sorted(set(names) - set(index))
    if unknown:
        raise ValueError(
            f"evaluation classes not among the training classes: {', '.join(unknown[:5])}"
        )
    return [index[names[label]] for label in dataset.labels]  # type: ignore[attr-defined]


@torch.no_grad()
def evaluate_classifier(
    classifier: nn.Module,
    dataset: Dataset,
    class_names: Sequence[str],
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, float]:
    """Top-1 accuracy and mean cross-entropy of ``classifier`` (images → logits).

    Args:
        classifier: a module mapping preprocessed images to ``(B, len(class_names))`` logits,
            with the ``config`` of its embedding model (for the preprocessing).
        dataset: labelled images ``(PIL image, label)`` with ``labels`` and ``class_names``.
        class_names: the classifier's output classes, in order.
        batch_size: images per forward pass.
        device: where to run.

    Returns:
        ``{"top1": accuracy, "loss": cross-entropy, "images": N}``.
    """
    pre = resolve_preprocessing(classifier.config)
    transform = build_eval_transform(pre["image_size"], pre["mean"], pre["std"])
    targets = torch.tensor(target_indices(dataset, class_names))
    was_training = classifier.training
    classifier.eval()
    logits = []
    for images, _ in DataLoader(_Transformed(dataset, transform), batch_size=batch_size):
        logits.append(classifier(images.to(device)).float().cpu())
    classifier.train(was_training)
    scores = torch.cat(logits)
    return {
        "top1": float((scores.argmax(dim=1) == targets).float().mean()),
        "loss": float(F.cross_entropy(scores, targets)),
        "images": len(targets),
    }
