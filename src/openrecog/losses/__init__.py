"""Classification heads and margin losses for metric-learning training."""

from openrecog.losses.classifier import ClassifierHead
from openrecog.losses.factory import LOSSES, build_head, build_margin
from openrecog.losses.margin import ArcFace, CombinedMarginLoss, CosFace, NormalizedSoftmax
from openrecog.losses.partial_fc import PartialFC, shard_range
from openrecog.losses.softmax import SoftmaxHead

__all__ = [
    "LOSSES",
    "ArcFace",
    "ClassifierHead",
    "CombinedMarginLoss",
    "CosFace",
    "NormalizedSoftmax",
    "PartialFC",
    "SoftmaxHead",
    "build_head",
    "build_margin",
    "shard_range",
]
