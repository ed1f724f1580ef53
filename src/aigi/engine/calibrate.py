"""Choose a model's decision threshold on labelled validation data and record how it was chosen."""

from __future__ import annotations

import os
from pathlib import Path

from aigi.checkpoints import Model
from aigi.data.folders import discover
from aigi.engine.inference import score_paths
from aigi.engine.metrics import binary_metrics, threshold_for


def calibrate(
    model: Model, data: str | os.PathLike, target_real_acc: float | None = None, progress: bool = True
) -> dict:
    """Score ``data`` (any labelled layout), pick the threshold, store it in ``model.config``; return the record."""
    image_set = discover(data)
    scores = score_paths(model, [s.path for s in image_set.samples], progress=progress)
    ok = [i for i in range(len(image_set.samples)) if i not in scores.errors]
    y = [image_set.samples[i].label for i in ok]
    p = scores.prob[ok]
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
