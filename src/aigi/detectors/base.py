"""The contract every detector meets.

``Detector.forward(pixels) -> Output`` with ``logit`` [B] (higher = more likely generated) and an optional
``patch_map`` [B, h, w]. A probability is ``sigmoid(logit)``.

Scoring is split in two so the feature cache can serve any detector whose trainable part sits on frozen
backbone features: ``features(pixels)`` (what may be cached, per image) and ``score(features)`` (the
trainable head). A detector whose features depend on trained weights sets ``cacheable = False``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from aigi.backbones.base import Backbone


@dataclass
class Output:
    logit: torch.Tensor  # [B]
    patch_map: torch.Tensor | None = None  # [B, h, w]

    @property
    def prob(self) -> torch.Tensor:
        """P(generated), in float64: a float32 sigmoid rounds every logit above ~17 to exactly 1, tying those images."""
        return torch.sigmoid(self.logit.double())


class DetectorParams(BaseModel):
    """Hyper-parameters of a detector; each detector subclasses this with its own fields."""

    model_config = ConfigDict(extra="forbid")


class Detector(nn.Module):
    name: ClassVar[str]
    Params: ClassVar[type[DetectorParams]] = DetectorParams
    cacheable: ClassVar[bool] = False  # features() depends only on the frozen backbone and the image
    feature_kind: ClassVar[str] = "logit"  # names the cached quantity (part of the cache key)

    def __init__(self, params: DetectorParams, backbone: Backbone) -> None:
        super().__init__()
        self.params = params
        self.backbone = backbone

    def forward(self, pixels: torch.Tensor) -> Output:
        return self.score(self.features(pixels))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def score(self, features: torch.Tensor) -> Output:  # pragma: no cover - abstract
        raise NotImplementedError

    def weights_metadata(self) -> dict[str, str]:
        """Settings the weights were made with that their shapes do not show (e.g. attention heads, top-k);
        stored in the safetensors header and checked against config.json when a model folder is loaded."""
        return {}

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a model folder stores: everything but the frozen backbone, whose LoRA adapters are kept."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.") or ".lora_" in k}
