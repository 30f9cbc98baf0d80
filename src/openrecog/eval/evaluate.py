"""Evaluate a model on a labelled, class-disjoint dataset."""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.utils.data import Dataset

from openrecog.eval.metrics import evaluate_embeddings
from openrecog.models.embedder import Embedder
from openrecog.models.encoder import ImageEncoder


def embed_and_evaluate(
    model: Embedder,
    dataset: Dataset,
    batch_size: int = 64,
    target_far: float = 1e-3,
    device: str = "auto",
    progress: bool = False,
) -> tuple[np.ndarray, list[Any], dict[str, float]]:
    """Embed every image of ``dataset`` once and compute every metric on the embeddings.

    Same evaluation as :func:`evaluate_model`, but the embeddings and labels are returned
    too, so a report can plot them without embedding the images a second time.

    Args:
        model: The embedding model.
        dataset: Labelled dataset yielding ``(PIL image, label)`` with a ``labels`` attribute.
        batch_size: Images per forward pass.
        target_far: False-accept rate at which the threshold is calibrated.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        progress: Show a progress bar while embedding.

    Returns:
        ``(embeddings, labels, metrics)``: the ``(N, D)`` embeddings, the ``N`` labels and
        the output of :func:`~openrecog.eval.metrics.evaluate_embeddings`.

    """
    encoder = ImageEncoder(model, batch_size=batch_size, device=device)
    embeddings = encoder.encode_dataset(dataset, progress=progress)
    labels = list(dataset.labels)  # type: ignore[attr-defined]
    metrics = evaluate_embeddings(embeddings, labels, target_far=target_far)
    return embeddings, labels, metrics


def evaluate_model(
    model: Embedder,
    dataset: Dataset,
    batch_size: int = 64,
    target_far: float = 1e-3,
    device: str = "auto",
    progress: bool = False,
) -> dict[str, float]:
    """Embed every image of ``dataset`` and compute every retrieval/verification metric.

    Each image is queried against all the others (leave-one-out), as in the GUIE and
    DocClassifier evaluations.
    """
    return embed_and_evaluate(model, dataset, batch_size, target_far, device, progress)[2]
