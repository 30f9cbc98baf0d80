"""Tests for openrecog.eval.metrics and openrecog.eval.table."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from openrecog.eval.metrics import (
    auroc_from_scores,
    calibrate_threshold,
    evaluate_embeddings,
    open_set_metrics,
    retrieval_metrics,
    split_gallery_queries,
    verification_from_scores,
    verification_metrics,
)
from openrecog.eval.table import format_table, metrics_to_json


def unit(angles_deg: list[float]) -> np.ndarray:
    rad = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1).astype(np.float32)


def random_embeddings(n: int, d: int, num_classes: int, seed: int = 0, noise: float = 0.8):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, d))
    labels = rng.integers(0, num_classes, size=n)
    emb = centers[labels] + noise * rng.normal(size=(n, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return emb.astype(np.float32), labels


# --------------------------------------------------------------------------------------------
# retrieval
# --------------------------------------------------------------------------------------------

# Seven points on the unit circle; cosine similarity decreases with the angular distance, so
# the rankings below follow from the angles alone (no two distances from a query are equal).
#   A0=0°, A1=10°, B0=25°, B1=107°, A2=170°, C0=200° (singleton), D0=300° (singleton)
HAND_ANGLES = [0, 10, 25, 107, 170, 200, 300]
HAND_LABELS = ["A", "A", "B", "B", "A", "C", "D"]
# Rankings (distance in degrees), relevant items marked *; n_q = other samples of the class:
#   A0: A1* 10, B0 25, D0 60, B1 107, C0 160 | A2* 170   n_q=2
#       rel=[1,0,0,0,0]  AP@5=(1/1)/2=0.5      mP@5=1/2=0.5
#   A1: A0* 10, B0 15, D0 70, B1 97, A2* 160 | C0 170    n_q=2
#       rel=[1,0,0,0,1]  AP@5=(1+2/5)/2=0.7    mP@5=2/2=1
#   B0: A1 15, A0 25, B1* 82, D0 85, A2 145 | C0 175     n_q=1
#       rel=[0,0,1,0,0]  AP@5=(1/3)/1=1/3      mP@5=1/1=1
#   B1: A2 63, B0* 82, C0 93, A1 97, A0 107 | D0 167     n_q=1
#       rel=[0,1,0,0,0]  AP@5=(1/2)/1=0.5      mP@5=1
#   A2: C0 30, B1 63, D0 130, B0 145, A1* 160 | A0* 170  n_q=2
#       rel=[0,0,0,0,1]  AP@5=(1/5)/2=0.1      mP@5=1/2=0.5
#   C0, D0: singleton classes -> skipped, num_queries = 5
# p@1 = (1+1+0+0+0)/5 = 0.4
# map@5 = (0.5+0.7+1/3+0.5+0.1)/5 = (32/15)/5 = 32/75
# mp@5 = (0.5+1+1+1+0.5)/5 = 0.8
# recall@1 = 2/5; recall@2: A0,A1,B1 -> 3/5; recall@3: +B0 -> 4/5; recall@5: all -> 1
# recall@10 > N-1 = 6 neighbours -> the whole reference set -> 1


def test_retrieval_hand_computed():
    m = retrieval_metrics(unit(HAND_ANGLES), HAND_LABELS, ks=(1, 2, 3, 5, 10))
    assert m["num_queries"] == 5
    assert m["p@1"] == pytest.approx(0.4)
    assert m["map@5"] == pytest.approx(32 / 75)
    assert m["mp@5"] == pytest.approx(0.8)
    assert m["recall@1"] == pytest.approx(0.4)
    assert m["recall@2"] == pytest.approx(0.6)
    assert m["recall@3"] == pytest.approx(0.8)
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["recall@10"] == pytest.approx(1.0)


def test_retrieval_integer_labels_equal_string_labels():
    codes = [0, 0, 1, 1, 0, 2, 3]
    a = retrieval_metrics(unit(HAND_ANGLES), HAND_LABELS)
    b = retrieval_metrics(unit(HAND_ANGLES), np.array(codes))
    assert a == b


def test_retrieval_skips_singleton_queries():
    # a0=0°, a1=20°, b=5°, c=50°. Only class "a" has two samples; the singletons "b" and "c"
    # are not queries but still act as distractors:
    #   a0: b 5°, a1* 20°, c 50°   rel=[0,1,0], n_q=1 -> AP@5 = (1/2)/1 = 0.5, mP@5 = 1/1
    #   a1: b 15°, a0* 20°, c 30°  rel=[0,1,0], n_q=1 -> AP@5 = 0.5, mP@5 = 1
    emb = unit([0, 20, 5, 50])
    m = retrieval_metrics(emb, ["a", "a", "b", "c"], ks=(1, 2))
    assert m["num_queries"] == 2
    assert m["p@1"] == 0.0
    assert m["map@5"] == pytest.approx(0.5)
    assert m["mp@5"] == pytest.approx(1.0)
    assert m["recall@1"] == 0.0
    assert m["recall@2"] == 1.0


def test_retrieval_no_evaluable_query_gives_nan():
    m = retrieval_metrics(unit([0, 90, 180]), [1, 2, 3])
    assert m["num_queries"] == 0
    assert math.isnan(m["p@1"]) and math.isnan(m["map@5"]) and math.isnan(m["recall@10"])


def brute_force_retrieval(emb: np.ndarray, labels: np.ndarray, ks):
    sims = emb.astype(np.float64) @ emb.T.astype(np.float64)
    n = len(labels)
    p1, ap, mp, rec = [], [], [], {k: [] for k in ks}
    for q in range(n):
        others = np.array([j for j in range(n) if j != q])
        n_q = int((labels[others] == labels[q]).sum())
        if n_q == 0:
            continue
        order = others[np.argsort(-sims[q, others], kind="stable")]
        rel = (labels[order] == labels[q]).astype(float)
        p1.append(rel[0])
        prec = np.cumsum(rel[:5]) / np.arange(1, 6)
        ap.append((prec * rel[:5]).sum() / min(n_q, 5))
        mp.append(rel[:5].sum() / min(n_q, 5))
        for k in ks:
            rec[k].append(rel[:k].any())
    out = {"p@1": np.mean(p1), "map@5": np.mean(ap), "mp@5": np.mean(mp)}
    out.update({f"recall@{k}": np.mean(v) for k, v in rec.items()})
    out["num_queries"] = len(p1)
    return out


def test_retrieval_matches_brute_force_and_chunking():
    emb, labels = random_embeddings(120, 8, 25, seed=1)
    ks = (1, 3, 10)
    small = retrieval_metrics(emb, labels, ks=ks, chunk_size=2)
    big = retrieval_metrics(emb, labels, ks=ks, chunk_size=100_000)
    odd = retrieval_metrics(emb, labels, ks=ks, chunk_size=7)
    assert small == big == odd
    ref = brute_force_retrieval(emb, labels, ks)
    assert small.keys() == ref.keys()
    for key, value in ref.items():
        assert small[key] == pytest.approx(value, abs=1e-12), key


def test_retrieval_numpy_fallback_matches_torch_topk(monkeypatch):
    from openrecog.eval import metrics

    emb, labels = random_embeddings(150, 8, 30, seed=9)
    with_torch = retrieval_metrics(emb, labels, ks=(1, 2, 5, 10), chunk_size=16)
    monkeypatch.setattr(metrics, "_torch_module", lambda: None)
    numpy_only = retrieval_metrics(emb, labels, ks=(1, 2, 5, 10), chunk_size=16)
    assert with_torch == numpy_only


# --------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------


def test_verification_from_scores_hand_computed():
    impostor = np.arange(100, dtype=np.float64)  # 0, 1, ..., 99
    genuine = np.array([30.0, 98.0, 99.0, 120.0, 150.0])
    m = verification_from_scores(genuine, impostor, fprs=(1e-2, 5e-2, 1e-3))
    # fpr=1e-2: m = floor(0.01*100) = 1 false accept allowed -> t = 2nd largest = 98
    # (only 99 > 98 -> FAR = 1/100); genuine strictly > 98: 99, 120, 150 -> 3/5
    assert m["thr@fpr=1e-02"] == 98.0
    assert m["tpr@fpr=1e-02"] == pytest.approx(0.6)
    # fpr=5e-2: 5 allowed -> t = 6th largest = 94; genuine > 94: 98, 99, 120, 150 -> 4/5
    assert m["thr@fpr=5e-02"] == 94.0
    assert m["tpr@fpr=5e-02"] == pytest.approx(0.8)
    # fpr=1e-3 < 1/100: cannot be measured with 100 impostors
    assert math.isnan(m["tpr@fpr=1e-03"]) and math.isnan(m["thr@fpr=1e-03"])
    # AUROC: 30 beats 0..29 and ties with 30 (30.5), likewise 98 -> 98.5 and 99 -> 99.5;
    # 120 and 150 beat all 100 impostors
    assert m["auroc"] == pytest.approx((30.5 + 98.5 + 99.5 + 100 + 100) / 500)
    assert m["num_genuine"] == 5 and m["num_impostor"] == 100


def test_threshold_with_tied_impostors():
    impostor = np.array([0.0] * 50 + [1.0] * 50)
    # 1 allowed: any t < 1 lets 50 impostors through, t = 1 lets none -> t = 1
    assert calibrate_threshold(impostor, 0.01) == 1.0
    # 50 allowed: t = 0 lets exactly the 50 ones through
    assert calibrate_threshold(impostor, 0.5) == 0.0
    m = verification_from_scores([0.5, 1.0, 2.0], impostor, fprs=(0.01, 0.5))
    assert m["tpr@fpr=1e-02"] == pytest.approx(1 / 3)  # only 2.0 > 1
    assert m["tpr@fpr=5e-01"] == pytest.approx(1.0)  # all > 0


def test_auroc_hand_cases():
    assert auroc_from_scores([2, 3], [0, 1]) == 1.0
    assert auroc_from_scores([0, 1], [2, 3]) == 0.0
    assert auroc_from_scores([1, 1, 1], [1, 1]) == 0.5
    # pairs: 2v2 -> 0.5, 2v1 -> 1, 3v2 -> 1, 3v1 -> 1 => 3.5 / 4
    assert auroc_from_scores([2, 3], [2, 1]) == pytest.approx(0.875)
    assert math.isnan(auroc_from_scores([], [1.0]))


def test_auroc_matches_brute_force_with_ties():
    rng = np.random.default_rng(3)
    gen = np.round(rng.normal(0.5, 1, size=300), 1)
    imp = np.round(rng.normal(0.0, 1, size=400), 1)
    diff = gen[:, None] - imp[None, :]
    expected = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    assert auroc_from_scores(gen, imp) == pytest.approx(expected, abs=1e-12)


def all_pair_scores(emb: np.ndarray, labels: np.ndarray):
    sims = emb @ emb.T
    i, j = np.triu_indices(len(labels), k=1)
    same = labels[i] == labels[j]
    return np.sort(sims[i, j][same]), np.sort(sims[i, j][~same])


def test_verification_metrics_exhaustive_matches_brute_force():
    emb, labels = random_embeddings(150, 6, 10, seed=2)
    m = verification_metrics(emb, labels, fprs=(1e-2, 1e-3))
    gen, imp = all_pair_scores(emb, labels)
    assert m["num_genuine"] == gen.size
    assert m["num_impostor"] == m["num_impostor_total"] == imp.size
    ref = verification_from_scores(gen, imp, fprs=(1e-2, 1e-3))
    for key in ("tpr@fpr=1e-02", "tpr@fpr=1e-03", "thr@fpr=1e-02", "thr@fpr=1e-03", "auroc"):
        assert m[key] == pytest.approx(ref[key], abs=1e-5), key
    # the reported threshold really yields at most the target FAR
    thr = m["thr@fpr=1e-02"]
    assert (imp > thr).mean() <= 1e-2


def test_verification_metrics_nan_when_too_few_impostors():
    emb, labels = random_embeddings(20, 4, 3, seed=0)
    m = verification_metrics(emb, labels)
    assert m["num_impostor"] < 1e4
    assert math.isnan(m["tpr@fpr=1e-04"])


def test_verification_metrics_samples_impostors():
    emb, labels = random_embeddings(200, 6, 20, seed=4)
    full = verification_metrics(emb, labels)
    a = verification_metrics(emb, labels, max_pairs=5000, seed=7)
    b = verification_metrics(emb, labels, max_pairs=5000, seed=7)
    c = verification_metrics(emb, labels, max_pairs=5000, seed=8)
    assert a == b
    assert a != c
    assert a["num_impostor"] == 5000
    assert a["num_impostor_total"] == full["num_impostor"]
    assert a["num_genuine"] == full["num_genuine"]
    # a 5000-pair uniform sample estimates the AUROC well
    assert a["auroc"] == pytest.approx(full["auroc"], abs=0.02)


def test_sampled_impostor_pairs_are_distinct_impostors():
    from openrecog.eval.metrics import _sampled_impostor_scores

    emb, labels = random_embeddings(60, 5, 6, seed=5)
    gen, imp = all_pair_scores(emb, labels)
    sampled = _sampled_impostor_scores(emb, labels, 1000, imp.size, seed=0)
    assert sampled.size == 1000
    # every sampled score is one of the impostor scores (no genuine pairs, no self pairs)
    pos = np.clip(np.searchsorted(imp, sampled), 0, imp.size - 1)
    lower = np.clip(pos - 1, 0, imp.size - 1)
    nearest = np.minimum(np.abs(imp[pos] - sampled), np.abs(imp[lower] - sampled))
    assert nearest.max() < 1e-5


def test_calibrate_threshold_far_on_random_scores():
    scores = np.random.default_rng(0).normal(size=100_000)
    for far in (1e-1, 1e-2, 1e-3, 1e-4):
        t = calibrate_threshold(scores, far)
        # continuous scores, no ties: exactly floor(far * M) impostors are above t
        assert (scores > t).sum() == round(far * scores.size)
        assert (scores >= t).mean() > far  # any smaller threshold would exceed the target


def test_calibrate_threshold_below_resolution_is_max():
    assert calibrate_threshold([0.1, 0.5, 0.3], 0.01) == 0.5


@pytest.mark.parametrize("far", [0.0, 1.0, -0.1, 2.0, float("nan")])
def test_calibrate_threshold_bad_far(far):
    with pytest.raises(ValueError, match="target_far"):
        calibrate_threshold([0.1, 0.2], far)


def test_calibrate_threshold_empty():
    with pytest.raises(ValueError, match="empty"):
        calibrate_threshold([], 0.01)


# --------------------------------------------------------------------------------------------
# open set
# --------------------------------------------------------------------------------------------


def test_open_set_hand_computed():
    gallery = unit([0, 90])
    g_labels = ["a", "b"]
    # threshold 0.9 = cos(25.8°): a match is accepted within ~25.8° of a gallery item
    #   q0 "a" at 10°: nearest a (10°, 0.985)  accepted, right label  -> correct
    #   q1 "b" at 60°: nearest b (30°, 0.866)  rejected               -> wrong (known)
    #   q2 "a" at 80°: nearest b (10°, 0.985)  accepted, wrong label  -> wrong
    #   q3 "c" at 40°: nearest a (40°, 0.766)  rejected               -> correct (unknown)
    #   q4 "d" at 5°:  nearest a (5°, 0.996)   accepted               -> false accept
    queries = unit([10, 60, 80, 40, 5])
    q_labels = ["a", "b", "a", "c", "d"]
    m = open_set_metrics(queries, q_labels, gallery, g_labels, threshold=0.9)
    assert m["accuracy"] == pytest.approx(2 / 5)
    assert m["known_accuracy"] == pytest.approx(1 / 3)
    assert m["known_rank1"] == pytest.approx(2 / 3)  # q0, q1 right; q2 wrong
    assert m["unknown_rejection"] == pytest.approx(1 / 2)
    assert m["false_accept_rate"] == pytest.approx(1 / 2)
    assert (m["num_queries"], m["num_known"], m["num_unknown"], m["num_gallery"]) == (5, 3, 2, 2)


def test_open_set_threshold_is_inclusive():
    m = open_set_metrics(unit([0]), [1], unit([0]), [1], threshold=1.0)
    assert m["known_accuracy"] == 1.0


def test_open_set_all_known_and_all_unknown():
    gallery = unit([0, 90])
    known = open_set_metrics(unit([5, 85]), [0, 1], gallery, [0, 1], threshold=0.5)
    assert known["accuracy"] == 1.0 and known["known_accuracy"] == 1.0
    assert math.isnan(known["unknown_rejection"]) and math.isnan(known["false_accept_rate"])
    unknown = open_set_metrics(unit([5, 45]), [7, 8], gallery, [0, 1], threshold=0.9)
    assert unknown["unknown_rejection"] == 0.5 and unknown["false_accept_rate"] == 0.5
    assert unknown["accuracy"] == 0.5
    assert math.isnan(unknown["known_accuracy"]) and math.isnan(unknown["known_rank1"])


def test_open_set_bad_inputs():
    g = unit([0, 90])
    with pytest.raises(ValueError, match="dimension"):
        open_set_metrics(np.ones((2, 3), np.float32), [0, 1], g, [0, 1], 0.5)
    with pytest.raises(ValueError, match="gallery is empty"):
        open_set_metrics(g, [0, 1], np.zeros((0, 2), np.float32), [], 0.5)
    with pytest.raises(ValueError, match="NaN"):
        open_set_metrics(g, [0, 1], g, [0, 1], float("nan"))
    with pytest.raises(ValueError, match="query_labels"):
        open_set_metrics(g, [0], g, [0, 1], 0.5)


def test_split_gallery_queries():
    labels = np.repeat(np.arange(10), [1, 2, 3, 4, 5, 5, 5, 5, 5, 5])
    gallery, queries = split_gallery_queries(labels, 2, unknown_fraction=0.3, seed=1)
    assert np.intersect1d(gallery, queries).size == 0
    assert np.array_equal(np.sort(np.concatenate([gallery, queries])), np.arange(labels.size))
    g_classes = set(labels[gallery].tolist())
    unknown = set(labels.tolist()) - g_classes
    assert len(unknown) == 3  # round(0.3 * 10)
    for c in g_classes:
        assert (labels[gallery] == c).sum() == min(2, (labels == c).sum())
    for c in unknown:
        assert (labels[queries] == c).sum() == (labels == c).sum()
    again = split_gallery_queries(labels, 2, unknown_fraction=0.3, seed=1)
    assert np.array_equal(again[0], gallery) and np.array_equal(again[1], queries)
    other = split_gallery_queries(labels, 2, unknown_fraction=0.3, seed=2)
    assert not np.array_equal(other[0], gallery)


def test_split_keeps_one_known_class():
    gallery, _ = split_gallery_queries(["x", "x", "y", "y"], 1, unknown_fraction=0.9)
    assert gallery.size == 1


@pytest.mark.parametrize(
    "kwargs", [{"num_gallery_per_class": 0}, {"unknown_fraction": 1.0}, {"unknown_fraction": -1}]
)
def test_split_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        split_gallery_queries([0, 0, 1, 1], **kwargs)


# --------------------------------------------------------------------------------------------
# evaluate_embeddings and validation
# --------------------------------------------------------------------------------------------


def test_evaluate_embeddings_is_flat_and_json_serialisable(tmp_path):
    emb, labels = random_embeddings(300, 16, 30, seed=6, noise=0.5)
    m = evaluate_embeddings(emb, labels, target_far=1e-2)
    for key in (
        "p@1",
        "map@5",
        "mp@5",
        "recall@1",
        "recall@5",
        "recall@10",
        "num_queries",
        "tpr@fpr=1e-02",
        "thr@fpr=1e-03",
        "auroc",
        "num_genuine",
        "num_impostor",
        "threshold",
        "open_set/accuracy",
        "open_set/known_accuracy",
        "open_set/unknown_rejection",
        "open_set/false_accept_rate",
        "open_set/num_unknown",
    ):
        assert key in m, key
    for value in m.values():
        assert type(value) in (int, float)
    json.dumps(m)
    assert m["p@1"] > 0.5 and m["auroc"] > 0.9
    assert m["open_set/num_unknown"] > 0
    # threshold calibrated on the same impostor set used for thr@fpr
    assert m["threshold"] == pytest.approx(m["thr@fpr=1e-02"])
    path = tmp_path / "sub" / "metrics.json"
    metrics_to_json(m, path)
    assert json.loads(path.read_text())["p@1"] == pytest.approx(m["p@1"])


def test_evaluate_embeddings_single_class():
    emb, _ = random_embeddings(10, 4, 1, seed=0)
    m = evaluate_embeddings(emb, np.zeros(10, dtype=int))
    assert m["num_impostor"] == 0
    assert math.isnan(m["threshold"]) and math.isnan(m["auroc"])
    assert math.isnan(m["open_set/accuracy"])


@pytest.mark.parametrize("func", [retrieval_metrics, verification_metrics, evaluate_embeddings])
def test_bad_inputs_raise(func):
    good = unit([0, 10, 20])
    with pytest.raises(ValueError, match="2-D"):
        func(np.zeros(3, np.float32), [0, 0, 1])
    with pytest.raises(ValueError, match="must match"):
        func(good, [0, 0])
    with pytest.raises(ValueError, match="at least 2"):
        func(good[:1], [0])
    with pytest.raises(ValueError, match="1-D"):
        func(good, [[0], [0], [1]])
    with pytest.raises(ValueError, match="NaN"):
        func(np.full((3, 2), np.nan, np.float32), [0, 0, 1])


def test_bad_parameters_raise():
    emb = unit([0, 10, 20])
    with pytest.raises(ValueError, match="ks"):
        retrieval_metrics(emb, [0, 0, 1], ks=(0,))
    with pytest.raises(ValueError, match="chunk_size"):
        retrieval_metrics(emb, [0, 0, 1], chunk_size=0)
    with pytest.raises(ValueError, match="fpr"):
        verification_metrics(emb, [0, 0, 1], fprs=(1.5,))
    with pytest.raises(ValueError, match="max_pairs"):
        verification_metrics(emb, [0, 0, 1], max_pairs=0)


# --------------------------------------------------------------------------------------------
# table / json
# --------------------------------------------------------------------------------------------


def test_format_table():
    rows = [
        {"model": "resnet50", "p@1": 0.91234, "n": 12, "auroc": float("nan")},
        {"model": "a|b", "p@1": np.float32(0.5)},
    ]
    expected = "\n".join(
        [
            "### Results",
            "",
            "| model    |   p@1 |   n | auroc |",
            "| -------- | ----: | --: | ----: |",
            "| resnet50 | 0.912 |  12 |   n/a |",
            "| a\\|b     | 0.500 |     |       |",
        ]
    )
    assert format_table(rows, title="Results") == expected


def test_format_table_columns_and_floatfmt():
    out = format_table([{"x": 0.123456, "y": "s"}], columns=["y", "x"], floatfmt=".2%")
    assert out.splitlines()[0] == "| y   |      x |"
    assert out.splitlines()[2] == "| s   | 12.35% |"
    with pytest.raises(ValueError):
        format_table([])


def test_metrics_to_json_nan_to_null(tmp_path):
    path = tmp_path / "m.json"
    metrics_to_json(
        {"a": float("nan"), "b": np.float32(0.25), "c": np.int64(3), "d": [np.inf, 1.0]}, path
    )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"a": None, "b": 0.25, "c": 3, "d": [None, 1.0]}


def test_equal_error_rate_hand_case() -> None:
    from openrecog.eval.metrics import equal_error_rate

    # Accept at t=0.6: impostors >= 0.6 -> 1 of 4 (FAR .25); genuines < 0.6 -> 1 of 4 (FRR .25).
    eer, thr = equal_error_rate([0.5, 0.6, 0.8, 0.9], [0.1, 0.2, 0.3, 0.7])
    assert thr == 0.6
    assert eer == 0.25
    assert equal_error_rate([0.9, 0.95], [0.1, 0.2])[0] == 0.0
    assert all(np.isnan(equal_error_rate([], [0.1])))
