"""Evaluation: every retrieval and verification metric from embeddings + labels."""

from openrecog.eval.evaluate import evaluate_model
from openrecog.eval.metrics import (
    calibrate_threshold,
    evaluate_embeddings,
    open_set_metrics,
    retrieval_metrics,
    verification_metrics,
)

__all__ = [
    "calibrate_threshold",
    "evaluate_embeddings",
    "evaluate_model",
    "open_set_metrics",
    "retrieval_metrics",
    "verification_metrics",
]
