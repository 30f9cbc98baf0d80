"""Figures of an evaluation: training curves, ROC/DET, score histograms, embedding map.

Everything is built on matplotlib's object API (a :class:`~matplotlib.figure.Figure` with
its own Agg canvas), never on ``pyplot``: pyplot keeps process-wide state (the current figure,
the backend) that would leak into, or be broken by, a notebook or a server using openrecog in
the same process. Figures are therefore not registered anywhere and are garbage-collected like
any object.

Scores follow the conventions of :mod:`openrecog.eval.metrics`: higher means "more likely the
same identity", and a pair is accepted when its score is strictly above the threshold.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from statistics import NormalDist
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from openrecog.eval.metrics import equal_error_rate, pair_scores

__all__ = [
    "figure_to_png",
    "pair_scores",
    "plot_embedding_map",
    "plot_roc_det",
    "plot_score_histograms",
    "plot_training_curves",
    "read_training_log",
]

GENUINE_COLOUR = "#1b9e77"
IMPOSTOR_COLOUR = "#d95f02"
THRESHOLD_COLOUR = "#444444"

# Curves are drawn through at most this many thresholds: enough for a smooth line, while a
# five-million-pair evaluation would otherwise make a PNG of millions of path vertices.
_MAX_CURVE_POINTS = 3000
# Eval metrics worth a line in the training curves, in legend order (rates in [0, 1]).
_EVAL_CURVE_KEYS = (
    "p@1",
    "map@5",
    "recall@5",
    "tpr@fpr=1e-03",
    "auroc",
    "open_set/accuracy",
)
# DET ticks: the error rates people quote.
_DET_TICKS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8, 0.95, 0.99)
_probit = np.vectorize(NormalDist().inv_cdf, otypes=[float])


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    # An explicit Agg canvas: rendering never depends on the process-wide backend.
    FigureCanvasAgg(fig)
    return fig


def figure_to_png(fig: Figure, dpi: int = 110) -> bytes:
    """Render a figure to PNG bytes with the Agg renderer.

    Args:
        fig: The figure, e.g. from one of the ``plot_*`` functions.
        dpi: Resolution; the pixel size is the figure size in inches times ``dpi``.

    Returns:
        The PNG file content.

    """
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    # No "Software" tag: the bytes then depend only on the figure, not the matplotlib version.
    fig.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def _plain(text: str, limit: int = 30) -> str:
    """User text for a matplotlib label: shortened, and never parsed as mathtext."""
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    # Two dollar signs would start mathtext, which raises on what is not valid TeX.
    return text.replace("$", r"\$")


def _say(ax: Axes, text: str) -> None:
    """Write a message in the middle of an axes that has nothing to show."""
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")
    ax.set_xticks([])
    ax.set_yticks([])


def _as_scores(values: ArrayLike, name: str) -> np.ndarray:
    scores = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} scores contain NaN or infinite values")
    return scores


def _threshold_or_none(threshold: float | None) -> float | None:
    if threshold is None:
        return None
    value = float(threshold)
    return value if math.isfinite(value) else None


# --------------------------------------------------------------------------------------------
# training curves
# --------------------------------------------------------------------------------------------


def read_training_log(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a trainer's ``log.jsonl`` (one JSON object per line).

    Blank lines and lines that are not JSON objects are skipped: a run killed mid-write leaves
    a truncated last line, and the curves before it are still worth seeing.

    Args:
        path: The ``log.jsonl`` file, or a run folder containing one.

    Returns:
        The records in file order.

    Raises:
        FileNotFoundError: If there is no such file.

    """
    log = Path(path)
    if log.is_dir():
        log = log / "log.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"no training log at {log}")
    records: list[dict[str, Any]] = []
    for line in log.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one logged quantity, sorted by step.

    A resumed run restarts from its last checkpoint and logs some steps again; the later
    record of a step wins, as it belongs to the run that went on.
    """
    by_step: dict[float, float] = {}
    for record in records:
        step, value = record.get("step"), record.get(key)
        if isinstance(step, bool) or not isinstance(step, int | float):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        by_step[float(step)] = float(value)
    steps = np.array(sorted(by_step), dtype=np.float64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def _keys(records: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for record in records for k in record))


def _eval_keys(keys: Sequence[str], records: Sequence[Mapping[str, Any]]) -> list[str]:
    preferred = [f"eval/{k}" for k in _EVAL_CURVE_KEYS if f"eval/{k}" in keys]
    if preferred:
        return preferred
    # A log from another metric set: show whatever looks like a rate.
    out = []
    for key in keys:
        name = key.removeprefix("eval/")
        if not key.startswith("eval/") or name.startswith(("num_", "thr", "threshold")):
            continue
        values = _series(records, key)[1]
        finite = values[np.isfinite(values)]
        if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
            out.append(key)
    return out[: len(_EVAL_CURVE_KEYS)]


def plot_training_curves(
    log: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
) -> Figure:
    """Loss (and its components), learning rate and eval metrics over training steps.

    Args:
        log: A ``log.jsonl`` path, a run folder containing one, or the records themselves
            (dicts with a ``step`` key, as written by the trainer: ``loss``, ``loss/<part>``,
            ``lr`` on training lines, ``eval/<metric>`` on evaluation lines).

    Returns:
        A figure with three axes: loss, learning rate, eval metrics. An axes without data
        says so instead of staying blank.

    """
    if isinstance(log, str | os.PathLike):
        records: list[Mapping[str, Any]] = list(read_training_log(log))
    else:
        records = [r for r in log if isinstance(r, Mapping)]
    keys = _keys(records)
    fig = _new_figure(13.0, 3.8)
    ax_loss, ax_lr, ax_eval = fig.subplots(1, 3)

    ax_loss.set_title("Training loss")
    loss_keys = [k for k in keys if k == "loss" or k.startswith("loss/")]
    positive = True
    drawn = 0
    for key in loss_keys:
        steps, values = _series(records, key)
        if not steps.size:
            continue
        total = key == "loss"
        ax_loss.plot(
            steps,
            values,
            label="total" if total else key.removeprefix("loss/"),
            linewidth=1.8 if total else 1.1,
            color="black" if total else None,
            alpha=1.0 if total else 0.8,
        )
        finite = values[np.isfinite(values)]
        positive &= bool(finite.size) and bool((finite > 0).all())
        drawn += 1
    if drawn:
        # Components can differ by orders of magnitude (a margin loss of 20, a distillation
        # loss of 0.5): on a log axis both stay readable.
        if positive:
            ax_loss.set_yscale("log")
        ax_loss.set_xlabel("step")
        ax_loss.legend(fontsize="small")
        ax_loss.grid(alpha=0.3)
    else:
        _say(ax_loss, "no loss records")

    ax_lr.set_title("Learning rate")
    steps, values = _series(records, "lr")
    if steps.size:
        ax_lr.plot(steps, values, color="tab:purple")
        ax_lr.set_xlabel("step")
        ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
        ax_lr.grid(alpha=0.3)
    else:
        _say(ax_lr, "no learning-rate records")

    ax_eval.set_title("Evaluation during training")
    drawn = 0
    for key in _eval_keys(keys, records):
        steps, values = _series(records, key)
        if steps.size:
            ax_eval.plot(steps, values, marker="o", markersize=3, label=key.removeprefix("eval/"))
            drawn += 1
    if drawn:
        ax_eval.set_xlabel("step")
        ax_eval.set_ylim(-0.02, 1.02)
        ax_eval.legend(fontsize="small")
        ax_eval.grid(alpha=0.3)
    else:
        _say(ax_eval, "no evaluation records")
    return fig


# --------------------------------------------------------------------------------------------
# ROC / DET
# --------------------------------------------------------------------------------------------


def _curve_thresholds(gen_sorted: np.ndarray, imp_sorted: np.ndarray) -> np.ndarray:
    """Thresholds at which to evaluate the curves, ascending, starting below every score."""
    every = np.unique(np.concatenate([gen_sorted, imp_sorted]))
    if every.size > _MAX_CURVE_POINTS:
        # Low false-accept rates are made by the few highest impostor scores: take impostor
        # order statistics at log-spaced ranks from the top, plus genuine quantiles for the
        # high-FAR half of the curve.
        ranks = np.unique(np.geomspace(1, imp_sorted.size, _MAX_CURVE_POINTS * 2 // 3))
        from_imp = imp_sorted[imp_sorted.size - ranks.astype(np.int64)]
        from_gen = np.quantile(gen_sorted, np.linspace(0.0, 1.0, _MAX_CURVE_POINTS // 3))
        every = np.unique(np.concatenate([from_imp, from_gen, every[[0, -1]]]))
    return np.concatenate([[-np.inf], every])


def _rates(
    gen_sorted: np.ndarray, imp_sorted: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """False-accept and true-accept rates at each threshold (accept when score > t)."""
    far = 1.0 - np.searchsorted(imp_sorted, thresholds, side="right") / imp_sorted.size
    tar = 1.0 - np.searchsorted(gen_sorted, thresholds, side="right") / gen_sorted.size
    return far, tar


def _percent(rate: float) -> str:
    return "n/a" if math.isnan(rate) else f"{rate * 100:.3g}%"


def plot_roc_det(
    genuine: ArrayLike,
    impostor: ArrayLike,
    threshold: float | None = None,
    target_far: float | None = None,
) -> Figure:
    """ROC curve (log-scale false-accept axis) and DET curve (normal-deviate axes).

    The ROC shows the true-accept rate (TAR, 1 - FNMR) against the false-accept rate (FAR,
    FMR); the DET shows the two error rates, FNMR against FMR, on normal-deviate scales, where
    Gaussian score distributions give straight lines and the low-error region is stretched
    out. False-accept rates of zero cannot be drawn on these axes and are shown at the left
    edge (half of one impostor pair).

    Args:
        genuine: Scores of same-identity pairs.
        impostor: Scores of different-identity pairs.
        threshold: Operating threshold to mark on both curves (``None`` or NaN: no mark).
        target_far: False-accept rate the threshold was calibrated for, drawn as a dotted
            vertical line.

    Returns:
        A figure with two axes: ROC and DET.

    Raises:
        ValueError: If a score is NaN or infinite.

    """
    gen = np.sort(_as_scores(genuine, "genuine"))
    imp = np.sort(_as_scores(impostor, "impostor"))
    thr = _threshold_or_none(threshold)
    fig = _new_figure(11.0, 4.6)
    ax_roc, ax_det = fig.subplots(1, 2)
    ax_roc.set_title("ROC")
    ax_det.set_title("DET")
    if not gen.size or not imp.size:
        missing = "no genuine pairs" if not gen.size else "no impostor pairs"
        _say(ax_roc, missing)
        _say(ax_det, missing)
        return fig

    far, tar = _rates(gen, imp, _curve_thresholds(gen, imp))
    far_floor = 0.5 / imp.size
    frr_floor = 0.5 / gen.size

    ax_roc.plot(np.maximum(far, far_floor), tar, color="tab:blue", label="model")
    chance = np.geomspace(far_floor, 1.0, 50)
    ax_roc.plot(chance, chance, color="0.6", linestyle=":", linewidth=1, label="chance")
    ax_roc.set_xscale("log")
    ax_roc.set_xlim(far_floor, 1.0)
    ax_roc.set_ylim(-0.02, 1.02)
    ax_roc.set_xlabel("false-accept rate (FAR, log scale)")
    ax_roc.set_ylabel("true-accept rate (TAR)")
    ax_roc.grid(alpha=0.3, which="both")

    lo = min(far_floor, frr_floor)
    det_x = _probit(np.clip(far, far_floor, 1.0 - far_floor))
    det_y = _probit(np.clip(1.0 - tar, frr_floor, 1.0 - frr_floor))
    ax_det.plot(det_x, det_y, color="tab:blue", label="model")
    ticks = [t for t in _DET_TICKS if t >= lo * 0.999]
    tick_pos = _probit(np.array(ticks))
    ax_det.plot(tick_pos, tick_pos, color="0.6", linestyle=":", linewidth=1, label="FMR = FNMR")
    ax_det.set_xticks(tick_pos, [_percent(t) for t in ticks])
    ax_det.set_yticks(tick_pos, [_percent(t) for t in ticks])
    ax_det.set_xlim(float(_probit(far_floor)), float(_probit(0.99)))
    ax_det.set_ylim(float(_probit(frr_floor)), float(_probit(0.99)))
    ax_det.set_xlabel("false match rate (FMR)")
    ax_det.set_ylabel("false non-match rate (FNMR)")
    ax_det.tick_params(axis="x", labelrotation=45)
    ax_det.grid(alpha=0.3)

    eer, _ = equal_error_rate(gen, imp)
    if math.isfinite(eer):
        point = float(_probit(min(max(eer, lo), 1.0 - lo)))
        ax_det.plot([point], [point], "s", color="tab:green", label=f"EER {_percent(eer)}")

    if target_far is not None and math.isfinite(float(target_far)) and float(target_far) > 0:
        ax_roc.axvline(
            float(target_far),
            color=THRESHOLD_COLOUR,
            linestyle=":",
            linewidth=1,
            label=f"target FAR {_percent(float(target_far))}",
        )
    if thr is not None:
        (far_t,), (tar_t,) = _rates(gen, imp, np.array([thr]))
        label = f"threshold {thr:.3f}: FAR {_percent(far_t)}, TAR {_percent(tar_t)}"
        ax_roc.plot([max(far_t, far_floor)], [tar_t], "o", color="tab:red", label=label)
        x = float(_probit(min(max(far_t, far_floor), 1.0 - far_floor)))
        y = float(_probit(min(max(1.0 - tar_t, frr_floor), 1.0 - frr_floor)))
        ax_det.plot([x], [y], "o", color="tab:red", label=f"threshold {thr:.3f}")
    ax_roc.legend(fontsize="small", loc="lower right")
    ax_det.legend(fontsize="small", loc="upper right")
    return fig


# --------------------------------------------------------------------------------------------
# score histograms
# --------------------------------------------------------------------------------------------


def plot_score_histograms(
    genuine: ArrayLike,
    impostor: ArrayLike,
    threshold: float | None = None,
    bins: int = 60,
) -> Figure:
    """Genuine and impostor score distributions with the decision threshold.

    Each distribution is normalised to fractions of its own pairs (there are far more
    impostor than genuine pairs). The left axes are linear, the right ones logarithmic: a
    threshold calibrated at a low false-accept rate cuts the impostor tail, which is invisible
    on a linear scale.

    Args:
        genuine: Scores of same-identity pairs.
        impostor: Scores of different-identity pairs.
        threshold: Decision threshold drawn as a vertical line, with the false-accept and
            false-reject rates it gives (``None`` or NaN: no line).
        bins: Number of bins shared by both distributions.

    Returns:
        A figure with two axes: linear and log-scale fractions.

    Raises:
        ValueError: If a score is NaN or infinite, or ``bins < 1``.

    """
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    gen = _as_scores(genuine, "genuine")
    imp = _as_scores(impostor, "impostor")
    thr = _threshold_or_none(threshold)
    fig = _new_figure(11.0, 4.0)
    ax_lin, ax_log = fig.subplots(1, 2)
    ax_lin.set_title("Score distributions")
    ax_log.set_title("Score distributions (log scale: the tails)")
    if not gen.size and not imp.size:
        _say(ax_lin, "no pairs")
        _say(ax_log, "no pairs")
        return fig

    both = np.concatenate([gen, imp])
    lo, hi = float(both.min()), float(both.max())
    if thr is not None:
        lo, hi = min(lo, thr), max(hi, thr)
    if hi - lo < 1e-6:
        # All scores equal: give the single bar some width instead of a zero-width range.
        lo, hi = lo - 0.05, hi + 0.05
    edges = np.linspace(lo, hi, int(bins) + 1)

    smallest = 1.0
    for ax in (ax_lin, ax_log):
        for scores, name, colour in (
            (imp, "impostor", IMPOSTOR_COLOUR),
            (gen, "genuine", GENUINE_COLOUR),
        ):
            if not scores.size:
                continue
            counts, _ = np.histogram(scores, bins=edges)
            fraction = counts / scores.size
            smallest = min(smallest, 1.0 / scores.size)
            label = f"{name} ({scores.size:,} pairs)"
            if ax is ax_lin:
                ax.stairs(fraction, edges, fill=True, alpha=0.45, color=colour, label=label)
            else:
                ax.stairs(fraction, edges, color=colour, linewidth=1.4, label=label)
        ax.set_xlabel("score (cosine similarity)")
        ax.set_ylabel("fraction of pairs")
        ax.grid(alpha=0.3)
    ax_log.set_yscale("log")
    ax_log.set_ylim(bottom=smallest * 0.5)

    if thr is not None:
        far = float((imp > thr).mean()) if imp.size else math.nan
        frr = float((gen <= thr).mean()) if gen.size else math.nan
        label = f"threshold {thr:.3f}: FAR {_percent(far)}, FRR {_percent(frr)}"
        for ax in (ax_lin, ax_log):
            ax.axvline(thr, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1.2, label=label)
    ax_lin.legend(fontsize="small", loc="upper left")
    ax_log.legend(fontsize="small", loc="upper left")
    return fig


# --------------------------------------------------------------------------------------------
# embedding map
# --------------------------------------------------------------------------------------------


def _pca_2d(x: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """First two principal components and the fraction of variance each explains."""
    centred = x - x.mean(axis=0, keepdims=True)
    if centred.shape[0] < 2:
        return np.zeros((centred.shape[0], 2)), (math.nan, math.nan)
    _, sv, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    variance = sv**2
    total = float(variance.sum())
    explained = [float(v / total) if total > 0 else math.nan for v in variance[:2]]
    while coords.shape[1] < 2:
        coords = np.column_stack([coords, np.zeros(coords.shape[0])])
        explained.append(0.0)
    return coords, (explained[0], explained[1])


def _tsne_2d(x: np.ndarray, seed: int) -> np.ndarray | None:
    """t-SNE coordinates, or ``None`` if scikit-learn is not installed."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        return None
    # t-SNE requires perplexity < number of samples.
    perplexity = float(min(30.0, max(1.0, (x.shape[0] - 1) / 3)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return np.asarray(tsne.fit_transform(x), dtype=np.float64)


def _class_colours(num_classes: int, seed: int) -> np.ndarray:
    if num_classes <= 10:
        return np.asarray(matplotlib.colormaps["tab10"].colors)[:num_classes]
    if num_classes <= 20:
        return np.asarray(matplotlib.colormaps["tab20"].colors)[:num_classes]
    colours = matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, num_classes))
    # Neighbouring label codes (alphabetical names) would otherwise get near-identical hues.
    return colours[np.random.default_rng(seed).permutation(num_classes)]


def plot_embedding_map(
    embeddings: ArrayLike,
    labels: ArrayLike,
    method: str = "pca",
    max_points: int = 5000,
    max_legend: int = 12,
    seed: int = 0,
) -> Figure:
    """2-D map of the embeddings, one colour per class.

    Args:
        embeddings: ``(N, D)`` embeddings.
        labels: ``(N,)`` labels (any type; compared by equality, shown with ``str``).
        method: ``"pca"`` (exact, via numpy's SVD) or ``"tsne"`` (needs scikit-learn; without
            it the map falls back to PCA and the title says so).
        max_points: Larger sets are subsampled uniformly to this many points (seeded), which
            keeps t-SNE tractable and the scatter readable.
        max_legend: A legend is drawn only up to this many classes; beyond, it would cover
            the map.
        seed: Seed of the subsampling, the t-SNE and the colour order.

    Returns:
        A figure with one axes.

    Raises:
        ValueError: On an unknown ``method``, a non-2-D or non-finite ``embeddings``, a
            length mismatch or a ``max_points < 1``.

    """
    if method not in ("pca", "tsne"):
        raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}")
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise ValueError(f"max_points must be a positive integer, got {max_points!r}")
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    lab = np.asarray(labels).reshape(-1)
    if lab.shape[0] != x.shape[0]:
        raise ValueError(f"{lab.shape[0]} labels for {x.shape[0]} embeddings; they must match")

    fig = _new_figure(7.5, 6.2)
    ax = fig.subplots()
    if x.shape[0] == 0:
        ax.set_title("Embedding map")
        _say(ax, "no embeddings")
        return fig
    note = ""
    if x.shape[0] > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(x.shape[0], max_points, replace=False))
        x, lab = x[keep], lab[keep]
        note = f", random {max_points:,} of the points"

    coords = None
    if method == "tsne" and x.shape[0] > 2:
        coords = _tsne_2d(x, seed)
        if coords is None:
            note += "; t-SNE unavailable (scikit-learn not installed), PCA shown"
    if coords is not None:
        name = "t-SNE"
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        coords, explained = _pca_2d(x)
        name = "PCA"
        ax.set_xlabel(f"PC 1 ({_percent(explained[0])} of variance)")
        ax.set_ylabel(f"PC 2 ({_percent(explained[1])} of variance)")

    names, codes = np.unique(lab.astype(str), return_inverse=True)
    codes = codes.reshape(-1)
    colours = _class_colours(names.size, seed)
    size = float(np.clip(4000 / x.shape[0], 6, 40))
    for c in range(names.size):
        member = codes == c
        ax.scatter(
            coords[member, 0],
            coords[member, 1],
            s=size,
            color=colours[c],
            alpha=0.8,
            linewidths=0,
            label=_plain(str(names[c])),
        )
    ax.set_title(f"Embedding map ({name}, {names.size} classes{note})", fontsize="medium")
    if names.size <= max_legend:
        ax.legend(fontsize="small", markerscale=1.5, loc="best")
    ax.grid(alpha=0.2)
    return fig
