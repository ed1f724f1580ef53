"""Choose a model's decision threshold on labelled validation data and record how it was chosen."""

from __future__ import annotations

import os
from pathlib import Path

from aigi.checkpoints import Model
from aigi.engine.inference import labelled_scores
from aigi.engine.metrics import binary_metrics, threshold_for


def calibrate(
    model: Model, data: str | os.PathLike, target_real_acc: float | None = None, progress: bool = True
) -> dict:
    """Score ``data`` (any labelled layout), pick the threshold, store it in ``model.config``; return the record."""
    y, p = labelled_scores(model, data, progress)
    t, rule = threshold_for(y, p, target_real_acc)
    at = binary_metrics(y, p, t)
    record = {
        "data": str(Path(data)),
        "rule": rule,
        "target_real_acc": target_real_acc,
        "threshold": t,
        "n_real": at["n_real"],
        "n_fake": at["n_fake"],
        "real_acc": at["real_acc"],
        "fake_acc": at["fake_acc"],
        "bal_acc": at["bal_acc"],
        "auroc": at["auroc"],
    }
    model.config.threshold = t
    model.config.calibration = record
    return record
