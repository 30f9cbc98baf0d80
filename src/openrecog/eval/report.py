"""A self-contained HTML evaluation report: the figures people look at, and the numbers.

``report.html`` embeds its figures as base64 PNG data URIs and its style inline, and loads
nothing from anywhere, so it can be mailed, attached to a ticket or opened offline. The same
figures are also written as PNG files next to it, for slides and READMEs. No image of the
dataset is ever embedded: the report shows plots and numbers only.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike

from openrecog import __version__
from openrecog.eval.metrics import pair_scores
from openrecog.eval.plots import (
    figure_to_png,
    plot_embedding_map,
    plot_roc_det,
    plot_score_histograms,
    plot_training_curves,
    read_training_log,
)

__all__ = ["REPORT_FILE", "write_report"]

REPORT_FILE = "report.html"

# What each metric means, for readers who do not know the abbreviations by heart.
_DESCRIPTIONS: dict[str, str] = {
    "p@1": "the nearest other image has the query's class",
    "map@5": "mean average precision of the top 5 neighbours",
    "mp@5": "mean precision of the top 5 neighbours (GUIE mP@5)",
    "num_queries": "queries whose class has another image",
    "auroc": "probability that a genuine pair outscores an impostor pair",
    "eer": "error rate where false accepts and false rejects are equal",
    "thr@eer": "threshold of the equal error rate",
    "num_genuine": "same-class pairs scored",
    "num_impostor": "different-class pairs scored",
    "num_impostor_total": "different-class pairs in the set",
    "threshold": "operating threshold: accept a pair when its score is above it",
    "target_far": "false-accept rate the threshold is calibrated for",
    "open_set/accuracy": "queries identified correctly or rejected correctly as unknown",
    "open_set/known_accuracy": "known queries accepted with the right identity",
    "open_set/known_rank1": "known queries whose nearest gallery item is right",
    "open_set/unknown_rejection": "unknown queries rejected",
    "open_set/false_accept_rate": "unknown queries accepted as someone",
    "open_set/num_queries": "open-set queries",
    "open_set/num_known": "queries whose class is in the gallery",
    "open_set/num_unknown": "queries whose class is not in the gallery",
    "open_set/num_gallery": "gallery images (one per known class)",
}

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1f2328; background: #f6f8fa; }
main { max-width: 1180px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 1.6rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 32px 0 8px; border-bottom: 1px solid #d0d7de;
     padding-bottom: 4px; }
.meta { color: #57606a; margin: 0 0 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 16px 0; }
.card { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 12px 16px;
        min-width: 150px; }
.card .value { font-size: 1.7rem; font-weight: 600; }
.card .label { color: #57606a; font-size: 0.85rem; }
figure { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; margin: 12px 0;
         padding: 12px; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: #57606a; font-size: 0.9rem; margin-top: 8px; }
table { border-collapse: collapse; background: #fff; margin: 8px 0; font-size: 0.92rem; }
th, td { border: 1px solid #d0d7de; padding: 4px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #eef1f4; }
.grid { display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }
footer { color: #57606a; font-size: 0.85rem; margin-top: 32px; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return "n/a"
        if number != 0 and abs(number) < 1e-3:
            return f"{number:.1e}"
        return f"{number:.4f}"
    return str(value)


def _percent(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(number) else f"{number * 100:.1f}%"


def _group(key: str) -> str:
    if key.startswith("open_set/"):
        return "Open-set identification"
    if key in ("threshold", "target_far"):
        return "Operating point"
    if key.startswith(("p@", "map@", "mp@", "recall@")) or key == "num_queries":
        return "Retrieval (leave-one-out)"
    if key.startswith(("tpr@", "thr@")) or key in (
        "auroc",
        "eer",
        "num_genuine",
        "num_impostor",
        "num_impostor_total",
    ):
        return "Verification (all pairs)"
    return "Other"


def _describe(key: str) -> str:
    if key in _DESCRIPTIONS:
        return _DESCRIPTIONS[key]
    if key.startswith("recall@"):
        return f"a same-class image among the top {key.removeprefix('recall@')} neighbours"
    if key.startswith("tpr@fpr="):
        return f"genuine pairs accepted when {key.removeprefix('tpr@fpr=')} of impostors are"
    if key.startswith("thr@fpr="):
        return f"threshold giving a false-accept rate of {key.removeprefix('thr@fpr=')}"
    return ""


def _metrics_tables(metrics: Mapping[str, Any]) -> str:
    groups: dict[str, list[str]] = {}
    for key in metrics:
        groups.setdefault(_group(str(key)), []).append(str(key))
    parts = []
    order = [
        "Retrieval (leave-one-out)",
        "Verification (all pairs)",
        "Operating point",
        "Open-set identification",
        "Other",
    ]
    for name in order:
        if name not in groups:
            continue
        rows = "".join(
            f'<tr><td>{_e(k)}</td><td class="num">{_e(_fmt(metrics[k]))}</td>'
            f"<td>{_e(_describe(k))}</td></tr>"
            for k in groups[name]
        )
        parts.append(
            f"<h3>{_e(name)}</h3><table><thead><tr><th>metric</th><th>value</th>"
            f"<th>meaning</th></tr></thead><tbody>{rows}</tbody></table>"
        )
    return "\n".join(parts)


def _cards(metrics: Mapping[str, Any]) -> str:
    far = metrics.get("target_far")
    cards: list[tuple[str, str]] = [
        (_percent(metrics.get("p@1")), "precision@1"),
        (_percent(metrics.get("map@5")), "mAP@5"),
    ]
    if isinstance(far, int | float) and math.isfinite(far) and far > 0:
        cards.append(
            (
                _percent(metrics.get(f"tpr@fpr={far:.0e}")),
                f"genuine pairs accepted at {far:.0e} false accepts",
            )
        )
    cards.append((_percent(metrics.get("eer")), "equal error rate"))
    threshold = metrics.get("threshold")
    if threshold is not None:
        cards.append((_fmt(threshold), "threshold (cosine similarity)"))
    return "".join(
        f'<div class="card"><div class="value">{_e(v)}</div><div class="label">{_e(label)}'
        "</div></div>"
        for v, label in cards
    )


def _key_values(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


def _class_table(labels: np.ndarray, limit: int = 10) -> str:
    names, counts = np.unique(labels.astype(str), return_counts=True)
    order = np.lexsort((names, -counts))[:limit]
    body = "".join(
        f'<tr><td>{_e(names[i])}</td><td class="num">{int(counts[i]):,}</td></tr>' for i in order
    )
    caption = "largest classes" if names.size > limit else "classes"
    return (
        f"<table><thead><tr><th>{_e(caption)}</th><th>images</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def _figure_html(png: bytes, name: str, heading: str, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return (
        f"<h2>{_e(heading)}</h2><figure>"
        f'<img src="data:image/png;base64,{data}" alt="{_e(heading)}">'
        f"<figcaption>{_e(caption)} (also saved as {_e(name)})</figcaption></figure>"
    )


def write_report(
    out_dir: str | os.PathLike[str],
    *,
    embeddings: ArrayLike,
    labels: ArrayLike,
    metrics: Mapping[str, Any],
    title: str = "openrecog evaluation",
    model_name: str,
    data_name: str,
    run_dir: str | os.PathLike[str] | None = None,
    info: Mapping[str, Any] | None = None,
    embedding_method: str = "pca",
    max_pairs: int = 5_000_000,
    seed: int = 0,
) -> Path:
    """Write ``report.html`` and one PNG per figure into ``out_dir``.

    The report holds headline numbers, the dataset and model description, the ROC/DET curves
    and score histograms with the operating threshold, a 2-D map of the embeddings, the
    training curves when a run folder is given, and every metric in a table. The genuine and
    impostor scores are recomputed from ``embeddings`` with the pairs of
    :func:`~openrecog.eval.metrics.evaluate_embeddings` (same ``max_pairs`` and ``seed``),
    so the plots agree with ``metrics``.

    Args:
        out_dir: Output folder, created if needed; existing report files are overwritten.
        embeddings: ``(N, D)`` L2-normalised embeddings of the evaluation images.
        labels: ``(N,)`` labels of the embeddings.
        metrics: Output of :func:`~openrecog.eval.metrics.evaluate_embeddings` (``threshold``
            and ``target_far`` are used to mark the operating point).
        title: Report title.
        model_name: Model shown in the report (name or artifact path).
        data_name: Dataset shown in the report (path, split, ...).
        run_dir: Training run folder (or its ``log.jsonl``) whose curves to include.
        info: Extra ``name: value`` rows for the description table.
        embedding_method: ``"pca"`` or ``"tsne"`` for the embedding map.
        max_pairs: Maximum number of impostor pairs, as given to ``evaluate_embeddings``.
        seed: Seed of the impostor sampling and of the embedding map.

    Returns:
        The path of ``report.html``.

    Raises:
        ValueError: On invalid embeddings or labels (see
            :func:`~openrecog.eval.metrics.pair_scores`).
        FileNotFoundError: If ``run_dir`` is given but holds no ``log.jsonl``.

    """
    emb = np.asarray(embeddings, dtype=np.float32)
    lab = np.asarray(labels).reshape(-1)
    records = read_training_log(run_dir) if run_dir is not None else None
    genuine, impostor = pair_scores(emb, lab, max_pairs=max_pairs, seed=seed)
    threshold = metrics.get("threshold")
    target_far = metrics.get("target_far")

    figures: list[tuple[str, str, str, Figure]] = []
    if records is not None:
        figures.append(
            (
                "training_curves.png",
                "Training",
                f"Loss, learning rate and evaluation metrics logged by the run in {run_dir}.",
                plot_training_curves(records),
            )
        )
    figures.append(
        (
            "roc_det.png",
            "ROC and DET curves",
            "Left: share of genuine pairs accepted against share of impostor pairs accepted. "
            "Right: both error rates on normal-deviate scales (lower left is better). "
            "The red dot is the operating threshold.",
            plot_roc_det(genuine, impostor, threshold=threshold, target_far=target_far),
        )
    )
    figures.append(
        (
            "score_histograms.png",
            "Genuine and impostor scores",
            "Cosine similarity of same-class (genuine) and different-class (impostor) pairs; "
            "pairs scoring above the dashed threshold are accepted as the same identity.",
            plot_score_histograms(genuine, impostor, threshold=threshold),
        )
    )
    figures.append(
        (
            "embedding_map.png",
            "Embedding map",
            "Each point is one image, coloured by class; classes that form tight, separate "
            "clusters are easy to recognise.",
            plot_embedding_map(emb, lab, method=embedding_method, seed=seed),
        )
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    for name, heading, caption, fig in figures:
        png = figure_to_png(fig)
        (out / name).write_bytes(png)
        sections.append(_figure_html(png, name, heading, caption))

    counts = np.unique(lab.astype(str), return_counts=True)[1]
    description: list[tuple[str, Any]] = [
        ("model", model_name),
        ("data", data_name),
        ("images", int(lab.size)),
        ("classes", int(counts.size)),
        (
            "images per class (min / median / max)",
            f"{int(counts.min())} / {float(np.median(counts)):g} / {int(counts.max())}",
        ),
        ("embedding dimension", int(emb.shape[1])),
        ("genuine pairs", int(genuine.size)),
        ("impostor pairs", int(impostor.size)),
    ]
    total = metrics.get("num_impostor_total")
    if isinstance(total, int) and total > impostor.size:
        description.append(("impostor pairs sampled from", total))
    description.extend((str(k), v) for k, v in (info or {}).items())

    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    document = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_e(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
<main>
<h1>{_e(title)}</h1>
<p class="meta">model <b>{_e(model_name)}</b> on <b>{_e(data_name)}</b>,
generated {_e(generated)} by openrecog {_e(__version__)}</p>
<div class="cards">{_cards(metrics)}</div>
<h2>Data and model</h2>
<div class="grid">{_key_values(description)}{_class_table(lab)}</div>
{"".join(sections)}
<h2>All metrics</h2>
{_metrics_tables(metrics)}
<footer>Each image is queried against all the others (leave-one-out); a pair is accepted when
its cosine similarity is above the threshold. This file is self-contained: it loads nothing
from the network.</footer>
</main>
</body>
</html>
"""
    path = out / REPORT_FILE
    path.write_text(document, encoding="utf-8")
    return path
