"""Text→image and image→text retrieval recall on paired image–caption sets."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from openrecog.models.crossmodal import ITMHead

RECALL_KS: tuple[int, ...] = (1, 5, 10)


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank (0 = first) of the paired candidate ``i`` in row ``i``; ties count against it."""
    true = np.diag(scores)[:, None]
    return (scores > true).sum(axis=1) + ((scores == true).sum(axis=1) - 1)


def retrieval_recall(
    image_feat: np.ndarray,
    text_feat: np.ndarray,
    ks: Sequence[int] = RECALL_KS,
    scores: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """R@K both ways for ``N`` pairs (image ``i`` ↔ caption ``i``).

    Args:
        image_feat: ``(N, d)`` L2-normalised image features.
        text_feat: ``(N, d)`` L2-normalised caption features.
        ks: the K of R@K.
        scores: ``(i2t, t2i)`` image×text score matrices to rank by instead of the cosine
            (see :func:`itm_rerank_scores`).

    Returns:
        ``{"t2i_r@1": ..., "i2t_r@1": ..., ..., "mean_r": ...}``: the share of captions whose
        image is in the top K images, of images whose caption is in the top K captions, and
        the mean of all of them (ALBEF reports that mean).
    """
    if image_feat.shape != text_feat.shape or image_feat.ndim != 2:
        raise ValueError(f"need two (N, d) arrays, got {image_feat.shape} and {text_feat.shape}")
    i2t_scores, t2i_scores = scores if scores is not None else (image_feat @ text_feat.T,) * 2
    i2t = _ranks(i2t_scores)
    t2i = _ranks(t2i_scores.T)
    out: dict[str, float] = {}
    for k in ks:
        out[f"t2i_r@{k}"] = float((t2i < k).mean())
        out[f"i2t_r@{k}"] = float((i2t < k).mean())
    out["mean_r"] = float(np.mean(list(out.values())))
    return out


@torch.inference_mode()
def itm_rerank_scores(
    image_feat: np.ndarray, text_feat: np.ndarray, itm: ITMHead, top_k: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """Image→text and text→image scores whose top-k by cosine are re-ordered by ITM.

    ALBEF re-ranks the contrastive top-k with its matching head: the k best candidates of a
    query get ``2 + P(matched)`` (so they stay ahead of every other candidate, now ordered by
    the matching head), the rest keep their cosine.

    Returns:
        ``(i2t, t2i)``, both ``(N images, N texts)``: ``i2t`` re-ranked per image (row),
        ``t2i`` per caption (column); give them to :func:`retrieval_recall`.
    """
    cosine = image_feat @ text_feat.T
    n = cosine.shape[0]
    k = min(top_k, n)
    images = torch.from_numpy(image_feat).float()
    texts = torch.from_numpy(text_feat).float()
    i2t = cosine.copy()
    for i in range(n):
        top = np.argsort(-cosine[i])[:k]
        p = itm.match_probability(images[i].expand(k, -1), texts[top]).numpy()
        i2t[i, top] = 2.0 + p
    t2i = cosine.copy()
    for j in range(n):
        top = np.argsort(-cosine[:, j])[:k]
        p = itm.match_probability(images[top], texts[j].expand(k, -1)).numpy()
        t2i[top, j] = 2.0 + p
    return i2t, t2i
