"""Score images with a model: the path shared by ``detect``, ``eval`` and calibration."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from aigi.checkpoints import Model
from aigi.engine.features import Extracted, FeatureCache, extract


@dataclass
class Scores:
    prob: np.ndarray  # [n] P(generated); NaN where the image could not be used
    errors: dict[int, str]
    cache_hits: int = 0

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.prob)


def feature_cache_for(model: Model, cache_dir: str | os.PathLike | None = None) -> FeatureCache:
    det = model.detector
    return FeatureCache(
        cache_dir,
        {
            "backbone": model.config.backbone.model_dump(mode="json"),
            "preprocess": det.backbone.preprocess.model_dump(mode="json"),
            "protocol": model.config.protocol.model_dump(mode="json"),
            "kind": det.feature_kind,
        },
    )


def extract_features(
    model: Model,
    paths: Sequence[str | os.PathLike],
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 8,
    progress: bool = True,
    description: str = "extracting features",
) -> Extracted:
    det = model.detector
    cache = feature_cache_for(model, cache_dir) if (use_cache and det.cacheable) else None
    return extract(paths, det.features, det.backbone.preprocess, model.config.protocol, cache=cache,
                   batch_size=batch_size, description=description, progress=progress)


def score_paths(model: Model, paths: Sequence[str | os.PathLike], use_cache: bool = True,
                cache_dir: str | os.PathLike | None = None, batch_size: int = 8, progress: bool = True) -> Scores:
    ext = extract_features(model, paths, use_cache, cache_dir, batch_size, progress, description="scoring images")
    return scores_from_features(model, ext)


def scores_from_features(model: Model, ext: Extracted) -> Scores:
    prob = np.full(len(ext.features), np.nan)
    ok = ext.ok
    if ok:
        with torch.inference_mode():
            feats = torch.from_numpy(ext.stacked(ok))
            prob[ok] = model.detector.score(feats).prob.double().numpy()
    return Scores(prob=prob, errors=dict(ext.errors), cache_hits=ext.cache_hits)
