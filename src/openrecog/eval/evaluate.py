"""Evaluate a model on a labelled, class-disjoint dataset."""

from __future__ import annotations

from torch.utils.data import Dataset

from openrecog.eval.metrics import evaluate_embeddings
from openrecog.models.embedder import Embedder
from openrecog.models.encoder import ImageEncoder


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
    encoder = ImageEncoder(model, batch_size=batch_size, device=device)
    embeddings = encoder.encode_dataset(dataset, progress=progress)
    labels = list(dataset.labels)  # type: ignore[attr-defined]
    return evaluate_embeddings(embeddings, labels, target_far=target_far)
