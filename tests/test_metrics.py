"""aigi.engine.metrics: hand-checked values for every metric, one-class subsets, means, thresholds, calibration
error and the coverage of an uncertainty band."""

from __future__ import annotations

import numpy as np
import pytest

from aigi.engine.metrics import (
    COLUMNS,
    binary_metrics,
    columns_for,
    decided_metrics,
    equal_error_rate,
    expected_calibration_error,
    fpr_at_tpr,
    mean_row,
    reliability_bins,
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


def test_ece_zero_when_every_bin_is_calibrated():
    # bin [0.2, 0.3): p 0.25, one in four generated; bin [0.7, 0.8): p 0.75, three in four generated
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    p = [0.25] * 4 + [0.75] * 4
    assert expected_calibration_error(y, p, bins=10) == approx(0.0, abs=1e-12)


def test_ece_known_miscalibration():
    # bin [0.9, 1.0]: p 0.9 but half generated -> |0.5 - 0.9| * 4/8; bin [0.1, 0.2): p 0.1, none -> |0 - 0.1| * 4/8
    y = [1, 1, 0, 0, 0, 0, 0, 0]
    p = [0.9] * 4 + [0.1] * 4
    assert expected_calibration_error(y, p, bins=10) == approx(0.4 / 2 + 0.1 / 2)
    # one bin [0, 0.5) with mean p 0.25 and half generated: 0.25
    assert expected_calibration_error([1, 0], [0.2, 0.3], bins=2) == approx(0.25)
    assert expected_calibration_error([], []) is None
    assert binary_metrics(y, p)["ece"] == approx(expected_calibration_error(y, p, bins=15))


def test_reliability_bins_edges_counts_and_empty_bins():
    bins = reliability_bins([0, 1, 1, 0, 1], [0.0, 0.5, 1.0, 0.2, 0.7], bins=2)
    assert [(b.lower, b.upper, b.count) for b in bins] == [(0.0, 0.5, 2), (0.5, 1.0, 3)]  # 0.5 opens the upper bin
    assert bins[0].mean_prob == approx(0.1) and bins[0].frac_generated == 0.0
    assert bins[1].mean_prob == approx(2.2 / 3) and bins[1].frac_generated == 1.0  # p == 1 is in the last bin
    empty = reliability_bins([1], [0.95], bins=4)[0]
    assert empty.count == 0 and empty.mean_prob is None and empty.frac_generated is None
    assert len(reliability_bins([], [])) == 15


def test_decided_metrics_band_edges_are_decided():
    # band (0.3, 0.7), threshold 0.5: 0.3 decided real (right), 0.7 decided generated (right), 0.5 and 0.4 uncertain,
    # 0.1 decided real (wrong: generated), 0.9 decided generated (right)
    y = [0, 1, 1, 0, 1, 1]
    p = [0.3, 0.7, 0.5, 0.4, 0.1, 0.9]
    m = decided_metrics(y, p, 0.5, (0.3, 0.7))
    assert m == {"coverage": approx(4 / 6), "decided_acc": approx(3 / 4), "n_uncertain": 2}
    assert decided_metrics([0, 1], [0.3, 0.7], 0.5, (0.3, 0.7))["coverage"] == 1.0
    assert decided_metrics([0, 1], [0.31, 0.69], 0.5, (0.3, 0.7)) == {
        "coverage": 0.0,
        "decided_acc": None,
        "n_uncertain": 2,
    }


def test_decided_metrics_without_band_and_bad_band():
    y, p = [0, 0, 1, 1], [0.2, 0.6, 0.7, 0.4]
    assert decided_metrics(y, p, 0.5, None) == {
        "coverage": 1.0,
        "decided_acc": binary_metrics(y, p)["acc"],
        "n_uncertain": 0,
    }
    assert decided_metrics([], [], 0.5, (0.4, 0.6)) == {"coverage": None, "decided_acc": None, "n_uncertain": 0}
    with pytest.raises(ValueError, match="does not hold the threshold"):
        decided_metrics(y, p, 0.5, (0.6, 0.8))


def test_band_columns_only_when_rows_have_them():
    band = (0.3, 0.7)
    plain = [binary_metrics([0, 1], [0.2, 0.8]), binary_metrics([0, 1, 1], [0.5, 0.9, 0.1])]
    assert columns_for(plain) == COLUMNS and COLUMNS[-1] == "ece"
    assert not {"coverage", "decided_acc", "n_uncertain"} & set(mean_row(plain))
    banded = [
        {**r, **decided_metrics(y, p, 0.5, band)}
        for r, (y, p) in zip(plain, [([0, 1], [0.2, 0.8]), ([0, 1, 1], [0.5, 0.9, 0.1])])
    ]
    assert columns_for(banded) == COLUMNS + ["coverage", "decided_acc"]
    m = mean_row(banded)
    assert m["coverage"] == approx((1.0 + 2 / 3) / 2) and m["decided_acc"] == approx((1.0 + 0.5) / 2)
    assert m["n_uncertain"] == 1 and m["ece"] == approx((plain[0]["ece"] + plain[1]["ece"]) / 2)
