"""Every evaluation metric of openrecog, computed from embeddings and labels.

In the spirit of pytorch-metric-learning's ``AccuracyCalculator``: the CLI, the benchmarks and
the tests all call the functions here, so a number reported anywhere in the project has exactly
one definition.

Conventions shared by all functions:

* embeddings are ``(N, D)`` float arrays, assumed L2-normalised, so the score of a pair is the
  dot product (= cosine similarity); higher means "more likely the same identity";
* labels are ``(N,)`` arrays of integers or strings; only equality between labels matters;
* everything that would need an ``N × N`` matrix is computed in row blocks so memory stays
  bounded for ``N`` in the 10k-100k range;
* a metric that is undefined for the given data (no genuine pairs, no unknown queries, ...) is
  ``nan`` rather than an exception, so a whole report can still be produced.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "auroc_from_scores",
    "calibrate_threshold",
    "evaluate_embeddings",
    "open_set_metrics",
    "pair_scores",
    "retrieval_metrics",
    "split_gallery_queries",
    "verification_from_scores",
    "verification_metrics",
]

# mAP@5 and mP@5 are fixed-depth metrics (GUIE uses 5), independent of the recall ``ks``.
_MAP_K = 5
# Upper bound on the number of float32 elements of one score block (64 MiB).
_BLOCK_ELEMS = 1 << 24
# Pairs gathered per block when scoring sampled pairs; small blocks stay in cache.
_PAIR_BLOCK = 1024

DEFAULT_FPRS: tuple[float, ...] = (1e-2, 1e-3, 1e-4)
DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _as_embeddings(embeddings: ArrayLike, name: str = "embeddings") -> np.ndarray:
    emb = np.asarray(embeddings)
    if emb.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (N, D), got shape {emb.shape}")
    if emb.shape[1] == 0:
        raise ValueError(f"{name} must have at least one dimension, got shape {emb.shape}")
    if not np.issubdtype(emb.dtype, np.number) or np.issubdtype(emb.dtype, np.complexfloating):
        raise ValueError(f"{name} must be real-valued, got dtype {emb.dtype}")
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    if not np.isfinite(emb).all():
        raise ValueError(f"{name} contain NaN or infinite values")
    return emb


def _as_labels(labels: ArrayLike, n: int, name: str = "labels") -> np.ndarray:
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array (N,), got shape {lab.shape}")
    if lab.shape[0] != n:
        raise ValueError(
            f"{name} has {lab.shape[0]} entries but there are {n} embeddings; they must match"
        )
    return lab


def _encode_labels(labels: np.ndarray) -> np.ndarray:
    """Map arbitrary (int or str) labels to dense int64 codes ``0..C-1``."""
    _, codes = np.unique(labels, return_inverse=True)
    return codes.reshape(-1).astype(np.int64)


def _validate_pairs_input(
    embeddings: ArrayLike, labels: ArrayLike
) -> tuple[np.ndarray, np.ndarray]:
    emb = _as_embeddings(embeddings)
    lab = _as_labels(labels, emb.shape[0])
    if emb.shape[0] < 2:
        raise ValueError(f"need at least 2 samples, got {emb.shape[0]}")
    return emb, _encode_labels(lab)


def _validate_rate(value: float, name: str) -> float:
    try:
        rate = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}") from exc
    if not 0.0 < rate < 1.0:
        raise ValueError(f"{name} must be in the open interval (0, 1), got {value!r}")
    return rate


def _validate_ks(ks: Sequence[int]) -> tuple[int, ...]:
    ks = tuple(ks)
    if not ks:
        raise ValueError("ks must contain at least one k")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise ValueError(f"every k in ks must be a positive integer, got {k!r}")
    return tuple(int(k) for k in ks)


def _fpr_key(prefix: str, fpr: float) -> str:
    return f"{prefix}@fpr={fpr:.0e}"


def _block_rows(num_cols: int) -> int:
    return max(1, _BLOCK_ELEMS // max(1, num_cols))


# --------------------------------------------------------------------------------------------
# retrieval
# --------------------------------------------------------------------------------------------


@functools.cache
def _torch_module() -> Any:
    """``torch`` if importable, else ``None`` (imported lazily: it is slow to import)."""
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of openrecog
        return None
    return torch


def _topk_desc(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` largest scores of each row, best first.

    Equal scores inside the top-k are ordered by column index so the result does not depend on
    the block layout; which of several items tied exactly at the k-th place gets in is up to
    the selection routine.
    """
    n_cols = scores.shape[1]
    if k >= n_cols:
        part = np.broadcast_to(np.arange(n_cols), scores.shape).copy()
    elif (torch := _torch_module()) is not None:
        # torch.topk is ~5x faster than np.argpartition on wide rows and multi-threaded.
        part = torch.from_numpy(scores).topk(k, dim=1, sorted=False).indices.numpy()
    else:
        part = np.argpartition(scores, n_cols - k, axis=1)[:, n_cols - k :]
    part.sort(axis=1)
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def retrieval_metrics(
    embeddings: ArrayLike,
    labels: ArrayLike,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 4096,
) -> dict[str, float]:
    """Leave-one-out retrieval metrics on class-disjoint test embeddings.

    Every sample is used as a query against all *other* samples (the query itself is excluded
    from its own ranking). Neighbours are ranked by cosine similarity (dot product). A query
    whose class has no other sample cannot retrieve anything relevant and is skipped, but it
    still serves as a distractor in the reference set of the other queries.

    For a query ``q`` let ``rel(i)`` be 1 if the ``i``-th neighbour has the label of ``q``,
    ``P(i) = (1/i) * sum_{j<=i} rel(j)`` the precision at ``i``, and ``n_q`` the number of
    other samples with the label of ``q``. Averaged over the evaluated queries:

    * ``p@1`` = mean ``rel(1)``;
    * ``map@5`` = mean ``AP@5`` with ``AP@5 = (1/min(n_q, 5)) * sum_{i=1..5} P(i) * rel(i)``
      (the truncated AP, so a perfect ranking scores 1 even when ``n_q < 5``);
    * ``mp@5`` = mean ``(1/min(n_q, 5)) * sum_{i=1..5} rel(i)`` (the mP@5 of the Kaggle
      Google Universal Image Embedding challenge);
    * ``recall@k`` = fraction of queries with at least one relevant item among the top ``k``
      (``k`` larger than ``N - 1`` means the whole reference set).

    Args:
        embeddings: ``(N, D)`` L2-normalised embeddings.
        labels: ``(N,)`` integer or string labels.
        ks: Depths at which ``recall@k`` is reported.
        chunk_size: Maximum number of queries scored at once. The score block takes
            ``chunk_size * N * 4`` bytes, so the block is further capped at 256 MiB
            (e.g. about 670 queries per block for ``N = 100k``). The result does not depend
            on it.

    Returns:
        ``{"p@1", "map@5", "mp@5", "recall@k" for each k, "num_queries"}``; the rates are
        ``nan`` when no query could be evaluated.

    Raises:
        ValueError: On non-2-D embeddings, mismatched lengths, fewer than 2 samples, invalid
            ``ks`` or a non-positive ``chunk_size``.

    """
    emb, codes = _validate_pairs_input(embeddings, labels)
    ks = _validate_ks(ks)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int | np.integer):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")

    n = emb.shape[0]
    num_rel = np.bincount(codes)[codes] - 1
    queries = np.flatnonzero(num_rel > 0)
    depth = min(max(*ks, _MAP_K), n - 1)

    step = min(int(chunk_size), _block_rows(n) * 4)
    hits = np.zeros((queries.size, depth), dtype=bool)
    for start in range(0, queries.size, step):
        q = queries[start : start + step]
        scores = emb[q] @ emb.T
        # -inf keeps the query out of its own top-k without shifting any column index.
        scores[np.arange(q.size), q] = -np.inf
        top = _topk_desc(scores, depth)
        hits[start : start + q.size] = codes[top] == codes[q, None]

    out: dict[str, float] = {}
    if queries.size == 0:
        out.update({"p@1": math.nan, "map@5": math.nan, "mp@5": math.nan})
        out.update({f"recall@{k}": math.nan for k in ks})
        out["num_queries"] = 0
        return out

    k5 = min(_MAP_K, depth)
    rel5 = hits[:, :k5]
    denom = np.minimum(num_rel[queries], _MAP_K).astype(np.float64)
    precision = np.cumsum(rel5, axis=1) / np.arange(1, k5 + 1)
    ap = (precision * rel5).sum(axis=1) / denom
    mp = rel5.sum(axis=1) / denom

    out["p@1"] = float(hits[:, 0].mean())
    out["map@5"] = float(ap.mean())
    out["mp@5"] = float(mp.mean())
    for k in ks:
        out[f"recall@{k}"] = float(hits[:, : min(k, depth)].any(axis=1).mean())
    out["num_queries"] = int(queries.size)
    return out


# --------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------


def _genuine_scores(emb: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Scores of all same-label pairs ``i < j``, class by class."""
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    parts: list[np.ndarray] = []
    for members in np.split(order, bounds):
        m = members.size
        if m < 2:
            continue
        e = emb[members]
        rows = _block_rows(m)
        for a in range(0, m - 1, rows):
            b = min(a + rows, m)
            s = e[a:b] @ e[a:].T
            # column c of the block is sample a + c, row r is sample a + r: keep c > r.
            upper = np.arange(m - a)[None, :] > np.arange(b - a)[:, None]
            parts.append(s[upper])
    if not parts:
        return np.empty(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def _all_impostor_scores(emb: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Scores of all different-label pairs ``i < j``, in row blocks."""
    n = emb.shape[0]
    rows = _block_rows(n)
    parts: list[np.ndarray] = []
    for a in range(0, n - 1, rows):
        b = min(a + rows, n)
        s = emb[a:b] @ emb[a:].T
        keep = np.arange(n - a)[None, :] > np.arange(b - a)[:, None]
        keep &= codes[a:b, None] != codes[None, a:]
        parts.append(s[keep])
    if not parts:
        return np.empty(0, dtype=np.float32)
    return np.concatenate(parts).astype(np.float32, copy=False)


def _sorted_unique(values: np.ndarray) -> np.ndarray:
    # np.unique on int64 goes through a hash table in numpy 2.x, ~50x slower than sorting here.
    values = np.sort(values)
    if values.size == 0:
        return values
    return values[np.concatenate([[True], values[1:] != values[:-1]])]


def _sampled_impostor_scores(
    emb: np.ndarray, codes: np.ndarray, num_pairs: int, num_total: int, seed: int
) -> np.ndarray:
    """Scores of ``num_pairs`` different-label pairs drawn uniformly without replacement.

    Ordered pairs ``(i, j)`` drawn independently and uniformly hit every unordered pair with
    the same probability, so rejection of ``i == j`` and same-label pairs plus de-duplication
    gives a uniform sample; the final random subset removes the bias of keeping the first
    ``num_pairs`` of a sorted set.
    """
    n = emb.shape[0]
    rng = np.random.default_rng(seed)
    accept = num_total / (n * (n - 1) / 2)
    keys = np.empty(0, dtype=np.int64)
    while keys.size < num_pairs:
        need = num_pairs - keys.size
        draw = min(int(need / accept * 1.2) + 1024, 1 << 24)
        i = rng.integers(0, n, size=draw)
        j = rng.integers(0, n, size=draw)
        ok = (i != j) & (codes[i] != codes[j])
        lo = np.minimum(i[ok], j[ok])
        hi = np.maximum(i[ok], j[ok])
        keys = _sorted_unique(np.concatenate([keys, lo * n + hi]))
    if keys.size > num_pairs:
        keys = np.sort(keys[rng.permutation(keys.size)[:num_pairs]])
    # Sorted keys make the ``emb[lo]`` gathers nearly sequential.
    lo, hi = np.divmod(keys, n)

    out = np.empty(num_pairs, dtype=np.float32)
    for a in range(0, num_pairs, _PAIR_BLOCK):
        b = min(a + _PAIR_BLOCK, num_pairs)
        out[a:b] = np.einsum("ij,ij->i", emb[lo[a:b]], emb[hi[a:b]])
    return out


def _pair_scores(
    emb: np.ndarray, codes: np.ndarray, max_pairs: int, seed: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Genuine scores, impostor scores (maybe sampled) and the total number of impostor pairs."""
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, int | np.integer):
        raise ValueError(f"max_pairs must be a positive integer, got {max_pairs!r}")
    if max_pairs < 1:
        raise ValueError(f"max_pairs must be a positive integer, got {max_pairs}")
    n = emb.shape[0]
    counts = np.bincount(codes).astype(np.int64)
    num_genuine = int((counts * (counts - 1) // 2).sum())
    num_impostor_total = n * (n - 1) // 2 - num_genuine

    genuine = _genuine_scores(emb, codes)
    if num_impostor_total <= max_pairs:
        impostor = _all_impostor_scores(emb, codes)
    else:
        impostor = _sampled_impostor_scores(emb, codes, int(max_pairs), num_impostor_total, seed)
    return genuine, impostor, num_impostor_total


def pair_scores(
    embeddings: ArrayLike,
    labels: ArrayLike,
    max_pairs: int = 5_000_000,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and impostor pair scores of a labelled embedding set, as used by the metrics.

    The pairs are exactly those of :func:`verification_metrics` and
    :func:`evaluate_embeddings` with the same ``max_pairs`` and ``seed``: every same-label
    pair ``i < j``, and every different-label pair, or a uniform sample of ``max_pairs`` of
    them when there are more. Plots drawn from these scores therefore agree with the reported
    thresholds and TPRs.

    Args:
        embeddings: ``(N, D)`` L2-normalised embeddings.
        labels: ``(N,)`` integer or string labels.
        max_pairs: Maximum number of impostor pairs to score.
        seed: Seed of the impostor sampling.

    Returns:
        ``(genuine, impostor)``, two 1-D float32 arrays of dot products (either may be
        empty).

    Raises:
        ValueError: On non-2-D embeddings, mismatched lengths, fewer than 2 samples or a
            non-positive ``max_pairs``.

    """
    emb, codes = _validate_pairs_input(embeddings, labels)
    genuine, impostor, _ = _pair_scores(emb, codes, max_pairs, seed)
    return genuine, impostor


def _num_allowed_false_accepts(fpr: float, num_impostor: int) -> int:
    # Rounding first keeps e.g. 0.29 * 100 = 28.999999999999996 from losing a whole count.
    return math.floor(round(fpr * num_impostor, 9))


def _threshold_from_sorted(impostor_sorted: np.ndarray, fpr: float) -> float:
    allowed = _num_allowed_false_accepts(fpr, impostor_sorted.size)
    # The (allowed+1)-th largest score: at most ``allowed`` scores are strictly above it, and
    # any smaller threshold would also let that score through.
    return float(impostor_sorted[impostor_sorted.size - 1 - allowed])


def calibrate_threshold(impostor_scores: ArrayLike, target_far: float) -> float:
    """Score threshold achieving a target false-accept rate on impostor scores.

    The threshold ``t`` is the smallest score such that the fraction of impostor scores
    strictly greater than ``t`` is at most ``target_far``: with ``M`` impostor scores and
    ``m = floor(target_far * M)``, ``t`` is the ``(m + 1)``-th largest impostor score (an
    exact order statistic, no interpolation). Accept a pair when its score is ``> t``.

    When ``target_far < 1 / M`` this is the largest impostor score (zero false accepts on the
    calibration data), which is the best that can be done but does not guarantee the target
    on new data.

    Args:
        impostor_scores: 1-D array of scores of different-identity pairs.
        target_far: Target false-accept rate in the open interval ``(0, 1)``.

    Returns:
        The threshold as a Python float.

    Raises:
        ValueError: If ``impostor_scores`` is empty, not 1-D or not finite, or ``target_far``
            is not in ``(0, 1)``.

    """
    far = _validate_rate(target_far, "target_far")
    scores = np.asarray(impostor_scores, dtype=np.float64)
    if scores.ndim != 1:
        raise ValueError(f"impostor_scores must be a 1-D array, got shape {scores.shape}")
    if scores.size == 0:
        raise ValueError("impostor_scores is empty; cannot calibrate a threshold without impostors")
    if not np.isfinite(scores).all():
        raise ValueError("impostor_scores contain NaN or infinite values")
    return _threshold_from_sorted(np.sort(scores), far)


def auroc_from_scores(genuine_scores: ArrayLike, impostor_scores: ArrayLike) -> float:
    """Exact area under the ROC curve (Mann-Whitney U statistic).

    ``AUROC = P(g > i) + 0.5 * P(g == i)`` for a random genuine score ``g`` and a random
    impostor score ``i``, computed exactly by sorting (ties count one half).

    Args:
        genuine_scores: 1-D scores of same-identity pairs.
        impostor_scores: 1-D scores of different-identity pairs.

    Returns:
        The AUROC, or ``nan`` if either set is empty.

    """
    gen = np.asarray(genuine_scores, dtype=np.float64).reshape(-1)
    imp = np.sort(np.asarray(impostor_scores, dtype=np.float64).reshape(-1))
    if gen.size == 0 or imp.size == 0:
        return math.nan
    below = np.searchsorted(imp, gen, side="left")
    not_above = np.searchsorted(imp, gen, side="right")
    u = below.sum(dtype=np.float64) + 0.5 * (not_above - below).sum(dtype=np.float64)
    return float(u / (gen.size * imp.size))


def verification_from_scores(
    genuine_scores: ArrayLike,
    impostor_scores: ArrayLike,
    fprs: Sequence[float] = DEFAULT_FPRS,
) -> dict[str, float]:
    """TPR at fixed FPRs and AUROC from precomputed genuine and impostor pair scores.

    For each ``fpr`` the threshold ``t`` is the one of :func:`calibrate_threshold` (the
    ``(m + 1)``-th largest impostor score, ``m = floor(fpr * M)``), and
    ``TPR = fraction of genuine scores strictly greater than t``. When ``fpr < 1 / M``
    (``M`` impostor scores) the FPR cannot be measured, and both ``tpr@fpr=...`` and
    ``thr@fpr=...`` are ``nan``; they are also ``nan`` when there are no genuine or no
    impostor scores.

    Args:
        genuine_scores: 1-D scores of same-identity pairs.
        impostor_scores: 1-D scores of different-identity pairs.
        fprs: False-positive rates, each in ``(0, 1)``.

    Returns:
        ``tpr@fpr={fpr:.0e}`` and ``thr@fpr={fpr:.0e}`` for each fpr, ``auroc``,
        ``num_genuine`` and ``num_impostor``.

    Raises:
        ValueError: If an fpr is outside ``(0, 1)`` or the scores are not finite 1-D arrays.

    """
    rates = [_validate_rate(f, "every fpr") for f in fprs]
    gen = np.asarray(genuine_scores, dtype=np.float64)
    imp = np.asarray(impostor_scores, dtype=np.float64)
    for name, arr in (("genuine_scores", gen), ("impostor_scores", imp)):
        if arr.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contain NaN or infinite values")
    imp_sorted = np.sort(imp)
    gen_sorted = np.sort(gen)

    out: dict[str, float] = {}
    for fpr in rates:
        tpr = thr = math.nan
        if gen.size and imp.size and _num_allowed_false_accepts(fpr, imp.size) >= 1:
            thr = _threshold_from_sorted(imp_sorted, fpr)
            accepted = gen.size - np.searchsorted(gen_sorted, thr, side="right")
            tpr = float(accepted / gen.size)
        out[_fpr_key("tpr", fpr)] = tpr
        out[_fpr_key("thr", fpr)] = thr
    out["auroc"] = auroc_from_scores(gen, imp)
    out["eer"], out["thr@eer"] = equal_error_rate(gen_sorted, imp_sorted)
    out["num_genuine"] = int(gen.size)
    out["num_impostor"] = int(imp.size)
    return out


def equal_error_rate(genuine_scores: ArrayLike, impostor_scores: ArrayLike) -> tuple[float, float]:
    """Equal error rate and its threshold: where false accepts and false rejects balance.

    Accepting means ``score >= t``: ``FAR(t)`` = fraction of impostor scores ``>= t`` and
    ``FRR(t)`` = fraction of genuine scores ``< t``. Candidate thresholds are every genuine
    and impostor score; the one minimising ``|FAR - FRR|`` is returned with
    ``EER = (FAR + FRR) / 2``. ``(nan, nan)`` if either set is empty.

    Args:
        genuine_scores: 1-D scores of same-identity pairs.
        impostor_scores: 1-D scores of different-identity pairs.

    Returns:
        ``(eer, threshold)``.

    """
    gen = np.sort(np.asarray(genuine_scores, dtype=np.float64))
    imp = np.sort(np.asarray(impostor_scores, dtype=np.float64))
    if not gen.size or not imp.size:
        return math.nan, math.nan
    candidates = np.unique(np.concatenate([gen, imp]))
    far = 1.0 - np.searchsorted(imp, candidates, side="left") / imp.size
    frr = np.searchsorted(gen, candidates, side="left") / gen.size
    best = int(np.argmin(np.abs(far - frr)))
    return float((far[best] + frr[best]) / 2), float(candidates[best])


def verification_metrics(
    embeddings: ArrayLike,
    labels: ArrayLike,
    fprs: Sequence[float] = DEFAULT_FPRS,
    max_pairs: int = 5_000_000,
    seed: int = 0,
) -> dict[str, float]:
    """1:1 verification metrics over all pairs of a labelled embedding set.

    Genuine pairs are all same-label pairs ``i < j`` (always exhaustive); impostor pairs are
    all different-label pairs ``i < j``. Both are scored in memory-bounded blocks. If there
    are more than ``max_pairs`` impostor pairs, exactly ``max_pairs`` of them are sampled
    uniformly at random without replacement (seeded by ``seed``), so the impostor
    distribution is an unbiased estimate; ``num_impostor`` then reports the sample size and
    ``num_impostor_total`` the full count. Scores are dot products (cosine similarities).

    The threshold and TPR definitions are those of :func:`verification_from_scores`:
    ``t`` is the smallest score with at most ``fpr`` of impostor scores strictly above it
    (exact order statistic), ``TPR = fraction of genuine scores > t``; a TPR is ``nan`` when
    ``fpr < 1 / num_impostor`` since that rate cannot be measured with so few impostors.
    ``auroc`` is exact (Mann-Whitney U, ties count one half).

    Args:
        embeddings: ``(N, D)`` L2-normalised embeddings.
        labels: ``(N,)`` integer or string labels.
        fprs: False-positive rates at which to report TPR, each in ``(0, 1)``.
        max_pairs: Maximum number of impostor pairs to score.
        seed: Seed of the impostor sampling.

    Returns:
        ``tpr@fpr={fpr:.0e}``, ``thr@fpr={fpr:.0e}``, ``auroc``, ``num_genuine``,
        ``num_impostor`` and ``num_impostor_total``.

    Raises:
        ValueError: On non-2-D embeddings, mismatched lengths, fewer than 2 samples, an fpr
            outside ``(0, 1)`` or a non-positive ``max_pairs``.

    """
    emb, codes = _validate_pairs_input(embeddings, labels)
    fprs = tuple(fprs)
    for f in fprs:
        _validate_rate(f, "every fpr")
    genuine, impostor, num_total = _pair_scores(emb, codes, max_pairs, seed)
    out = verification_from_scores(genuine, impostor, fprs)
    out["num_impostor_total"] = int(num_total)
    return out


# --------------------------------------------------------------------------------------------
# open-set identification
# --------------------------------------------------------------------------------------------


def _nearest(query: np.ndarray, gallery: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index and score of the most similar gallery item for every query, in row blocks."""
    idx = np.empty(query.shape[0], dtype=np.int64)
    best = np.empty(query.shape[0], dtype=np.float32)
    rows = _block_rows(gallery.shape[0])
    for a in range(0, query.shape[0], rows):
        s = query[a : a + rows] @ gallery.T
        i = s.argmax(axis=1)
        idx[a : a + rows] = i
        best[a : a + rows] = s[np.arange(s.shape[0]), i]
    return idx, best


def open_set_metrics(
    query_emb: ArrayLike,
    query_labels: ArrayLike,
    gallery_emb: ArrayLike,
    gallery_labels: ArrayLike,
    threshold: float,
) -> dict[str, float]:
    """Open-set identification of queries against a gallery at a fixed score threshold.

    Each query is matched to its most similar gallery item (score = dot product) and is
    *accepted* when that score is ``>= threshold``, otherwise rejected as unknown. A query is
    *known* if its label occurs in the gallery, *unknown* otherwise. Note the inclusive
    ``>=`` here, whereas :func:`verification_from_scores` counts a pair as accepted when its
    score is strictly ``>`` the threshold; the two only differ for a score exactly equal to
    the threshold.

    * ``accuracy`` = fraction of queries that are (accepted and matched to their own label) or
      (unknown and rejected);
    * ``known_accuracy`` = among known queries, fraction accepted with the correct label (the
      detection-and-identification rate, DIR, at rank 1);
    * ``known_rank1`` = among known queries, fraction whose nearest gallery item has the right
      label, ignoring the threshold (closed-set accuracy);
    * ``unknown_rejection`` = among unknown queries, fraction rejected;
    * ``false_accept_rate`` = among unknown queries, fraction accepted
      (``1 - unknown_rejection``).

    Rates over an empty group are ``nan``.

    Args:
        query_emb: ``(Q, D)`` L2-normalised query embeddings.
        query_labels: ``(Q,)`` query labels.
        gallery_emb: ``(G, D)`` L2-normalised gallery embeddings.
        gallery_labels: ``(G,)`` gallery labels.
        threshold: Acceptance threshold on the best score.

    Returns:
        The rates above plus ``num_queries``, ``num_known``, ``num_unknown``, ``num_gallery``
        and ``threshold``.

    Raises:
        ValueError: On empty query or gallery sets, mismatched lengths or dimensions, or a
            NaN threshold.

    """
    q = _as_embeddings(query_emb, "query_emb")
    g = _as_embeddings(gallery_emb, "gallery_emb")
    q_lab = _as_labels(query_labels, q.shape[0], "query_labels")
    g_lab = _as_labels(gallery_labels, g.shape[0], "gallery_labels")
    if q.shape[0] == 0:
        raise ValueError("the query set is empty")
    if g.shape[0] == 0:
        raise ValueError("the gallery is empty")
    if q.shape[1] != g.shape[1]:
        raise ValueError(
            f"query and gallery embeddings differ in dimension: {q.shape[1]} vs {g.shape[1]}"
        )
    thr = float(threshold)
    if math.isnan(thr):
        raise ValueError("threshold is NaN")

    # Encoding both label sets together makes "same label" a plain integer comparison.
    codes = _encode_labels(np.concatenate([q_lab, g_lab]))
    q_codes, g_codes = codes[: q.shape[0]], codes[q.shape[0] :]
    known = np.isin(q_codes, g_codes)
    nearest, best = _nearest(q, g)
    same = g_codes[nearest] == q_codes
    accepted = best >= thr
    correct = np.where(known, accepted & same, ~accepted)

    def rate(mask: np.ndarray, among: np.ndarray) -> float:
        return float(mask[among].mean()) if among.any() else math.nan

    unknown = ~known
    return {
        "accuracy": float(correct.mean()),
        "known_accuracy": rate(accepted & same, known),
        "known_rank1": rate(same, known),
        "unknown_rejection": rate(~accepted, unknown),
        "false_accept_rate": rate(accepted, unknown),
        "num_queries": int(q.shape[0]),
        "num_known": int(known.sum()),
        "num_unknown": int(unknown.sum()),
        "num_gallery": int(g.shape[0]),
        "threshold": thr,
    }


def split_gallery_queries(
    labels: ArrayLike,
    num_gallery_per_class: int = 1,
    unknown_fraction: float = 0.0,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split a labelled test set into gallery and query indices for an open-set protocol.

    ``round(unknown_fraction * C)`` of the ``C`` classes (chosen at random, but always leaving
    at least one known class) get no gallery items: all their samples are queries whose
    identity is unknown. Every other class contributes ``num_gallery_per_class`` random
    samples to the gallery and the rest as queries; a class with no more samples than that
    goes entirely into the gallery.

    Args:
        labels: ``(N,)`` integer or string labels.
        num_gallery_per_class: Gallery samples per known class (>= 1).
        unknown_fraction: Fraction of classes turned into unknowns, in ``[0, 1)``.
        seed: Seed of both the class and the sample choice.

    Returns:
        ``(gallery_indices, query_indices)``, two sorted disjoint int64 arrays covering
        ``0..N-1``.

    Raises:
        ValueError: If ``labels`` is not 1-D or empty, ``num_gallery_per_class < 1`` or
            ``unknown_fraction`` is outside ``[0, 1)``.

    """
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"labels must be a 1-D array (N,), got shape {lab.shape}")
    if lab.size == 0:
        raise ValueError("labels is empty")
    if (
        isinstance(num_gallery_per_class, bool)
        or not isinstance(num_gallery_per_class, int | np.integer)
        or num_gallery_per_class < 1
    ):
        raise ValueError(
            f"num_gallery_per_class must be a positive integer, got {num_gallery_per_class!r}"
        )
    frac = float(unknown_fraction)
    if not 0.0 <= frac < 1.0:
        raise ValueError(f"unknown_fraction must be in [0, 1), got {unknown_fraction!r}")

    rng = np.random.default_rng(seed)
    codes = _encode_labels(lab)
    num_classes = int(codes.max()) + 1
    num_unknown = min(int(round(frac * num_classes)), num_classes - 1)
    unknown = np.zeros(num_classes, dtype=bool)
    unknown[rng.permutation(num_classes)[:num_unknown]] = True

    gallery_mask = np.zeros(lab.size, dtype=bool)
    order = np.argsort(codes, kind="stable")
    bounds = np.flatnonzero(np.diff(codes[order])) + 1
    for members in np.split(order, bounds):
        if unknown[codes[members[0]]]:
            continue
        gallery_mask[rng.permutation(members)[:num_gallery_per_class]] = True
    return np.flatnonzero(gallery_mask), np.flatnonzero(~gallery_mask)


# --------------------------------------------------------------------------------------------
# everything at once
# --------------------------------------------------------------------------------------------


def _to_python(value: Any) -> Any:
    # numpy scalars are not JSON-serialisable; bool is left alone (it is an int subclass).
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    return value


def evaluate_embeddings(
    embeddings: ArrayLike,
    labels: ArrayLike,
    fprs: Sequence[float] = DEFAULT_FPRS,
    ks: Sequence[int] = DEFAULT_KS,
    target_far: float = 1e-3,
    seed: int = 0,
    max_pairs: int = 5_000_000,
    chunk_size: int = 4096,
) -> dict[str, float | int]:
    """Run the full evaluation (retrieval, verification, open-set) on one embedding set.

    1. :func:`retrieval_metrics` (leave-one-out);
    2. :func:`verification_metrics` on all genuine and (possibly sampled) impostor pairs;
    3. a threshold calibrated with :func:`calibrate_threshold` at ``target_far`` on the same
       impostor scores, reported as ``threshold``;
    4. :func:`open_set_metrics` at that threshold on the protocol of
       ``split_gallery_queries(labels, 1, unknown_fraction=0.3, seed=seed)``, with keys
       prefixed ``open_set/``.

    When there are no impostor pairs (a single class) or the split leaves no query, the
    threshold and/or open-set rates are ``nan``.

    Args:
        embeddings: ``(N, D)`` L2-normalised embeddings.
        labels: ``(N,)`` integer or string labels.
        fprs: False-positive rates for ``tpr@fpr``.
        ks: Depths for ``recall@k``.
        target_far: False-accept rate used to calibrate the open-set threshold.
        seed: Seed for impostor sampling and the gallery/query split.
        max_pairs: Maximum number of impostor pairs (see :func:`verification_metrics`).
        chunk_size: Query block size for retrieval.

    Returns:
        A flat dict of Python floats and ints (``nan`` where undefined), JSON-serialisable
        with :func:`openrecog.eval.table.metrics_to_json`.

    Raises:
        ValueError: On invalid inputs (see the individual functions).

    """
    emb, codes = _validate_pairs_input(embeddings, labels)
    lab = np.asarray(labels)
    far = _validate_rate(target_far, "target_far")
    fprs = tuple(fprs)
    for f in fprs:
        _validate_rate(f, "every fpr")

    out: dict[str, Any] = dict(retrieval_metrics(emb, codes, ks=ks, chunk_size=chunk_size))
    genuine, impostor, num_total = _pair_scores(emb, codes, max_pairs, seed)
    out.update(verification_from_scores(genuine, impostor, fprs))
    out["num_impostor_total"] = int(num_total)

    threshold = calibrate_threshold(impostor, far) if impostor.size else math.nan
    out["threshold"] = threshold
    out["target_far"] = far

    gallery, queries = split_gallery_queries(lab, 1, unknown_fraction=0.3, seed=seed)
    if math.isnan(threshold) or queries.size == 0:
        open_set = {
            "accuracy": math.nan,
            "known_accuracy": math.nan,
            "known_rank1": math.nan,
            "unknown_rejection": math.nan,
            "false_accept_rate": math.nan,
            "num_queries": int(queries.size),
            "num_known": 0,
            "num_unknown": 0,
            "num_gallery": int(gallery.size),
        }
    else:
        open_set = open_set_metrics(
            emb[queries], codes[queries], emb[gallery], codes[gallery], threshold
        )
        open_set.pop("threshold")
    out.update({f"open_set/{k}": v for k, v in open_set.items()})
    return {k: _to_python(v) for k, v in out.items()}
