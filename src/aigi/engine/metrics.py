"""Detection metrics as pure functions. Label 1 = generated (the positive class), scores = P(generated).

A subset with one class has no ROC: AUROC, AP, FPR@95%TPR and EER are ``None`` (empty in CSV), never 0 or 0.5.
Calibration is measured by the expected calibration error (:func:`expected_calibration_error`); with an uncertainty
band, :func:`decided_metrics` gives coverage and accuracy on the images the band leaves decided.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from aigi.errors import DataError

COLUMNS = [
    "n",
    "n_real",
    "n_fake",
    "acc",
    "real_acc",
    "fake_acc",
    "bal_acc",
    "auroc",
    "ap",
    "fpr_at_95tpr",
    "eer",
    "ece",
]
# What a row made with an uncertainty band adds (see decided_metrics); only the first two are table/CSV columns.
BAND_KEYS = ["coverage", "decided_acc", "n_uncertain"]
BAND_COLUMNS = BAND_KEYS[:2]
ECE_BINS = 15
# The names the field prints (MIRROR's CSVs): used as CSV headers.
DISPLAY = {
    "acc": "Acc",
    "real_acc": "Real_Acc",
    "fake_acc": "Fake_Acc",
    "bal_acc": "Bal_Acc",
    "auroc": "AUROC",
    "ap": "AP",
    "fpr_at_95tpr": "FPR@95TPR",
    "eer": "EER",
    "ece": "ECE",
    "coverage": "Coverage",
    "decided_acc": "Decided_Acc",
}


def columns_for(rows: Sequence[dict], optional: Sequence[str] = BAND_COLUMNS) -> list[str]:
    """The columns of a table of ``rows``: :data:`COLUMNS`, then those of ``optional`` that some row carries (band
    columns exist only in rows made with an uncertainty band, so a report without one has no empty columns)."""
    return COLUMNS + [c for c in optional if any(c in r for r in rows)]


class ReliabilityBin(NamedTuple):
    lower: float  # bin edges on P(generated); a bin holds lower <= p < upper, the last one also p == 1
    upper: float
    count: int
    mean_prob: float | None  # mean P(generated) in the bin; None when empty
    frac_generated: float | None  # share of label 1 (generated) in the bin; None when empty


def reliability_bins(labels: Sequence[int], probs: Sequence[float], bins: int = ECE_BINS) -> list[ReliabilityBin]:
    """``bins`` equal-width bins on [0, 1] of P(generated): per bin its edges, count, mean P(generated) and the
    observed fraction generated (label 1). Probabilities outside [0, 1] fall in the end bins."""
    y = np.asarray(labels, dtype=float)
    p = np.asarray(probs, dtype=float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    out = []
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        mean_p, frac = (float(p[inside].mean()), float(y[inside].mean())) if n else (None, None)
        out.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), n, mean_p, frac))
    return out


def expected_calibration_error(labels: Sequence[int], probs: Sequence[float], bins: int = ECE_BINS) -> float | None:
    """Expected calibration error of P(generated), label 1 = generated.

    ECE = sum over equal-width bins b on [0, 1] of (n_b / n) * |mean(y in b) - mean(p in b)|: the gap between the
    observed fraction generated and the mean predicted P(generated), weighted by the bin's share of the images
    (bins as :func:`reliability_bins`). 0 for perfectly calibrated bins; ``None`` when there are no samples.
    """
    n = len(labels)
    if n == 0:
        return None
    gaps = [b.count / n * abs(b.frac_generated - b.mean_prob) for b in reliability_bins(labels, probs, bins) if b.count]
    return float(sum(gaps))


def decided_metrics(
    labels: Sequence[int], probs: Sequence[float], threshold: float, band: tuple[float, float] | None
) -> dict[str, float | int | None]:
    """Coverage and accuracy when an uncertainty band ``(low, high)`` holds back some images.

    An image is undecided ("uncertain") when ``low < p < high`` (the open interval: ``p == low`` and ``p == high``
    are decided); decided images are called generated when ``p >= threshold``, real below it, so the band must hold
    the threshold (``low <= threshold <= high``). Returns ``coverage`` (share decided), ``decided_acc`` (accuracy on
    the decided images; None when none is decided) and ``n_uncertain``. ``band`` None decides every image (coverage
    1, decided_acc = acc). No samples: coverage and decided_acc None.
    """
    y = np.asarray(labels, dtype=int)
    p = np.asarray(probs, dtype=float)
    if band is None:
        uncertain = np.zeros(len(p), dtype=bool)
    else:
        low, high = band
        if not low <= threshold <= high:
            raise ValueError(f"uncertainty band ({low:g}, {high:g}) does not hold the threshold {threshold:g}")
        uncertain = (p > low) & (p < high)
    decided = ~uncertain
    n_decided = int(decided.sum())
    correct = (p[decided] >= threshold).astype(int) == y[decided]
    return {
        "coverage": n_decided / len(p) if len(p) else None,
        "decided_acc": float(correct.mean()) if n_decided else None,
        "n_uncertain": int(uncertain.sum()),
    }


def fpr_at_tpr(y: np.ndarray, p: np.ndarray, tpr_target: float = 0.95) -> float:
    fpr, tpr, _ = roc_curve(y, p)
    return float(fpr[np.searchsorted(tpr, tpr_target, side="left")])


def equal_error_rate(y: np.ndarray, p: np.ndarray) -> float:
    fpr, tpr, _ = roc_curve(y, p)
    fnr = 1 - tpr
    i = int(np.nonzero(fpr >= fnr)[0][0])  # first point where the curves cross
    if i == 0:
        return float(fpr[0])
    # interpolate between i-1 and i where fpr - fnr changes sign
    d0, d1 = fpr[i - 1] - fnr[i - 1], fpr[i] - fnr[i]
    t = d0 / (d0 - d1) if d0 != d1 else 0.0
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def binary_metrics(
    labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5
) -> dict[str, float | int | None]:
    y = np.asarray(labels, dtype=int)
    p = np.asarray(scores, dtype=float)
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} labels but {len(p)} scores")
    pred = (p >= threshold).astype(int)
    real, fake = y == 0, y == 1
    n_real, n_fake = int(real.sum()), int(fake.sum())
    real_acc = float((pred[real] == 0).mean()) if n_real else None
    fake_acc = float((pred[fake] == 1).mean()) if n_fake else None
    both = n_real > 0 and n_fake > 0
    return {
        "n": int(len(y)),
        "n_real": n_real,
        "n_fake": n_fake,
        "acc": float((pred == y).mean()) if len(y) else None,
        "real_acc": real_acc,
        "fake_acc": fake_acc,
        "bal_acc": (real_acc + fake_acc) / 2 if both else None,
        "auroc": float(roc_auc_score(y, p)) if both else None,
        "ap": float(average_precision_score(y, p)) if both else None,
        "fpr_at_95tpr": fpr_at_tpr(y, p) if both else None,
        "eer": equal_error_rate(y, p) if both else None,
        "ece": expected_calibration_error(y, p),
    }


def mean_row(rows: Sequence[dict]) -> dict[str, float | int | None]:
    """Unweighted mean over subsets of every metric (counts are summed); a metric no subset has stays None. Band
    metrics (coverage, decided_acc, n_uncertain) are there only when the rows have them."""
    out: dict[str, float | int | None] = {}
    for c in columns_for(rows, BAND_KEYS):
        vals = [r[c] for r in rows if r.get(c) is not None]
        if c.startswith("n"):
            out[c] = int(sum(vals))
        else:
            out[c] = float(np.mean(vals)) if vals else None
    return out


def threshold_for(
    labels: Sequence[int], scores: Sequence[float], target_real_acc: float | None = None
) -> tuple[float, str]:
    """A decision threshold chosen on labelled (validation) data.

    ``target_real_acc`` given: the lowest threshold at which at least that fraction of real images is called real
    (a fixed false-alarm budget). Otherwise: the threshold that maximises balanced accuracy.
    """
    y = np.asarray(labels, dtype=int)
    p = np.asarray(scores, dtype=float)
    if target_real_acc is not None:
        reals = np.sort(p[y == 0])
        if not len(reals):
            raise DataError("calibration data has no real images")
        k = int(np.ceil(target_real_acc * len(reals)))  # this many reals must fall strictly below the threshold
        if k <= 0:
            return float(reals[0]), f"real accuracy >= {target_real_acc:g} on calibration reals"
        t = float(np.nextafter(reals[k - 1], np.inf)) if k <= len(reals) else float(np.nextafter(reals[-1], np.inf))
        return t, f"real accuracy >= {target_real_acc:g} on calibration reals"
    if not (y == 0).any() or not (y == 1).any():
        raise DataError("calibration data needs both real and generated images")
    cands = np.unique(np.concatenate([p, [0.5]]))
    best_t, best = 0.5, -1.0
    for t in cands:
        pred = p >= t
        bal = 0.5 * ((~pred[y == 0]).mean() + pred[y == 1].mean())
        if bal > best + 1e-12:
            best, best_t = bal, float(t)
    return best_t, "maximum balanced accuracy on calibration data"
