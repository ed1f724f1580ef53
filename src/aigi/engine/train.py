"""Training recipes. A recipe turns labelled folders into a saved model folder.

``train_univfd``: extract (cached) backbone global features for the training (and validation) images, fit the
linear probe, optionally calibrate the threshold, and save the model folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from aigi.errors import DataError
from aigi.backbones import BackboneSpec
from aigi.checkpoints import Model, ModelConfig, build_model, save_model
from aigi.data.folders import discover
from aigi.data.transforms import EvalProtocol
from aigi.engine.calibrate import calibrate
from aigi.engine.inference import extract_features


def _features(model: Model, data: str | os.PathLike, what: str, progress: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    image_set = discover(data)
    ext = extract_features(model, [s.path for s in image_set.samples], progress=progress, description=f"features: {what}")
    ok = ext.ok
    if not ok:
        raise DataError(f"{data}: none of the {len(image_set.samples)} images could be read")
    bad = [f"{image_set.samples[i].path}: {r}" for i, r in sorted(ext.errors.items())]
    y = np.array([image_set.samples[i].label for i in ok])
    return ext.stacked(ok), y, bad


def train_univfd(
    data: str | os.PathLike,
    out: str | os.PathLike,
    backbone: BackboneSpec | None = None,
    protocol: EvalProtocol | None = None,
    params: dict | None = None,
    val: str | os.PathLike | None = None,
    calibrate_on: str | os.PathLike | None = None,
    target_real_acc: float | None = None,
    progress: bool = True,
) -> tuple[Model, dict]:
    config = ModelConfig(detector="univfd", params=params or {}, backbone=backbone or BackboneSpec(), protocol=protocol or EvalProtocol())
    model = build_model(config)
    x, y, bad = _features(model, data, "train", progress)
    if len(set(y.tolist())) < 2:
        raise DataError(f"{data}: training needs both real and generated images (found labels {sorted(set(y.tolist()))})")
    xv = yv = None
    if val is not None:
        xv, yv, bad_val = _features(model, val, "val", progress)
        bad += bad_val
    info = model.detector.fit(x, y, xv, yv)
    model.config.training = {"data": str(Path(data)), "val": str(val) if val else None, "skipped_files": bad, **info}
    if calibrate_on is not None:
        calibrate(model, calibrate_on, target_real_acc, progress=progress)
    save_model(model, out)
    return model, info
