"""Evaluation figures, the HTML report and ``openrecog eval --report``."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from matplotlib.figure import Figure
from typer.testing import CliRunner

from openrecog.cli.main import app
from openrecog.eval.metrics import evaluate_embeddings, pair_scores, verification_metrics
from openrecog.eval.plots import (
    figure_to_png,
    plot_embedding_map,
    plot_roc_det,
    plot_score_histograms,
    plot_training_curves,
    read_training_log,
)
from openrecog.eval.report import write_report
from openrecog.models import create_model, save_artifact

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def clusters(num_classes: int = 3, per_class: int = 15, dim: int = 16, seed: int = 0):
    """L2-normalised Gaussian clusters, one per class."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_classes, dim)) * 2.0
    emb = np.concatenate([c + rng.normal(size=(per_class, dim)) for c in centres])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32), np.repeat(np.arange(num_classes), per_class)


def synthetic_log(path, steps: int = 50, eval_every: int = 20) -> None:
    lines = []
    for step in range(5, steps + 1, 5):
        lines.append(
            {
                "step": step,
                "loss": 10.0 / step,
                "lr": 1e-3 * (1 - step / (steps + 1)),
                "img_per_s": 30.0,
                "loss/margin": 8.0 / step,
                "loss/distill": 2.0 / step,
            }
        )
        if step % eval_every == 0:
            lines.append({"step": step, "eval/p@1": step / steps, "eval/auroc": 0.9})
    text = "\n".join(json.dumps(line) for line in lines)
    # A run killed mid-write leaves a truncated last line.
    path.write_text(text + '\n{"step": 55, "lo')


@pytest.fixture(scope="module")
def scores():
    emb, labels = clusters()
    genuine, impostor = pair_scores(emb, labels)
    return genuine, impostor, evaluate_embeddings(emb, labels)["threshold"]


def test_pair_scores_match_the_metrics() -> None:
    emb, labels = clusters()
    genuine, impostor = pair_scores(emb, labels)
    metrics = verification_metrics(emb, labels)
    assert genuine.size == metrics["num_genuine"] == 3 * 15 * 14 // 2
    assert impostor.size == metrics["num_impostor"]
    sampled = pair_scores(emb, labels, max_pairs=100)[1]
    assert sampled.size == 100
    # Sampled pairs are scored with another kernel than the full matrix: equal up to rounding.
    assert np.abs(sampled[:, None] - impostor[None, :]).min(axis=1).max() < 1e-5


def test_roc_det_axes_and_threshold_mark(scores) -> None:
    genuine, impostor, threshold = scores
    fig = plot_roc_det(genuine, impostor, threshold=threshold, target_far=1e-2)
    assert isinstance(fig, Figure)
    roc, det = fig.axes
    assert [roc.get_title(), det.get_title()] == ["ROC", "DET"]
    assert roc.get_xscale() == "log"
    labels = [line.get_label() for line in roc.get_lines()]
    assert "model" in labels and any(lab.startswith("threshold ") for lab in labels)
    assert any(lab.startswith("target FAR") for lab in labels)
    assert any(line.get_label().startswith("EER") for line in det.get_lines())
    # The DET ticks are error rates, labelled as percentages.
    assert "1%" in [t.get_text() for t in det.get_xticklabels()]
    assert figure_to_png(fig).startswith(PNG_MAGIC)


def test_histograms_show_both_distributions_and_threshold(scores) -> None:
    genuine, impostor, threshold = scores
    fig = plot_score_histograms(genuine, impostor, threshold)
    linear, log = fig.axes
    assert log.get_yscale() == "log"
    legend = [t.get_text() for t in linear.get_legend().get_texts()]
    assert any(t.startswith("genuine") for t in legend)
    assert any(t.startswith("impostor") for t in legend)
    assert any(t.startswith(f"threshold {threshold:.3f}") for t in legend)
    assert figure_to_png(fig).startswith(PNG_MAGIC)


@pytest.mark.parametrize(
    ("genuine", "impostor", "threshold"),
    [
        ([0.5, 0.5, 0.5], [0.5, 0.5], 0.5),  # every score equal
        ([0.9], [0.1], 0.3),  # one pair each
        ([], [0.1, 0.2], 0.15),  # no genuine pair
        ([0.7], [], None),  # no impostor pair
        ([], [], float("nan")),
    ],
)
def test_score_plots_survive_degenerate_input(genuine, impostor, threshold) -> None:
    for fig in (
        plot_score_histograms(genuine, impostor, threshold),
        plot_roc_det(genuine, impostor, threshold=threshold, target_far=1e-3),
    ):
        assert len(fig.axes) == 2
        assert figure_to_png(fig).startswith(PNG_MAGIC)


def test_score_plots_reject_non_finite_scores() -> None:
    with pytest.raises(ValueError, match="NaN or infinite"):
        plot_roc_det([0.1, np.nan], [0.2])
    with pytest.raises(ValueError, match="bins"):
        plot_score_histograms([0.1], [0.2], bins=0)


def test_embedding_map_colours_classes_and_limits_the_legend() -> None:
    emb, labels = clusters()
    fig = plot_embedding_map(emb, labels)
    (ax,) = fig.axes
    assert len(ax.collections) == 3  # one scatter per class
    assert ax.get_legend() is not None
    assert "PCA" in ax.get_title() and "PC 1" in ax.get_xlabel()

    many, many_labels = clusters(num_classes=30, per_class=3)
    ax = plot_embedding_map(many, many_labels, max_points=50).axes[0]
    assert ax.get_legend() is None
    assert sum(len(c.get_offsets()) for c in ax.collections) == 50
    assert "50" in ax.get_title()


def test_embedding_map_tsne_falls_back_to_pca_without_sklearn() -> None:
    emb, labels = clusters(per_class=5)
    title = plot_embedding_map(emb, labels, method="tsne").axes[0].get_title()
    try:
        import sklearn  # noqa: F401
    except ImportError:
        assert "PCA" in title and "scikit-learn not installed" in title
    else:  # pragma: no cover - sklearn is not a dependency
        assert "t-SNE" in title
    with pytest.raises(ValueError, match="method"):
        plot_embedding_map(emb, labels, method="umap")


def test_embedding_map_tiny_and_odd_labels() -> None:
    fig = plot_embedding_map([[1.0, 0.0]], ["only $one$"])
    assert figure_to_png(fig).startswith(PNG_MAGIC)
    fig = plot_embedding_map(np.ones((4, 1)), ["a", "a", "b", "b"])
    assert figure_to_png(fig).startswith(PNG_MAGIC)


def test_training_curves_from_log_file_and_records(tmp_path) -> None:
    log = tmp_path / "log.jsonl"
    synthetic_log(log)
    records = read_training_log(tmp_path)
    assert len(records) == 12  # 10 training + 2 eval lines, the truncated one skipped
    fig = plot_training_curves(log)
    loss, lr, evals = fig.axes
    assert {line.get_label() for line in loss.get_lines()} == {"total", "margin", "distill"}
    assert len(lr.get_lines()) == 1
    assert {line.get_label() for line in evals.get_lines()} == {"p@1", "auroc"}
    steps = evals.get_lines()[0].get_xdata()
    assert list(steps) == [20.0, 40.0]
    assert figure_to_png(fig).startswith(PNG_MAGIC)

    # Only training lines (evaluation disabled): the eval axes says so instead of crashing.
    fig = plot_training_curves([r for r in records if "loss" in r])
    assert not fig.axes[2].get_lines()
    assert "no evaluation records" in [t.get_text() for t in fig.axes[2].texts]
    with pytest.raises(FileNotFoundError):
        read_training_log(tmp_path / "missing")


def test_training_curves_keep_the_later_record_of_a_resumed_step() -> None:
    records = [
        {"step": 10, "loss": 5.0, "lr": 0.1},
        {"step": 20, "loss": 4.0, "lr": 0.1},
        {"step": 10, "loss": 3.0, "lr": 0.1},  # resumed from the step-10 checkpoint
    ]
    line = plot_training_curves(records).axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [10.0, 20.0]
    assert list(line.get_ydata()) == [3.0, 4.0]


def test_report_is_self_contained_and_escaped(tmp_path) -> None:
    emb, labels = clusters()
    names = np.array(["<script>alert(1)</script>", "b & c", "plain"])[labels]
    metrics = evaluate_embeddings(emb, names)
    run = tmp_path / "run"
    run.mkdir()
    synthetic_log(run / "log.jsonl")
    path = write_report(
        tmp_path / "out",
        embeddings=emb,
        labels=names,
        metrics=metrics,
        title='eval of "<model>"',
        model_name="<b>model</b>",
        data_name="data <i>set</i>",
        run_dir=run,
        info={"note": "<img src=x>"},
    )
    assert path == tmp_path / "out" / "report.html"
    text = path.read_text(encoding="utf-8")
    assert text.count("data:image/png;base64,") == 4
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text)
    assert "http://" not in text and "https://" not in text
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<b>model</b>" not in text and "&lt;b&gt;model&lt;/b&gt;" in text
    assert "<img src=x>" not in text and "b &amp; c" in text
    assert f"{metrics['threshold']:.4f}" in text
    for name in ("training_curves", "roc_det", "score_histograms", "embedding_map"):
        assert (tmp_path / "out" / f"{name}.png").read_bytes().startswith(PNG_MAGIC)


def test_report_without_run_and_missing_run(tmp_path) -> None:
    emb, labels = clusters(per_class=4)
    metrics = evaluate_embeddings(emb, labels)
    common = {"embeddings": emb, "labels": labels, "metrics": metrics}
    path = write_report(tmp_path / "a", model_name="m", data_name="d", **common)
    assert path.read_text(encoding="utf-8").count("data:image/png;base64,") == 3
    assert not (tmp_path / "a" / "training_curves.png").exists()
    with pytest.raises(FileNotFoundError):
        write_report(tmp_path / "b", model_name="m", data_name="d", run_dir=tmp_path, **common)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A trained-looking run: runs/r/best next to runs/r/log.jsonl."""
    run = tmp_path_factory.mktemp("runs") / "r"
    save_artifact(create_model("lite0_gap_imagenet", image_size=64), run / "best")
    synthetic_log(run / "log.jsonl")
    return run / "best"


def test_eval_command_writes_a_report(model_dir, pattern_folder, tmp_path) -> None:
    out = tmp_path / "report"
    result = CliRunner().invoke(
        app,
        ["eval", str(model_dir), "--data", str(pattern_folder), "--report", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert f"report written to {out / 'report.html'}" in result.output
    assert "p@1" in result.output  # the usual metrics table is still printed
    text = (out / "report.html").read_text(encoding="utf-8")
    # The run's training curves were found from best/'s parent folder.
    assert (out / "training_curves.png").is_file() and "Training" in text
    assert "class_3" in text
    # Only figures are embedded: four PNG data URIs, no JPEG or dataset image.
    assert text.count("data:image/") == text.count("data:image/png;base64,") == 4


def test_eval_command_report_options_errors(model_dir, pattern_folder, tmp_path) -> None:
    runner = CliRunner()
    base = ["eval", str(model_dir), "--data", str(pattern_folder)]
    result = runner.invoke(app, [*base, "--run", str(tmp_path)])
    assert result.exit_code == 2 and "--run only matters with --report" in result.output
    result = runner.invoke(app, [*base, "--report", str(tmp_path / "o"), "--run", str(tmp_path)])
    assert result.exit_code == 2 and "no training log" in result.output
