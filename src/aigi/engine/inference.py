"""Score images with a model: the path shared by ``detect``, ``eval`` and calibration."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aigi.checkpoints import STACK, Model
from aigi.data.decode import ImageInput, InMemoryImage, as_input
from aigi.data.perturb import Perturbation, Perturbed
from aigi.data.transforms import SCORING_ONLY, EvalProtocol
from aigi.engine.features import Extracted, FeatureCache, extract, gather


@dataclass
class Scores:
    prob: np.ndarray  # [n] P(generated); NaN where the image could not be used
    errors: dict[int, str]
    cache_hits: int = 0

    @property
    def ok(self) -> np.ndarray:
        return ~np.isnan(self.prob)


# Bump when decoding, the protocol's implementation or feature extraction changes what a cached entry holds.
FEATURE_PIPELINE_VERSION = 1


def weights_fingerprint(source: str | None) -> list:
    """Names, sizes and modification times of a local backbone folder's files: a changed folder is a new key."""
    if not source or not Path(source).is_dir():
        return []
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in Path(source).iterdir() if p.is_file())


def cache_for(spec, preprocess, protocol, kind: str, cache_dir: str | os.PathLike | None = None) -> FeatureCache:
    """The cache namespace of one backbone + preprocessing + protocol (or augmented view) + feature kind. How views'
    logits are combined is left out: an entry holds every view's features, which any combination reads."""
    source = str(Path(spec.source).resolve()) if spec.source and Path(spec.source).is_dir() else spec.source
    return FeatureCache(
        cache_dir,
        {
            "pipeline": FEATURE_PIPELINE_VERSION,
            "backbone": {**spec.model_dump(mode="json"), "source": source},
            "weights": weights_fingerprint(source),
            "preprocess": preprocess.model_dump(mode="json"),
            "protocol": protocol.model_dump(mode="json", exclude=set(SCORING_ONLY)),
            "kind": kind,
        },
    )


def feature_cache_for(
    model: Model, cache_dir: str | os.PathLike | None = None, protocol: EvalProtocol | None = None
) -> FeatureCache:
    """The cache namespace of the model's features through ``protocol`` (default: the model's)."""
    det, protocol = model.detector, protocol or model.config.protocol
    return cache_for(model.config.backbone, det.backbone.preprocess, protocol, det.feature_kind, cache_dir)


def extract_features(
    model: Model,
    paths: Sequence[str | os.PathLike],
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 8,
    progress: bool = True,
    description: str = "extracting features",
    protocol: EvalProtocol | None = None,
) -> Extracted:
    """The detector's features of each image through ``protocol`` (default: the model's; training passes its single
    centre view, so that each image is one row)."""
    det, device, protocol = model.detector, model.device, protocol or model.config.protocol
    uploads = any(isinstance(p, InMemoryImage) for p in paths)  # nothing about an upload is kept
    cache = feature_cache_for(model, cache_dir, protocol) if (use_cache and det.cacheable and not uploads) else None
    return extract(
        paths,
        lambda px: det.features(px.to(device)),
        det.backbone.preprocess,
        protocol,
        cache=cache,
        batch_size=batch_size,
        description=description,
        progress=progress,
    )


def score_paths(
    model: Model,
    paths: Sequence[ImageInput],
    use_cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 8,
    progress: bool = True,
    perturbation: Perturbation | None = None,
    calibrated: bool = True,
) -> Scores:
    """P(generated) per file (or in-memory image), through the model's probability calibration (``platt``) unless
    ``calibrated`` is False (the detector's own). ``perturbation`` (e.g. JPEG at quality 75) is applied to each decoded
    image before the model's protocol; perturbed features, and features of in-memory images, are never cached."""
    if model.config.detector == STACK:  # scored by its members, each through this function (aigi.detectors.stack)
        from aigi.detectors.stack import stack_scores

        return stack_scores(model, paths, use_cache, cache_dir, batch_size, progress, perturbation, calibrated)
    det = model.detector
    protocol = model.config.protocol
    if perturbation is not None and perturbation.kind != "none":
        protocol, use_cache = Perturbed(protocol, perturbation), False
    paths = [as_input(p) for p in paths]
    if any(isinstance(p, InMemoryImage) for p in paths):
        use_cache = False  # nothing about an upload is kept
    if not det.cacheable or not use_cache:  # nothing to cache: score each batch as it comes and keep only the logits
        ext = extract(
            paths,
            _logits_of(model),
            det.backbone.preprocess,
            protocol,
            cache=None,
            batch_size=batch_size,
            description="scoring images",
            progress=progress,
        )
        scores = logit_scores(ext, lambda logits: logits, model.config.protocol)
    else:
        ext = extract_features(model, paths, use_cache, cache_dir, batch_size, progress, description="scoring images")
        scores = scores_from_features(model, ext)
    if calibrated:
        scores.prob = model.calibrated(scores.prob)
    return scores


def _logits_of(model: Model):
    det, device = model.detector, model.device
    return lambda px: det(px.to(device)).logit


def score_prepared(model: Model, prepared: list[dict], inputs: list, batch_size: int = 8) -> Scores:
    """Calibrated P(generated) of images prepared elsewhere by :func:`aigi.engine.features.prepare_image` (Ray's read
    tasks decode, the model's actors only run the detector): the same scores as :func:`score_paths` gives uncached."""
    if model.config.detector == STACK:
        raise ValueError("a stack scores through its members' own protocols: use score_paths")
    multi = bool(getattr(model.config.protocol, "multi_view", False))
    ext = Extracted(features=[None] * len(prepared), sha256=[None] * len(prepared), inputs=inputs, multi_view=multi)
    items = [{"i": i, **item} for i, item in enumerate(prepared)]
    for item in items:
        if "pixels" in item:
            item["pixels"] = torch.as_tensor(item["pixels"])  # numpy after crossing processes
    with torch.inference_mode():
        gather(items, _logits_of(model), multi, batch_size, ext)
    scores = logit_scores(ext, lambda logits: logits, model.config.protocol)
    scores.prob = model.calibrated(scores.prob)
    return scores


SCORE_CHUNK = 256  # cached feature rows scored at once (a MIRROR row is a whole token set)


def scores_from_features(model: Model, ext: Extracted) -> Scores:
    def head(feats: torch.Tensor) -> torch.Tensor:
        chunks = (feats[i : i + SCORE_CHUNK].to(model.device) for i in range(0, len(feats), SCORE_CHUNK))
        return torch.cat([model.detector.score(c).logit.cpu() for c in chunks])

    return logit_scores(ext, head, model.config.protocol)


def logit_scores(ext: Extracted, to_logit, protocol: EvalProtocol) -> Scores:
    """P(generated) per image: ``to_logit`` (stacked rows -> logits) over every view of the readable images at once,
    the views' logits combined as ``protocol`` says (in float64), then the sigmoid. Non-finite ones become errors."""
    prob = np.full(len(ext.features), np.nan)
    ok = ext.ok
    if ok:
        rows, counts = ext.view_rows(ok)
        with torch.inference_mode():
            logits = to_logit(torch.from_numpy(rows)).double()
            if len(logits) != len(counts):  # several views per image
                logits = torch.stack([protocol.combine_logits(v) for v in logits.split(counts)])
            prob[ok] = torch.sigmoid(logits).numpy()
    errors = dict(ext.errors)
    for i in ok:
        if not np.isfinite(prob[i]):
            prob[i] = np.nan
            errors[i] = "the model produced a non-finite score (check the model's weights and preprocessing)"
    return Scores(prob=prob, errors=errors, cache_hits=ext.cache_hits)


def labelled_scores(
    model: Model, data: str | os.PathLike, progress: bool = True, calibrated: bool = True
) -> tuple[list[int], np.ndarray]:
    """Labels and P(generated) of the readable images of a labelled folder or manifest, pooled over its subsets
    (what calibration and per-epoch validation measure on; non-finite scores count as unreadable). ``calibrated``:
    through the model's probability calibration, else the detector's own probability."""
    from aigi.data.folders import discover

    samples = discover(data).samples
    scores = score_paths(model, [s.path for s in samples], progress=progress, calibrated=calibrated)
    ok = [i for i in range(len(samples)) if i not in scores.errors]
    return [samples[i].label for i in ok], scores.prob[ok]
