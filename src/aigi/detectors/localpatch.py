"""A local-patch artifact detector: a small fully convolutional network whose every output sees only one small
square of the image (its receptive field), trained so that each patch says real or generated, then pooled.

The idea is Chai et al.'s ("What makes fake images detectable? Understanding properties that generalize", ECCV
2020): classifiers truncated early, so each output has a small receptive field, generalise to unseen generators
better than whole-image ones, because local artifacts (textures, up-sampling and decoder traces) are shared across
generators where global content is not; their loss is the image's label on every patch, their image score a pooled
patch score. Here the network is a plain stack of 3x3 convolutions without padding, so a patch sees exactly its
``receptive_field`` square of pixels and nothing else (a pixel moves only the patches that contain it):

    conv 3x3 (stride 1) -> conv 3x3 (stride 2) -> (receptive_field - 5) / 4 convs 3x3 (stride 1) -> conv 1x1 -> logit

each with batch norm and ReLU: receptive fields 9, 13, 17, ... (9: one extra convolution; 33: seven). Patches sit
every 2 pixels. The image's logit pools the patch logits: the mean of the highest ``top_fraction`` (``pool="topk"``,
10% by default, chosen on val: a few generated patches, e.g. an inpainted region, then count), or their mean. The
patch map is the heatmap of ``--explain``.

Deviations from Chai et al.: not a truncated Xception or ResNet (a truncated ImageNet network would carry its
pretrained features; this one is trained from scratch on pixels like NPR), and binary cross-entropy on one logit per
patch instead of a two-way softmax (the same loss); training settings are theirs (Adam, learning rate 1e-3, batch
32), on native-resolution crops with the post-processing augmentation of the fine-tuned CNN.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator
from torch import nn

from aigi.backbones.base import Backbone
from aigi.detectors import DETECTORS
from aigi.detectors.base import MAX_WIDTH, DetectorParams, Output, PixelTraceDetector
from aigi.engine.pixel_recipe import NativePixelRecipe, NativePixelTrainConfig
from aigi.engine.trainer import RECIPES


class LocalPatchParams(DetectorParams):
    receptive_field: int = Field(
        9,
        ge=9,
        le=401,
        description="side of the square each patch sees: 9, 13, 17, ... (val AUROC after one epoch: 9 0.640, 17 0.633, "
        "33 0.637; the smallest and cheapest kept)",
    )
    width: int = Field(32, ge=1, le=MAX_WIDTH, description="channels of every convolution")
    pool: Literal["mean", "topk"] = Field(
        "topk",
        description="the image's logit: mean of the patch logits, or of the top_fraction highest (val AUROC, aigi-mini / "
        "aigi-wide: mean 0.611 / 0.618, top 2% 0.653 / 0.665, top 10% 0.653 / 0.671, top 25% 0.652 / 0.664)",
    )
    top_fraction: float = Field(0.1, gt=0, le=1, description="pool=topk: the share of highest patch logits averaged")

    @field_validator("receptive_field")
    @classmethod
    def _reachable(cls, v: int) -> int:
        if (v - 5) % 4:
            raise ValueError(f"receptive_field must be 5 + 4k (9, 13, 17, 21, ...), got {v}")
        return v


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, padding=0, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


@DETECTORS.register("localpatch")
class LocalPatch(PixelTraceDetector):
    name = "localpatch"
    Params = LocalPatchParams
    feature_kind = "patch_logits"
    patch_map_label = "logit of each patch"

    def __init__(self, params: LocalPatchParams, backbone: Backbone) -> None:
        super().__init__(params, backbone)
        w = params.width
        extra = [_conv(w, w) for _ in range((params.receptive_field - 5) // 4)]
        self.body = nn.Sequential(_conv(3, w), _conv(w, w, stride=2), *extra)
        self.head = nn.Conv2d(w, 1, 1)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The patch logits [B, h, w]."""
        return self.head(self.body(pixels)).squeeze(1)

    def score(self, features: torch.Tensor) -> Output:
        flat = features.float().flatten(1)
        if self.params.pool == "topk":
            k = max(1, round(self.params.top_fraction * flat.shape[1]))
            logit = flat.topk(k, dim=1).values.mean(1)
        else:
            logit = flat.mean(1)
        return Output(logit=logit, patch_map=features)

    def training_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.features(pixels)  # every patch learns its image's label


# -- training recipe -------------------------------------------------------------------------------------------------
class LocalPatchTrainConfig(NativePixelTrainConfig):
    """The local-patch recipe: Chai et al.'s optimiser settings (Adam, 1e-3, batch 32), the image's label on every
    patch."""

    lr: float = Field(1e-3, gt=0, description="peak learning rate (Chai et al.: Adam 1e-3)")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (Chai et al.: none, plain Adam)")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up, in epochs")


@RECIPES.register("localpatch")
class LocalPatchRecipe(NativePixelRecipe):
    """A small fully convolutional network scoring each small patch (receptive field 9-33 px), trained from scratch."""

    name = "localpatch"
    detector = "localpatch"
    Config = LocalPatchTrainConfig
    param_options = ("receptive_field", "width", "pool", "top_fraction")
