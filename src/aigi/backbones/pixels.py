"""No pretrained network: the detector sees the normalised pixels themselves.

For detectors trained from scratch on pixel traces (NPR, the local-patch detector): the "backbone" only declares
the input side and normalisation (ImageNet's mean and std, as the NPR authors' code normalises), and passes the
pixels through as tokens (one token per pixel, the global token their mean), so the generic code that asks a
backbone for its preprocessing or token grid keeps working.
"""

from __future__ import annotations

import torch

from aigi.backbones.base import Backbone, BackboneSpec, Preprocess, Tokens
from aigi.errors import ConfigError


class PixelsBackbone(Backbone):
    dim = 3

    def __init__(self) -> None:
        super().__init__()
        self.preprocess = Preprocess()

    @classmethod
    def from_spec(cls, spec: BackboneSpec) -> "PixelsBackbone":
        if spec.source is not None or spec.options:
            raise ConfigError("the pixels backbone takes no source or options (it has no weights)")
        return cls()

    def forward(self, pixels: torch.Tensor) -> Tokens:
        b, c, h, w = pixels.shape
        return Tokens(patches=pixels.flatten(2).transpose(1, 2), cls=pixels.mean(dim=(2, 3)), grid=(h, w))
