"""CNNSpot-style fine-tuned detector (Wang et al., "CNN-generated images are surprisingly easy to spot... for now",
CVPR 2020): an ImageNet backbone fine-tuned end to end, with a linear head on its global feature, trained with
blur and JPEG augmentation on both classes.

The original fine-tunes a ResNet-50 with Adam (lr 1e-4, batch 64) on ProGAN images, with blur and JPEG each at
probability 0.5 (sigma in [0, 3], quality in [30, 100]). Here any registered backbone works (the offline
EfficientNet-Lite0 by default); the augmentation adds resizing, noise, flips and "hard real" looks applied to real
photos only (:class:`aigi.data.augment.ForensicAugment`); each epoch draws images so that every generator and every
photo source counts alike (``balance="subset"``); AdamW, the head at ``head_lr_scale`` times the backbone's learning
rate, a linear warm-up then a cosine per step.

``train_from`` fine-tunes only the backbone's parameters from the first one whose name starts with it (e.g.
``net.stages.4`` on EfficientNet-Lite0); everything before stays frozen, batch norms included, and is not stored in
the model folder. On a CPU this roughly halves a step's cost.

The patch map is the linear head applied to each cell of the backbone's token grid: on EfficientNet-Lite0 the
global feature is the mean of the cells, so the image's logit is exactly the mean of the map.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from aigi.backbones.base import Backbone
from aigi.detectors import DETECTORS
from aigi.detectors.base import Detector, DetectorParams, Output, PartlyTrainedBackbone, zero_linear
from aigi.engine.pixel_recipe import PixelClassifierRecipe, PixelTrainConfig
from aigi.engine.trainer import RECIPES, BackboneChoice


class CNNSpotParams(DetectorParams):
    train_from: str | None = Field(
        None,
        max_length=200,
        description="fine-tune the backbone from the first parameter whose name starts with this (e.g. "
        "net.stages.4); everything before stays frozen. None: the whole backbone",
    )
    finetune: bool = Field(True, strict=True, description="false: the backbone stays frozen (a linear probe)")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the global feature before the head (training)")


@DETECTORS.register("cnnspot")
class CNNSpot(PartlyTrainedBackbone, Detector):
    name = "cnnspot"
    Params = CNNSpotParams
    feature_kind = "global"
    cacheable = False  # the backbone is trained: its features are this model's own (unless finetune is off)
    cache_variant = {"finetune": False}
    patch_map_label = "head logit per cell"

    def __init__(self, params: CNNSpotParams, backbone: Backbone) -> None:
        super().__init__(params, backbone)
        self.head = zero_linear(backbone.dim)
        self.dropout = nn.Dropout(params.dropout)
        if params.finetune:
            self.unfreeze_from(params.train_from)
        self.cacheable = not params.finetune

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixels).cls

    def score(self, features: torch.Tensor) -> Output:
        return Output(logit=self.head(self.dropout(features.float())).squeeze(-1))

    def forward(self, pixels: torch.Tensor) -> Output:
        tokens = self.backbone(pixels)
        h, w = tokens.grid
        cells = self.head(tokens.patches.float()).squeeze(-1).reshape(-1, h, w)
        return Output(logit=self.score(tokens.cls).logit, patch_map=cells)


# -- training recipe -------------------------------------------------------------------------------------------------
class CNNSpotTrainConfig(PixelTrainConfig, BackboneChoice):
    """The fine-tuning recipe (defaults measured on aigi-mini + aigi-wide train, chosen on their val)."""

    lr: float = Field(1e-4, gt=0, description="peak AdamW learning rate of the backbone (CNNSpot: Adam 1e-4)")
    head_lr_scale: float = Field(10.0, gt=0, description="the fresh linear head learns this many times faster")


@RECIPES.register("cnnspot")
class CNNSpotRecipe(PixelClassifierRecipe):
    """CNNSpot: the backbone fine-tuned end to end with post-processing and hard-real augmentation."""

    name = "cnnspot"
    detector = "cnnspot"
    Config = CNNSpotTrainConfig
    param_options = ("train_from", "finetune", "dropout")

    def lr_scales(self) -> dict[str, float]:
        return {"head.": self.config.head_lr_scale}
