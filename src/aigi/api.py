"""The library API that the CLI, the HTTP server and notebooks share, so they can never disagree about a verdict.

    from aigi import api
    model = api.load()                                   # the shipped default; api.load("models/mirror") for a folder
    for d in api.detect(model, ["photo.jpg", ("upload.png", png_bytes)]):
        print(d.to_dict())                               # the schema `aigi detect --json` prints
    report = api.evaluate(model, "../shared/data/aigi-mini/val")
    report.write("reports/val")                          # CSV, JSON, per-image scores, ROC and histogram PNGs

An input is a path or ``(name, bytes)``: uploads are decoded in memory, never written to disk, and their features
are never cached. A loaded model holds no per-call state, so one model can serve concurrent requests.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from aigi.checkpoints import Model, default_model_path, load_default_model, load_model
from aigi.data.decode import (
    ImageDecodeError,
    ImageInput,
    InMemoryImage,
    as_input,
    read_bytes,
)
from aigi.data.folders import ImageSet, discover
from aigi.data.perturb import Perturbation
from aigi.engine.evaluate import Report, build_report
from aigi.engine.inference import Scores, score_paths
from aigi.names import shown
from aigi.provenance import inspect_file
from aigi.provenance.findings import Provenance
from aigi.provenance.fusion import fuse

__all__ = ["Detection", "detect", "evaluate", "load", "Model", "Report"]


def load(model: str | os.PathLike | None = None, allow_download: bool | None = None, runtime: str = "auto") -> Model:
    """A model folder, or the shipped default when ``model`` is None. The folder's backbone comes from local files
    (a local folder, the Hugging Face cache) unless ``allow_download`` (None: ``AIGI_ALLOW_DOWNLOAD=1``) allows the
    Hub: a model folder is someone else's choice, loading one must not fetch what it names.

    ``runtime``: ``auto`` scores through onnxruntime when the folder ships a ``model.onnx`` made from these weights
    (the default model does), else in PyTorch; ``torch`` always PyTorch (to train, export or inspect the modules);
    ``onnx`` always onnxruntime (exported to the cache when the folder has no ``model.onnx``)."""
    from aigi.onnx_runtime import with_runtime

    loaded = load_model(model, allow_download) if model else load_default_model()
    return with_runtime(loaded, model or default_model_path(), runtime)


SCORED_VERDICTS = ("generated", "real", "uncertain")  # an image the model scored; else "error" (or "unknown")


@dataclass
class Detection:
    """The verdict on one image, with its basis: what `aigi detect` prints and the HTTP API returns."""

    path: str  # the file's path, or an upload's name
    verdict: str  # generated | real | uncertain | error
    basis: str  # why, in words: "real (detector 0.08; camera EXIF present)"
    prob_generated: float | None  # P(generated) (calibrated when the model is); None when the image could not be scored
    detector_verdict: str | None  # the detector alone at the threshold
    threshold: float
    band: tuple[float, float] | None = None  # (low, high): "uncertain" when low < prob_generated < high
    error: str | None = None  # why the image could not be scored
    provenance: Provenance | None = None  # None when provenance was not read
    heatmap_png: bytes | None = field(default=None, repr=False)  # with explain=True: the per-patch map as a PNG
    heatmap_path: str | None = None  # where a caller wrote heatmap_png (the CLI)
    explained: bool = False
    patch_map: np.ndarray | None = field(default=None, repr=False)  # with explain=True: the raw map (rows x columns)
    thinking: dict | None = None  # with --think: which path decided, why, the evidence and the explanation
    decided_by: str = "detector"  # declared | watermark | detector | none: what the verdict rests on (fusion's source)

    def to_dict(self, heatmap_base64: bool = False) -> dict:
        """The one JSON schema of a verdict. ``heatmap`` (with explain) is where the PNG was written, or the PNG
        itself in base64 when ``heatmap_base64``. File names (and texts that may quote a file) are as
        :func:`aigi.names.shown` shows them: control characters, bidi controls and non-UTF-8 bytes escaped."""
        d = {
            "path": shown(self.path),
            "verdict": self.verdict,
            "basis": shown(self.basis),
            "prob_generated": None if self.prob_generated is None else round(self.prob_generated, 4),
            "detector_verdict": self.detector_verdict,
            "error": None if self.error is None else shown(self.error),
        }
        if self.provenance is not None:
            d["provenance"] = {
                "findings": [f.to_dict() for f in self.provenance.findings],
                "problems": self.provenance.problems,
            }
        if self.explained:
            png = self.heatmap_png
            where = None if self.heatmap_path is None else shown(self.heatmap_path)
            d["heatmap"] = (base64.b64encode(png).decode() if png else None) if heatmap_base64 else where
        if self.thinking is not None:
            d["thinking"] = self.thinking
        return d


def detect(
    model: Model,
    inputs: Iterable[ImageInput | tuple[str, bytes]],
    *,
    threshold: float | None = None,
    provenance: bool = True,
    explain: bool = False,
    use_cache: bool = True,
    batch_size: int = 8,
    progress: bool = False,
) -> list[Detection]:
    """One :class:`Detection` per input, in order; a file that cannot be read gets ``verdict="error"`` and the
    reason, never an exception. ``explain`` adds the per-patch heatmap as PNG bytes (a model without a patch map
    raises :class:`~aigi.errors.ConfigError`). The model's uncertainty band applies at its own threshold: a
    ``threshold`` given here replaces both (every image is then decided)."""
    items = [as_input(x) for x in inputs]
    t, band = (model.threshold, model.config.band) if threshold is None else (threshold, None)
    if explain:
        from aigi.engine.explain import explain_inputs

        scores, pngs, maps = explain_inputs(model, items, batch_size=batch_size, progress=progress)
    else:
        scores, pngs, maps = (
            score_paths(model, items, use_cache=use_cache, batch_size=batch_size, progress=progress),
            {},
            {},
        )
    decide = dict(threshold=t, band=band)
    found = [
        _detection(item, i, scores, decide, provenance_of(item) if provenance else None, pngs.get(i), explain)
        for i, item in enumerate(items)
    ]
    for i, d in enumerate(found):
        d.patch_map = maps.get(i)
    return found


def detect_prepared(
    model: Model, names: list[str], prepared: list[dict], provenances: list[Provenance | None], batch_size: int = 8
) -> list[Detection]:
    """As :func:`detect` (the model's threshold and band, no heatmaps), for images read and put through the model's
    protocol elsewhere (:func:`aigi.engine.features.prepare_image`, in Ray's read tasks) with what their files
    declare (``None``: not read). The same detections as :func:`detect` on the same bytes."""
    from aigi.engine.inference import score_prepared

    scores = score_prepared(model, prepared, list(names), batch_size)
    decide = dict(threshold=model.threshold, band=model.config.band)
    return [_detection(n, i, scores, decide, p, None, False) for i, (n, p) in enumerate(zip(names, provenances))]


def _detection(
    item, i: int, scores: Scores, decide: dict, prov: Provenance | None, png: bytes | None, explain: bool
) -> Detection:
    prob = None if i in scores.errors else float(scores.prob[i])
    threshold = decide["threshold"]
    v = fuse(prob, threshold, prov, decide["band"])
    error = scores.errors.get(i)
    verdict, basis = (v.label, v.basis) if v.label != "unknown" else ("error", f"could not be scored: {error}")
    return Detection(
        path=str(item),
        verdict=verdict,
        basis=basis,
        prob_generated=prob,
        threshold=threshold,
        band=decide["band"],
        detector_verdict=None if prob is None else ("generated" if prob >= threshold else "real"),
        error=error,
        provenance=prov,
        heatmap_png=png,
        explained=explain,
        decided_by=v.source,
    )


def provenance_of(item: Path | InMemoryImage) -> Provenance:
    """What a file or an upload declares (C2PA, metadata, watermarks); an unreadable upload says so."""
    if isinstance(item, InMemoryImage):
        try:
            return inspect_file(item.name, read_bytes(item))
        except ImageDecodeError as e:
            return Provenance(path=item.name, problems=[e.reason], unreadable=True)
    return inspect_file(item)


def evaluate(
    model: Model,
    data: str | os.PathLike | ImageSet,
    *,
    threshold: float | None = None,
    perturbation: Perturbation | None = None,
    use_cache: bool = True,
    batch_size: int = 8,
    progress: bool = True,
    model_name: str = "",
    data_name: str | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Report:
    """Score labelled images (a folder or manifest in any layout :func:`aigi.data.folders.discover` reads, or an
    :class:`ImageSet`) and build the report: the field's metrics per subset plus MEAN, the unreadable and the skipped
    files; with the model's uncertainty band, also coverage and accuracy on the decided images (a ``threshold`` given
    here replaces both). ``report.write(folder)`` writes its CSV, JSON, per-image scores and plots."""
    image_set = data if isinstance(data, ImageSet) else discover(data)
    t, band = (model.threshold, model.config.band) if threshold is None else (threshold, None)
    scores = score_paths(
        model,
        [s.path for s in image_set.samples],
        use_cache=use_cache,
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=progress,
        perturbation=perturbation,
    )
    name = data_name if data_name is not None else str(image_set.root if isinstance(data, ImageSet) else data)
    if perturbation is not None and perturbation.kind != "none":
        name += f" ({perturbation.name})"
    return build_report(image_set, scores.prob, t, scores.errors, model=model_name, data=name, band=band)
