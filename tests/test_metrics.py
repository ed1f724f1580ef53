"""aigi.engine.metrics: hand-checked values for every metric, one-class subsets, means and thresholds."""

from __future__ import annotations

import numpy as np
import pytest

from aigi.engine.metrics import (
    COLUMNS,
    binary_metrics,
    equal_error_rate,
    fpr_at_tpr,
    mean_row,
    threshold_for,
)

approx = pytest.approx


def test_perfect_separation():
    m = binary_metrics([0, 0, 0, 1, 1], [0.1, 0.2, 0.3, 0.8, 0.9])
    assert m["auroc"] == 1.0 and m["ap"] == 1.0
    assert m["fpr_at_95tpr"] == 0.0 and m["eer"] == 0.0
    assert m["acc"] == m["real_acc"] == m["fake_acc"] == m["bal_acc"] == 1.0
    assert (m["n"], m["n_real"], m["n_fake"]) == (5, 3, 2)
    assert set(m) == set(COLUMNS)


def test_inverted_scores():
    m = binary_metrics([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1])
    assert m["auroc"] == 0.0
    assert m["acc"] == m["real_acc"] == m["fake_acc"] == m["bal_acc"] == 0.0
    assert m["fpr_at_95tpr"] == 1.0
    assert m["eer"] == 1.0


def test_small_example_by_hand():
    y = [0, 0, 0, 0, 1, 1, 1]
    p = [0.1, 0.6, 0.3, 0.5, 0.9, 0.4, 0.7]
    m = binary_metrics(y, p, threshold=0.5)
    # predictions (p >= 0.5): reals 0,1,0,1 -> 2/4 right; fakes 1,0,1 -> 2/3 right
    assert m["real_acc"] == approx(2 / 4)
    assert m["fake_acc"] == approx(2 / 3)
    assert m["acc"] == approx(4 / 7)
    assert m["bal_acc"] == approx((1 / 2 + 2 / 3) / 2)
    # fake-above-real pairs: 0.9 > 4 reals, 0.4 > 2, 0.7 > 4 -> 10 of 12
    assert m["auroc"] == approx(10 / 12)
    # ranked: F F R R F R R -> precision at each fake 1, 1, 3/5
    assert m["ap"] == approx((1 + 1 + 3 / 5) / 3)
    # all fakes caught only at threshold 0.4, where reals 0.6 and 0.5 are false alarms
    assert m["fpr_at_95tpr"] == approx(2 / 4)
    # FNR is 1/3 from FPR 0 to FPR 1/2: the curves cross at 1/3
    assert m["eer"] == approx(1 / 3)


def test_threshold_is_inclusive_and_movable():
    m = binary_metrics([0, 1], [0.5, 0.5])
    assert m["real_acc"] == 0.0 and m["fake_acc"] == 1.0  # p >= threshold is "generated"
    m = binary_metrics([0, 0, 1, 1], [0.2, 0.6, 0.7, 0.9], threshold=0.65)
    assert m["acc"] == 1.0
    assert binary_metrics([0, 0, 1, 1], [0.2, 0.6, 0.7, 0.9], threshold=0.5)["real_acc"] == 0.5


def test_one_class_subset():
    m = binary_metrics([1, 1, 1], [0.9, 0.2, 0.7])
    assert m["fake_acc"] == approx(2 / 3) and m["acc"] == approx(2 / 3)
    assert m["real_acc"] is None
    for c in ("bal_acc", "auroc", "ap", "fpr_at_95tpr", "eer"):
        assert m[c] is None, c
    m = binary_metrics([0, 0], [0.1, 0.7])
    assert m["real_acc"] == 0.5 and m["fake_acc"] is None and m["auroc"] is None and m["bal_acc"] is None


def test_empty_and_mismatched():
    m = binary_metrics([], [])
    assert m["n"] == 0 and m["acc"] is None and m["auroc"] is None
    with pytest.raises(ValueError):
        binary_metrics([0, 1, 1], [0.2, 0.3])


def test_fpr_at_95_tpr_hand_made():
    # 20 fakes: 19 at 0.9 -> TPR exactly 0.95 at threshold 0.9, where 3 of 10 reals (0.95) are above
    y = np.array([1] * 20 + [0] * 10)
    p = np.array([0.9] * 19 + [0.2] + [0.1] * 5 + [0.5] * 2 + [0.95] * 3)
    assert fpr_at_tpr(y, p) == approx(0.3)
    assert binary_metrics(y, p)["fpr_at_95tpr"] == approx(0.3)
    # with only 18 of 20 at 0.9 (TPR 0.9) the threshold must drop to 0.2: the 0.5 reals become false alarms too
    p2 = p.copy()
    p2[18] = 0.2
    assert fpr_at_tpr(y, p2) == approx(0.5)
    assert fpr_at_tpr(y, p2, tpr_target=0.9) == approx(0.3)


def test_eer_symmetric_example():
    # one real above one fake out of 4 each: FPR = FNR = 1/4 at the crossing
    y = [0, 0, 0, 0, 1, 1, 1, 1]
    p = [0.1, 0.2, 0.3, 0.65, 0.6, 0.7, 0.8, 0.9]
    assert equal_error_rate(np.array(y), np.array(p)) == approx(0.25)


def test_mean_row_ignores_none_and_sums_counts():
    rows = [
        binary_metrics([0, 0, 1, 1], [0.1, 0.6, 0.7, 0.9]),  # real_acc .5, fake_acc 1
        binary_metrics([1, 1], [0.9, 0.2]),  # one class: fake_acc .5, no real_acc / AUROC
        binary_metrics([0, 1, 1], [0.4, 0.3, 0.8]),  # real_acc 1, fake_acc .5
    ]
    m = mean_row(rows)
    assert (m["n"], m["n_real"], m["n_fake"]) == (9, 3, 6)
    assert isinstance(m["n"], int)
    assert m["real_acc"] == approx((0.5 + 1.0) / 2)
    assert m["fake_acc"] == approx((1.0 + 0.5 + 0.5) / 3)
    assert m["acc"] == approx((0.75 + 0.5 + 2 / 3) / 3)
    assert m["auroc"] == approx((rows[0]["auroc"] + rows[2]["auroc"]) / 2)
    assert m["bal_acc"] == approx((rows[0]["bal_acc"] + rows[2]["bal_acc"]) / 2)
    only_one_class = mean_row([rows[1], binary_metrics([1], [0.7])])
    assert only_one_class["auroc"] is None and only_one_class["real_acc"] is None
    assert only_one_class["n"] == 3


def _real_acc(y, p, t):
    return float((p[y == 0] < t).mean())


def _bal_acc(y, p, t):
    return 0.5 * ((p[y == 0] < t).mean() + (p[y == 1] >= t).mean())


@pytest.mark.parametrize("target", [0.5, 0.8, 0.9, 0.95, 0.99, 1.0])
def test_threshold_for_target_real_acc(target):
    rng = np.random.default_rng(3)
    p = np.concatenate([rng.beta(2, 5, 137), rng.beta(5, 2, 90)])
    y = np.array([0] * 137 + [1] * 90)
    t, why = threshold_for(y, p, target_real_acc=target)
    assert "real accuracy" in why
    assert _real_acc(y, p, t) >= target
    # the lowest such threshold: just below it (at the next lower real score) the target is missed
    lower = p[(y == 0) & (p < t)]
    if len(lower):
        assert _real_acc(y, p, lower.max()) < target


def test_threshold_for_target_handles_ties():
    y = np.array([0] * 10 + [1] * 2)
    p = np.array([0.3] * 10 + [0.9, 0.2])
    t, _ = threshold_for(y, p, target_real_acc=0.95)
    assert _real_acc(y, p, t) == 1.0
    assert t == approx(0.3)


def test_threshold_for_needs_the_right_classes():
    with pytest.raises(ValueError):
        threshold_for([1, 1], [0.2, 0.8], target_real_acc=0.9)
    with pytest.raises(ValueError):
        threshold_for([0, 0], [0.2, 0.8])


def test_threshold_for_max_balanced_accuracy_on_shifted_scores():
    # every score is shifted up: reals in [0.55, 0.65], fakes in [0.70, 0.95]
    rng = np.random.default_rng(0)
    reals = rng.uniform(0.55, 0.65, 50)
    fakes = rng.uniform(0.70, 0.95, 40)
    y = np.array([0] * 50 + [1] * 40)
    p = np.concatenate([reals, fakes])
    t, why = threshold_for(y, p)
    assert "balanced accuracy" in why
    assert _bal_acc(y, p, 0.5) == approx(0.5)
    assert _bal_acc(y, p, t) == approx(1.0)
    assert reals.max() < t <= fakes.min()
    assert binary_metrics(y, p, t)["bal_acc"] > binary_metrics(y, p, 0.5)["bal_acc"]


def test_threshold_for_separable_scores():
    t, _ = threshold_for([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert _bal_acc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]), t) == 1.0
