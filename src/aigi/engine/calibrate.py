"""Calibrate a model on labelled validation data: its probability (Platt scaling), its decision threshold, and the
uncertainty band inside which it says "uncertain"; record how each was chosen.

- Probability: ``P = sigmoid(a * logit(p) + b)`` of the detector's own ``p``, fitted by logistic regression on the
  calibration images (Platt scaling; ``a`` is kept >= 0, so the map never reverses the detector's order). Reported
  and thresholded probabilities are then calibrated ones.
- Threshold: on the calibrated probability, maximising balanced accuracy, or the lowest one keeping a target
  real-photo accuracy (:func:`aigi.engine.metrics.threshold_for`).
- Band ``(low, high)`` around the threshold: images with ``low < P < high`` are "uncertain". Chosen as the widest
  coverage (share of images decided) at which the decided calibration images reach ``band_accuracy`` (default 0.95).
  When no band reaches it, the model gets none, and the record says so.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from aigi.checkpoints import Model
from aigi.engine.inference import labelled_scores
from aigi.engine.metrics import binary_metrics, threshold_for

BAND_CANDIDATES = 200  # cut points tried on each side of the threshold (quantiles of the calibration scores)


def fit_platt(labels, probs) -> tuple[float, float]:
    """(a, b) of Platt scaling fitted on ``probs`` (the detector's own P(generated)) against ``labels``."""
    from sklearn.linear_model import LogisticRegression

    p = np.clip(np.asarray(probs, dtype=float), 1e-7, 1 - 1e-7)
    fit = LogisticRegression(C=1e6, max_iter=1000).fit(np.log(p / (1 - p))[:, None], np.asarray(labels, dtype=int))
    return max(float(fit.coef_[0, 0]), 0.0), float(fit.intercept_[0])


def choose_band(labels, probs, threshold: float, accuracy: float) -> tuple[float, float] | None:
    """The band ``(low, high)`` holding ``threshold`` that decides the most images (``p <= low`` real, ``p >= high``
    generated) while the decided ones reach ``accuracy``; None when no band does."""
    y, p = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    lows = _cuts(p[p < threshold], threshold)
    highs = _cuts(p[p >= threshold], threshold)
    real_ok = (p[None, :] <= lows[:, None]) & (y == 0)  # [len(lows), n]: decided real, rightly
    real_n = (p[None, :] <= lows[:, None]).sum(1)
    gen_ok = ((p[None, :] >= highs[:, None]) & (y == 1)).sum(1)
    gen_n = (p[None, :] >= highs[:, None]).sum(1)
    decided = real_n[:, None] + gen_n[None, :]
    right = real_ok.sum(1)[:, None] + gen_ok[None, :]
    acc = np.where(decided > 0, right / np.maximum(decided, 1), 0.0)
    ok = acc >= accuracy
    if not ok.any():
        return None
    best = np.argmax(np.where(ok, decided + acc / 2, -1))  # most decided; then the more accurate
    i, j = np.unravel_index(best, ok.shape)
    return float(lows[i]), float(highs[j])


def _cuts(side: np.ndarray, threshold: float) -> np.ndarray:
    """Candidate band edges on one side of the threshold: the threshold itself and quantiles of the scores there."""
    if not len(side):
        return np.array([threshold])
    q = np.quantile(side, np.linspace(0, 1, min(BAND_CANDIDATES, len(side))))
    return np.unique(np.concatenate([q, [threshold]]))


def calibrate(
    model: Model,
    data: str | os.PathLike,
    target_real_acc: float | None = None,
    progress: bool = True,
    probability: str = "platt",
    band_accuracy: float | None = 0.95,
) -> dict:
    """Score ``data`` (any labelled layout); fit the probability (``probability``: "platt" or "none"), choose the
    threshold and the band (``band_accuracy`` None: no band); store them in ``model.config``; return the record."""
    y, raw = labelled_scores(model, data, progress, calibrated=False)
    both = len(set(y)) == 2  # Platt scaling needs both classes; a real-only set can still fix the threshold
    model.config.platt = fit_platt(y, raw) if probability == "platt" and both else None
    p = model.calibrated(raw)
    t, rule = threshold_for(y, p, target_real_acc)
    band = None if band_accuracy is None else choose_band(y, p, t, band_accuracy)
    at = binary_metrics(y, p, t)
    record = {
        "data": str(Path(data)),
        "rule": rule,
        "target_real_acc": target_real_acc,
        "threshold": t,
        "probability": _probability_note(probability, model.config.platt is not None),
        "band_accuracy": band_accuracy,
        "band": None if band is None else list(band),
        **{k: at[k] for k in ("n_real", "n_fake", "real_acc", "fake_acc", "bal_acc", "auroc")},
    }
    if band_accuracy is not None and band is None:
        record["band_note"] = f"no band reaches accuracy {band_accuracy:g} on the decided calibration images"
    model.config.threshold, model.config.band, model.config.calibration = t, band, record
    return record


def _probability_note(asked: str, fitted: bool) -> str:
    if fitted:
        return "Platt scaling on the calibration data"
    if asked == "platt":
        return "the detector's own (Platt scaling needs real and generated calibration images)"
    return "the detector's own"
