"""Metrics against hand-computed cases (numpy only; no torch, no data set)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from inspector.train import metrics as M


def test_auroc_and_ap_textbook_case():
    # Ranked: 0.8 (D), 0.4 (G), 0.35 (D), 0.1 (G). Pairs (D, G): (0.8>0.4) (0.8>0.1) (0.35<0.4) (0.35>0.1) -> 3/4.
    scores = [0.1, 0.4, 0.35, 0.8]
    labels = [0, 0, 1, 1]
    assert M.auroc(scores, labels) == pytest.approx(0.75)
    # Precision/recall at each cut: 1/1 @ 0.5, 1/2 @ 0.5, 2/3 @ 1.0, 2/4 @ 1.0 -> AP = 0.5 * 1 + 0.5 * 2/3.
    assert M.average_precision(scores, labels) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_ties_count_half_and_order_does_not_matter():
    # One tie across classes: pairs (1 > .5) (1 > 0) (.5 = .5 -> 1/2) (.5 > 0) -> 3.5 / 4.
    scores = np.array([1.0, 0.5, 0.5, 0.0])
    labels = np.array([1, 1, 0, 0])
    assert M.auroc(scores, labels) == pytest.approx(0.875)
    # Tied images form one threshold: cut 1.0 -> P 1, R .5; cut .5 -> P 2/3, R 1 -> AP = .5 + .5 * 2/3.
    assert M.average_precision(scores, labels) == pytest.approx(0.5 + 0.5 * 2 / 3)
    swapped = [2, 1, 0, 3]  # the defect-free 0.5 now comes before the defective one
    assert M.auroc(scores[swapped], labels[swapped]) == pytest.approx(0.875)
    assert M.average_precision(scores[swapped], labels[swapped]) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # All scores equal: chance level, and AP = the defect prevalence.
    assert M.auroc([0.3] * 4, [1, 0, 1, 0]) == pytest.approx(0.5)
    assert M.average_precision([0.3] * 4, [1, 0, 0, 0]) == pytest.approx(0.25)


def test_separation_is_the_logit_gap_between_the_nearest_wrong_pair():
    # Perfect ranking: lowest defective 0.8, highest defect-free 0.2 -> logit(0.8) - logit(0.2) = 2 ln 4.
    assert M.separation([0.9, 0.8, 0.2, 0.05], [1, 1, 0, 0]) == pytest.approx(2 * math.log(4))
    # An overlap gives a negative gap; saturated scores stay finite (clipped), so later epochs can still differ.
    assert M.separation([0.3, 0.6], [1, 0]) == pytest.approx(math.log(0.3 / 0.7) - math.log(0.6 / 0.4))
    assert math.isfinite(M.separation([1.0, 0.0], [1, 0]))
    assert M.separation([1.0, 1e-3], [1, 0]) > M.separation([1.0, 1e-2], [1, 0])
    assert math.isnan(M.separation([0.1, 0.9], [1, 1]))


def test_checkpoint_selection_breaks_saturated_ties_by_the_margin():
    """With few defective validation images AP and AUROC reach 1.0 and stay there; a later epoch that
    separates the two kinds further must still win."""
    pytest.importorskip("torch")
    from inspector.train.recipe import _is_better

    first = {"val_ap": 1.0, "val_auroc": 1.0, "val_margin": 0.5}
    later = {"val_ap": 1.0, "val_auroc": 1.0, "val_margin": 3.0}
    assert _is_better(later, first, "recognizer") and not _is_better(first, later, "recognizer")
    # AP still decides first: a wider margin never buys back a worse ranking.
    assert not _is_better({"val_ap": 0.99, "val_auroc": 1.0, "val_margin": 9.0}, first, "classifier")
    # Segmenters choose on pixel F1 alone.
    assert not _is_better({"val_best_f1": 0.5, "val_margin": 3.0}, {"val_best_f1": 0.5, "val_margin": 0.5}, "segmenter")


def test_one_class_edge_cases_are_nan_not_zero():
    assert math.isnan(M.auroc([0.1, 0.9], [1, 1]))
    assert math.isnan(M.auroc([0.1, 0.9], [0, 0]))
    assert math.isnan(M.average_precision([0.1, 0.9], [0, 0]))
    assert M.average_precision([0.1, 0.9], [1, 1]) == pytest.approx(1.0)
    only_good = M.confusion([0.2, 0.7], [0, 0], 0.5)
    assert math.isnan(only_good.tpr) and only_good.tnr == pytest.approx(0.5)
    assert math.isnan(only_good.acc), "ACC of a one-sided set is undefined, not the defined half"
    m = M.image_metrics([0.9], [1], 0.5)
    assert m["tpr"] == 1.0 and math.isnan(m["tnr"]) and math.isnan(m["acc"]) and math.isnan(m["auroc"])


def test_confusion_uses_at_or_above_and_paper_acc():
    scores = [0.5, 0.49, 0.9, 0.1, 0.5]
    labels = [1, 1, 1, 0, 0]
    c = M.confusion(scores, labels, 0.5)  # 0.5 counts as defective, like DecisionConfig's ">="
    assert (c.tp, c.fn, c.tn, c.fp) == (2, 1, 1, 1)
    assert c.acc == pytest.approx((2 / 3 + 1 / 2) / 2)  # balanced, not (2 + 1) / 5


def test_best_threshold_separable_midpoint_and_ties_prefer_sensitivity():
    # Defective 0.9, 0.7; good 0.6, 0.2: the cut at 0.7 is perfect; threshold midway into the gap below it.
    assert M.best_threshold([0.9, 0.7, 0.6, 0.2], [1, 1, 0, 0]) == pytest.approx(0.65)
    # Overlap: defective 0.8, 0.3; good 0.5, 0.1. Cut 0.8 -> (.5 + 1)/2 = .75; cut 0.3 -> (1 + .5)/2 = .75:
    # equal, so the lower (more sensitive) cut wins, placed between 0.3 and 0.1.
    t = M.best_threshold([0.8, 0.3, 0.5, 0.1], [1, 1, 0, 0])
    assert t == pytest.approx(0.2)
    c = M.confusion([0.8, 0.3, 0.5, 0.1], [1, 1, 0, 0], t)
    assert c.tpr == 1.0 and c.tnr == 0.5
    # Anti-correlated scores: no cut beats ACC 0.5; of the equally bad choices the sensitive one (all defective).
    t = M.best_threshold([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0])
    assert t <= 0.1
    with pytest.raises(ValueError, match="defective and defect-free"):
        M.best_threshold([0.1, 0.2], [1, 1])


def test_best_threshold_integer_areas():
    # Blob areas as scores: defective 12, 40; good 0, 3 -> the gap (3, 12) -> 7.5, i.e. min_area_px 8.
    assert math.ceil(M.best_threshold([12, 40, 0, 3], [1, 1, 0, 0])) == 8


def test_pixel_accumulator_matches_direct_counts_and_streams():
    rng = np.random.default_rng(0)
    probs = [rng.random((13, 17)).astype(np.float32) for _ in range(3)]
    truths = [rng.random((13, 17)) < 0.2 for _ in range(3)]
    acc = M.PixelAccumulator()
    for p, t in zip(probs, truths, strict=True):
        acc.update(p, t)
    allp, allt = np.concatenate([p.ravel() for p in probs]), np.concatenate([t.ravel() for t in truths])
    for threshold in (0.0, 0.25, 0.5, 0.731, 1.0):
        pred = allp >= threshold
        c = acc.confusion(threshold)
        assert (c.tp, c.fp, c.fn, c.tn) == (
            int((pred & allt).sum()),
            int((pred & ~allt).sum()),
            int((~pred & allt).sum()),
            int((~pred & ~allt).sum()),
        )
    # Two accumulators merged == one fed everything.
    a, b = M.PixelAccumulator(), M.PixelAccumulator()
    a.update(probs[0], truths[0])
    b.update(probs[1], truths[1])
    b.update(probs[2], truths[2])
    a.merge(b)
    assert np.array_equal(a.positive, acc.positive) and np.array_equal(a.negative, acc.negative) and a.images == 3


def test_pixel_metrics_hand_computed():
    prob = np.array([[0.9, 0.8, 0.2], [0.6, 0.1, 0.4]], np.float32)
    truth = np.array([[1, 1, 1], [0, 0, 0]], bool)
    acc = M.PixelAccumulator()
    acc.update(prob, truth)
    m = acc.metrics(0.5)  # predicted: 0.9, 0.8, 0.6 -> TP 2, FP 1, FN 1
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["iou"] == pytest.approx(2 / 4)
    # Threshold 0.15: TP 3, FP 2 (0.6, 0.4) -> F1 = 6/8; 0.7: TP 2, FP 0, FN 1 -> F1 = 4/5: the best on [.05, .95].
    assert acc.metrics(0.15)["f1"] == pytest.approx(0.75)
    best = acc.best_threshold()
    assert acc.metrics(best)["f1"] == pytest.approx(0.8)
    assert 0.6 < best <= 0.8
    # Nothing predicted while defects exist: F1 0 (recall 0), precision undefined.
    none = acc.metrics(0.95)
    assert none["f1"] == 0.0 and math.isnan(none["precision"]) and none["recall"] == 0.0
    # No defect pixels at all: recall/F1 undefined, IoU undefined when nothing is predicted either.
    clean = M.PixelAccumulator()
    clean.update(np.zeros((4, 4), np.float32), np.zeros((4, 4), bool))
    m = clean.metrics(0.5)
    assert math.isnan(m["recall"]) and math.isnan(m["f1"]) and math.isnan(m["iou"])
    with pytest.raises(ValueError, match="no defect pixels"):
        clean.best_threshold()


def test_summarize_mean_std_ignores_undefined_groups():
    s = M.summarize([0.9, 0.8, float("nan"), 1.0])
    assert s["mean"] == pytest.approx(0.9) and s["std"] == pytest.approx(0.1) and s["defined"] == 3 and s["n"] == 4
    assert math.isnan(M.summarize([float("nan")])["mean"])
