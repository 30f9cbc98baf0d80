"""Evaluation: every retrieval and verification metric from embeddings + labels.

The figures and the HTML report live in :mod:`openrecog.eval.plots` and
:mod:`openrecog.eval.report`; they are not imported here, so that evaluating (e.g. during
training) does not pay for importing matplotlib.
"""

from openrecog.eval.evaluate import embed_and_evaluate, evaluate_model
from openrecog.eval.metrics import (
    calibrate_threshold,
    evaluate_embeddings,
    open_set_metrics,
    pair_scores,
    retrieval_metrics,
    verification_metrics,
)

__all__ = [
    "calibrate_threshold",
    "embed_and_evaluate",
    "evaluate_embeddings",
    "evaluate_model",
    "open_set_metrics",
    "pair_scores",
    "retrieval_metrics",
    "verification_metrics",
]
