"""Build a classification head (classifier + loss) from a loss name and its hyper-parameters."""

from __future__ import annotations

from torch import nn

from openrecog.losses.classifier import ClassifierHead
from openrecog.losses.margin import ArcFace, CombinedMarginLoss, CosFace, NormalizedSoftmax
from openrecog.losses.partial_fc import PartialFC
from openrecog.losses.softmax import SoftmaxHead

LOSSES: tuple[str, ...] = ("cosface", "arcface", "combined", "normsoftmax", "softmax", "ce")
DEFAULT_SCALE = 64.0
DEFAULT_MARGIN = {"cosface": 0.4, "arcface": 0.5}
DEFAULT_COMBINED = (1.0, 0.3, 0.2)  # insightface's (m1, m2, m3) for combined margins


def _reject(loss: str, **given: object) -> None:
    bad = [name for name, value in given.items() if value is not None]
    if bad:
        raise ValueError(f"loss {loss!r} does not take {', '.join(bad)}")


def build_margin(
    loss: str,
    *,
    s: float | None = None,
    m: float | None = None,
    m1: float | None = None,
    m2: float | None = None,
    m3: float | None = None,
    easy_margin: bool = False,
) -> CombinedMarginLoss:
    """Build the margin module of a cosine head (every loss in ``LOSSES`` except softmax).

    Raises:
        ValueError: For an unknown loss or a margin argument the loss does not use.

    """
    s = DEFAULT_SCALE if s is None else s
    if loss in ("arcface", "cosface"):
        _reject(loss, m1=m1, m2=m2, m3=m3)
        m = DEFAULT_MARGIN[loss] if m is None else m
        return ArcFace(s, m, easy_margin=easy_margin) if loss == "arcface" else CosFace(s, m)
    if loss == "combined":
        _reject(loss, m=m)
        d1, d2, d3 = DEFAULT_COMBINED
        return CombinedMarginLoss(
            s,
            d1 if m1 is None else m1,
            d2 if m2 is None else m2,
            d3 if m3 is None else m3,
            easy_margin=easy_margin,
        )
    if loss == "normsoftmax":
        _reject(loss, m=m, m1=m1, m2=m2, m3=m3)
        return NormalizedSoftmax(s)
    raise ValueError(f"unknown loss {loss!r}; choose one of {', '.join(LOSSES)}")


def build_head(
    loss: str,
    embedding_size: int,
    num_classes: int,
    *,
    s: float | None = None,
    m: float | None = None,
    m1: float | None = None,
    m2: float | None = None,
    m3: float | None = None,
    sample_rate: float = 1.0,
    easy_margin: bool = False,
    seed: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    label_smoothing: float = 0.0,
    hidden_dim: int | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """Build the training head ``forward(embeddings, labels) -> loss`` for ``loss``.

    Every head also has ``logits(embeddings) -> (B, num_local)`` scores for training accuracy.

    Args:
        loss: One of ``cosface | arcface | combined | normsoftmax | softmax | ce``.
        embedding_size: Embedding dimension.
        num_classes: Number of training classes.
        s: Logit scale (default 64).
        m: Margin of ``arcface`` (default 0.5) or ``cosface`` (default 0.4).
        m1: Multiplicative angular margin of ``combined`` (default 1.0).
        m2: Additive angular margin of ``combined`` (default 0.3).
        m3: Additive cosine margin of ``combined`` (default 0.2).
        sample_rate: PartialFC negative-centre sampling rate; 1.0 is the full FC.
        easy_margin: ArcFace/combined easy-margin variant.
        seed: Seed of PartialFC's sampling generator.
        rank: This process's rank (PartialFC model parallelism).
        world_size: Number of ranks sharing the class centres.
        label_smoothing: ``ce`` only: label smoothing of the cross-entropy.
        hidden_dim: ``ce`` only: hidden layer of the classifier (None: one Linear).
        dropout: ``ce`` only: dropout before the classifier's Linear layers.

    Returns:
        A :class:`PartialFC` for the cosine losses, a :class:`SoftmaxHead` for ``softmax``,
        a :class:`ClassifierHead` for ``ce`` (closed-set classification).

    Raises:
        ValueError: For an unknown loss or an argument the loss does not use.

    """
    if loss == "ce":
        _reject(loss, s=s, m=m, m1=m1, m2=m2, m3=m3)
        if sample_rate != 1.0 or world_size != 1:
            raise ValueError("loss 'ce' supports neither sampling nor several ranks")
        return ClassifierHead(embedding_size, num_classes, hidden_dim, dropout, label_smoothing)
    if loss == "softmax":
        _reject(loss, s=s, m=m, m1=m1, m2=m2, m3=m3)
        if sample_rate != 1.0 or world_size != 1:
            raise ValueError("loss 'softmax' supports neither sampling nor class sharding")
        return SoftmaxHead(embedding_size, num_classes)
    margin = build_margin(loss, s=s, m=m, m1=m1, m2=m2, m3=m3, easy_margin=easy_margin)
    return PartialFC(
        margin,
        embedding_size,
        num_classes,
        sample_rate=sample_rate,
        rank=rank,
        world_size=world_size,
        seed=seed,
    )
