"""The shapes the HTTP API answers with, for its OpenAPI schema (FastAPI generates it from these). The responses
themselves are built from the library's own dictionaries (:meth:`aigi.api.Detection.to_dict`), so these models
describe them and tests check that they do."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from aigi.checkpoints import Model


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Error(BaseModel):
    error: str = Field(description="what went wrong, in one line", examples=["the request holds no image"])


class Finding(BaseModel):
    source: str = Field(description="c2pa, xmp, iptc, exif, png-text, jpeg-comment or watermark")
    claim: Literal["generated", "ai-edited", "captured", "edited", "info"]
    strength: Literal["strong", "moderate", "weak"] = Field(description="how hard the finding is to forge")
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)


class FileProvenance(BaseModel):
    findings: list[Finding]
    problems: list[str] = Field(description="sources that could not be read, with why")


class Detection(BaseModel):
    """One image's verdict: exactly what ``aigi detect --json`` prints for it."""

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "path": "photo.jpg",
        "verdict": "real",
        "basis": "real (detector 0.08)",
        "prob_generated": 0.0812,
        "detector_verdict": "real",
        "error": None,
        "provenance": {"findings": [], "problems": []},
    }]})  # fmt: skip

    path: str = Field(description="the uploaded file's name")
    verdict: Literal["generated", "real", "uncertain", "error"]
    basis: str = Field(description="why, in words")
    prob_generated: float | None = Field(description="P(generated), calibrated when the model is; null on error")
    detector_verdict: Literal["generated", "real"] | None = Field(description="the detector alone at the threshold")
    error: str | None = Field(description="why the image could not be scored")
    provenance: FileProvenance | None = Field(None, description="present unless provenance=false")
    heatmap: str | None = Field(None, description="with explain=true: the per-patch map as a base64 PNG")
    thinking: dict[str, Any] | None = Field(
        None,
        description="with think=: the mode, the path that decided (fast|slow) and why, the fast probability; on the "
        "slow path the evidence and the explanation (its 'source' says when it is templated)",
    )


class DetectResponse(BaseModel):
    model: str = Field(description="the model that scored the images")
    threshold: float
    band: list[float] | None = Field(description="[low, high]: 'uncertain' between them; null when none")
    results: list[Detection]


class DetectFailure(Error):
    results: list[Detection] = Field(description="each image with its error")


class InspectItem(FileProvenance):
    path: str


class InspectResponse(BaseModel):
    results: list[InspectItem]


class ModelInfo(BaseModel):
    name: str
    default: bool
    detector: str
    backbone: str
    threshold: float
    band: list[float] | None
    views: str
    heatmap: bool = Field(description="whether explain=true can give a per-patch heatmap")
    trained_on: str | None = Field(description="the training data the model folder records")
    val_auroc: float | None = Field(description="validation AUROC the training recorded (null when none)")
    calibration: dict[str, Any] | None = Field(description="how the threshold and band were chosen, and on what")


class JSONImage(BaseModel):
    name: str | None = Field(None, max_length=1000, description="a name for messages and results")
    data: str = Field(description="the file's bytes, base64")


class JSONImages(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: list[JSONImage]


ERRORS = {
    411: {"model": Error, "description": "no Content-Length"},
    413: {"model": Error, "description": "body or image count over the limit"},
    415: {"model": Error, "description": "neither multipart nor JSON"},
    422: {"model": DetectFailure, "description": "no readable image, or invalid options"},
    503: {"model": Error, "description": "queue full; see Retry-After"},
    504: {"model": Error, "description": "the request took too long"},
}
DETECT_RESPONSES = {200: {"model": DetectResponse, "description": "one verdict per image, in order"}, **ERRORS}
INSPECT_RESPONSES = {200: {"model": InspectResponse, "description": "what each file declares"}, **ERRORS}


def upload_body() -> dict:
    """The request body for OpenAPI (the handlers read it themselves, to keep uploads in memory and bounded)."""
    files = {
        "type": "object",
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": files},
                "application/json": {"schema": JSONImages.model_json_schema()},
            },
        }
    }


def model_info(name: str, model: Model, default: bool) -> dict:
    from aigi.checkpoints import views_of

    cfg = model.config
    backbone = "each member's own" if cfg.backbone is None else cfg.backbone.family
    if cfg.backbone is not None and cfg.backbone.source:
        backbone += f" ({cfg.backbone.source})"
    training = cfg.training or {}
    data = training.get("data") or training.get("config", {}).get("data")
    auroc = training.get("val_auroc", training.get("last_epoch", {}).get("val_auroc"))
    return ModelInfo(
        name=name,
        default=default,
        detector=cfg.detector,
        backbone=backbone,
        threshold=cfg.threshold,
        band=None if cfg.band is None else list(cfg.band),
        views=views_of(cfg),
        heatmap=model.detector.patch_map_label is not None,
        trained_on=None if data is None else str(data),
        val_auroc=auroc,
        calibration=cfg.calibration or None,
    ).model_dump()
