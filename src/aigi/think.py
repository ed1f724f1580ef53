"""Fast or slow on demand, after Mirage-R1's adaptive reasoning (Xia et al., arXiv 2508.13223): answer at once when
the answer is clear, look harder when it is not, and say which happened and why.

    from aigi import api, think
    fast = api.load()
    for d in think.detect(fast, ["photo.jpg"], mode="auto"):
        print(d.verdict, d.thinking["path"], d.thinking["reason"])

- ``fast``: the fast model alone (the shipped default: one centre crop).
- ``slow``: everything the toolkit has on each image: the slow model (by default the shipped one scoring the whole
  image as a grid of at most 4 tiles, max logit, calibrated for that on both ``val/``; or any model folder, e.g. a
  stack), its heatmap when it has one (the hottest regions named), the provenance the file declares, and an
  explanation of the verdict from that evidence. Without a vision-language model the explanation is templated and
  says so; it is never presented as a model's reasoning.
- ``auto``: fast first. The rule: an image goes to the slow path when the fast verdict is ``uncertain`` (its
  calibrated probability inside the model's uncertainty band, chosen on val so that decided images are 95%
  accurate), or, for a model without a band, when its probability is within ``margin`` (0.15) of the threshold.
  A verdict the file itself declares (C2PA) is never escalated; nor is an unreadable file.

Each :class:`~aigi.api.Detection` gets ``thinking``: the mode, the path that decided, the reason, the fast
probability, and on the slow path the evidence and the explanation.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Literal

import numpy as np

from aigi import api
from aigi.checkpoints import Model, ModelConfig, default_model_path, views_of
from aigi.data.decode import as_input, load_image
from aigi.errors import ConfigError
from aigi.io import read_json

Mode = Literal["fast", "slow", "auto"]
MODES = ("fast", "slow", "auto")
MARGIN = 0.15  # auto without a band: escalate when |P(generated) - threshold| < MARGIN
TEMPLATED = "templated from the evidence (no language model): not a model's reasoning"


def load_slow_default(fast: Model | None = None) -> Model:
    """The shipped default scoring the whole image (its ``slow.json``: views, threshold, Platt scaling and band
    calibrated for them), sharing the fast model's weights when ``fast`` is the shipped default. Another fast model
    has no default slow path: give one (``--slow-model``)."""
    if fast is not None and not has_slow_path(fast):
        raise ConfigError(
            f"the {fast.config.detector} model has no default slow path (only the shipped model has one): give "
            "--slow-model, e.g. this model calibrated with --views grid, or a stack"
        )
    base = fast if fast is not None else api.load()
    config = ModelConfig.model_validate({**base.config.model_dump(mode="json"), **_shipped("slow.json")})
    return Model(base.detector, config)


def has_slow_path(model: Model) -> bool:
    """Whether ``model`` is the shipped default, whose whole-image settings ``slow.json`` holds."""
    shipped = _shipped("config.json")
    return model.config.training == shipped.get("training") and model.config.detector == shipped["detector"]


@functools.cache
def _shipped(name: str) -> dict:
    """A file of the shipped model folder, read once (it ships with the package and does not change)."""
    return read_json(default_model_path() / name)


def escalation(d: api.Detection, margin: float = MARGIN) -> str | None:
    """Why the slow path should look at this fast verdict; None when it stands (the reason is then :func:`settled`)."""
    if d.prob_generated is None or d.decided_by in ("declared", "watermark"):
        return None
    p = d.prob_generated
    if d.band is not None:
        lo, hi = d.band
        return (
            f"fast P(generated) {p:.2f} is inside the uncertainty band ({lo:.2f}, {hi:.2f})"
            if d.verdict == "uncertain"
            else None
        )
    if abs(p - d.threshold) < margin:
        return f"fast P(generated) {p:.2f} is within {margin:g} of the threshold {d.threshold:.2f}"
    return None


def settled(d: api.Detection) -> str:
    if d.prob_generated is None:
        return "the file could not be scored"
    if d.decided_by in ("declared", "watermark"):
        return f"the file declares its origin ({d.decided_by})"
    if d.band is not None:
        return f"fast P(generated) {d.prob_generated:.2f} is outside the uncertainty band ({d.band[0]:.2f}, {d.band[1]:.2f})"
    return f"fast P(generated) {d.prob_generated:.2f} is clear of the threshold {d.threshold:.2f}"


def detect(
    fast: Model,
    inputs: Iterable,
    mode: Mode = "auto",
    slow: Model | None = None,
    margin: float = MARGIN,
    explain: bool = False,
    batch_size: int = 8,
    progress: bool = False,
    reasoner=None,
) -> list[api.Detection]:
    """One detection per input, in order, each with ``thinking``; ``slow`` defaults to :func:`load_slow_default`.
    ``explain`` draws the fast path's heatmaps too (the slow path always draws them when its model has a map).
    ``reasoner`` (:class:`aigi.reasoner.VLMReasoner`) answers beside the evidence on the slow path."""
    items = [as_input(x) for x in inputs]
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    options = dict(batch_size=batch_size, progress=progress, use_cache=False, explain=explain)
    if mode != "fast":
        slow = slow or load_slow_default(fast)  # before any scoring: a missing slow path is said at once
    if mode == "slow":
        return slow_path(slow, items, [None] * len(items), ["--think slow"] * len(items), reasoner)
    found = api.detect(fast, items, **options)
    reasons = [escalation(d, margin) if mode == "auto" else None for d in found]
    for d, why in zip(found, reasons):
        d.thinking = {
            "mode": mode,
            "path": "fast",
            "reason": settled(d) if mode == "auto" else "--think fast",
            **decision_of(d),
        }
    picked = [i for i, why in enumerate(reasons) if why is not None]
    if picked:
        looked = slow_path(
            slow, [items[i] for i in picked], [found[i] for i in picked], [reasons[i] for i in picked], reasoner
        )
        for i, d in zip(picked, looked):
            found[i] = d
    return found


def slow_path(
    slow: Model, items: list, fast: list[api.Detection | None], reasons: list[str], reasoner=None
) -> list[api.Detection]:
    """The slow model's verdicts with their heatmaps (when it has them), provenance, evidence and explanation, and
    the reasoner's answer beside them when one is given."""
    explain = slow.detector is not None and getattr(slow.detector, "patch_map_label", None) is not None
    found = api.detect(slow, items, explain=explain, use_cache=False, batch_size=4)
    for item, d, f, why in zip(items, found, fast, reasons):
        evidence = gather_evidence(d, f, slow)
        d.thinking = {
            "mode": "slow" if f is None else "auto",
            "path": "slow",
            "reason": why,
            **decision_of(d),
            "fast_prob_generated": None if f is None or f.prob_generated is None else round(f.prob_generated, 4),
            "evidence": evidence,
            "explanation": {"text": explain_in_words(d, evidence), "source": TEMPLATED},
        }
        if reasoner is not None and d.prob_generated is not None:
            d.thinking["reasoner"] = reasoner.ask(load_image(item).image, evidence)
    return found


def decision_of(d: api.Detection) -> dict:
    """The threshold and band the deciding path used (the slow model has its own: the answer's header shows the
    fast model's)."""
    return {"threshold": round(d.threshold, 4), "band": None if d.band is None else [round(b, 4) for b in d.band]}


def gather_evidence(d: api.Detection, fast: api.Detection | None, slow: Model) -> dict:
    findings = [] if d.provenance is None else [f.to_dict() for f in d.provenance.findings]
    return {
        "slow_prob_generated": None if d.prob_generated is None else round(d.prob_generated, 4),
        "fast_prob_generated": None if fast is None or fast.prob_generated is None else round(fast.prob_generated, 4),
        "views": views_of(slow.config),
        "threshold": round(d.threshold, 4),
        "band": None if d.band is None else [round(b, 4) for b in d.band],
        "hottest_regions": [] if d.patch_map is None else hottest_regions(d.patch_map),
        "map_covers": map_scope(slow),
        "provenance": findings,
    }


def map_scope(model: Model) -> str:
    """What the heatmap covers: the analysed crop, or with several views only the first (a grid's top-left tile)."""
    protocol = model.config.protocol
    if protocol is None or not protocol.multi_view:
        return "the analysed crop"
    return "the first view only (a grid's top-left tile, a crop's centre)"


REGION_ROWS, REGION_COLS = ("top", "middle", "bottom"), ("left", "centre", "right")


def hottest_regions(patch_map: np.ndarray, k: int = 3) -> list[dict]:
    """The ``k`` patches with the most evidence, each with its place in words ("top left") and its share of the
    map's total positive evidence."""
    m = np.nan_to_num(np.asarray(patch_map, dtype=np.float64))
    rows, cols = m.shape
    positive = np.clip(m - m.min(), 0, None)
    total = positive.sum() or 1.0
    out = []
    for flat in np.argsort(m, axis=None)[::-1][:k]:
        r, c = divmod(int(flat), cols)
        where = f"{REGION_ROWS[min(2, r * 3 // rows)]} {REGION_COLS[min(2, c * 3 // cols)]}"
        out.append({"where": where, "row": r, "col": c, "share": round(float(positive[r, c] / total), 4)})
    return out


def regions_in_words(evidence: dict) -> str | None:
    """Where the heatmap is hottest, in words: "top right, middle centre of the analysed crop" (None: no map)."""
    regions = evidence.get("hottest_regions") or []
    if not regions:
        return None
    places = ", ".join(dict.fromkeys(r["where"] for r in regions))
    return f"{places} of {evidence.get('map_covers', 'the analysed crop')}"


def explain_in_words(d: api.Detection, evidence: dict) -> str:
    """A plain-words account of the slow verdict from the evidence alone (no model wrote it)."""
    if d.prob_generated is None:
        return f"The image could not be scored: {d.error}."
    p, t = d.prob_generated, d.threshold
    side = "above" if p >= t else "below"
    parts = [
        f"Scoring {evidence['views'] or 'the image'}, the detector gives P(generated) {p:.2f}, {side} its threshold {t:.2f}."
    ]
    if evidence["fast_prob_generated"] is not None:
        parts.append(f"The quick look gave {evidence['fast_prob_generated']:.2f}.")
    if where := regions_in_words(evidence):
        parts.append(f"Its strongest per-patch evidence is at the {where}.")
    if evidence["provenance"]:
        said = "; ".join(f"{f['summary']} ({f['strength']})" for f in evidence["provenance"])
        parts.append(f"What the file declares: {said}.")
    else:
        parts.append("The file declares nothing about its origin.")
    parts.append(f"Verdict: {d.verdict} ({d.basis}).")
    return " ".join(parts)
