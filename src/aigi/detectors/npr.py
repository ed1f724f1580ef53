"""NPR: Neighbouring Pixel Relationships (Tan et al., "Rethinking the Up-Sampling Operations in CNN-based Generative
Network for Generalizable Deepfake Detection", CVPR 2024, arXiv 2312.10461).

Generators up-sample (nearest, bilinear, transposed convolutions), which ties each pixel to its neighbours inside
small blocks; a camera does not. NPR exposes this with the residual ``x - up(down(x))`` (nearest-neighbour, factor
0.5: each pixel minus the top-left pixel of its 2x2 block) and classifies it with a shallow ResNet trained from
scratch. As the authors' code (chuangchuangtan/NPR-DeepfakeDetection, networks/resnet.py):

- the residual is taken on the ImageNet-normalised pixels and scaled by 2/3 before the first convolution;
- the network is ResNet-50's first two stages only: a 3x3 stride-2 convolution (64 channels, batch norm, ReLU),
  3x3 max-pooling, ``layer1`` (3 bottlenecks, 256 channels) and ``layer2`` (4 bottlenecks, stride 2, 512
  channels), global average pooling and one linear logit; convolutions initialised Kaiming-normal (fan-out);
- training: Adam, learning rate 2e-4, batch 32, binary cross-entropy (the paper trains 50 epochs on ProGAN's
  4-class set with a step decay of the learning rate; see the recipe for what is used here and why).

Deviations: the bottleneck blocks are transformers' ResNet layers (the torchvision layout: stride in the 3x3
convolution); the learning rate follows the common warm-up-free cosine instead of the step decay, since far fewer
epochs are run here; images are never resized (the authors' evaluation resizes some test sets to 256; here the
protocol forbids it: ``resample=false``); training crops are 128 pixels cut at native resolution (the authors: 224
after a resize to 256, a no-op on ProGAN's 256-pixel images), about three times cheaper on a CPU, and scored at 224
(the network is fully convolutional); flips only, no blur or JPEG, as the authors train (measured here, see
``NPRTrainConfig.augment``).

The patch map is the linear head applied to each cell of ``layer2``'s feature map (28 x 28 for a 224 crop): the
image's logit is exactly their mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from transformers.models.resnet.configuration_resnet import ResNetConfig
from transformers.models.resnet.modeling_resnet import ResNetConvLayer, ResNetStage

from aigi.backbones.base import Backbone
from aigi.data.augment import ForensicAugment
from aigi.detectors import DETECTORS
from aigi.detectors.base import DetectorParams, Output, PixelTraceDetector
from aigi.engine.pixel_recipe import NativePixelRecipe, NativePixelTrainConfig
from aigi.engine.trainer import RECIPES


class NPRParams(DetectorParams):
    factor: float = Field(0.5, gt=0, lt=1, description="down-sampling factor of the residual x - up(down(x))")
    residual_scale: float = Field(2 / 3, gt=0, le=100, description="the residual is scaled by this (authors' code)")


def npr_residual(pixels: torch.Tensor, factor: float = 0.5) -> torch.Tensor:
    """``x - up(down(x))`` with nearest-neighbour resampling: zero wherever each block of the down-sampling grid
    holds one value (an image that is a nearest up-sampled copy of a smaller one)."""
    down = F.interpolate(pixels, scale_factor=factor, mode="nearest", recompute_scale_factor=True)
    return pixels - F.interpolate(down, size=pixels.shape[-2:], mode="nearest")


@DETECTORS.register("npr")
class NPR(PixelTraceDetector):
    name = "npr"
    Params = NPRParams
    feature_kind = "npr"
    patch_map_label = "head logit per cell of the last feature map"

    def __init__(self, params: NPRParams, backbone: Backbone) -> None:
        super().__init__(params, backbone)
        stages = ResNetConfig(layer_type="bottleneck", hidden_act="relu")
        self.stem = nn.Sequential(ResNetConvLayer(3, 64, kernel_size=3, stride=2), nn.MaxPool2d(3, 2, 1))
        self.layer1 = ResNetStage(stages, 64, 256, stride=1, depth=3)
        self.layer2 = ResNetStage(stages, 256, 512, stride=2, depth=4)
        self.head = nn.Linear(512, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def feature_map(self, pixels: torch.Tensor) -> torch.Tensor:
        """``layer2``'s map [B, 512, h, w] of the image's scaled NPR residual."""
        x = npr_residual(pixels, self.params.factor) * self.params.residual_scale
        return self.layer2(self.layer1(self.stem(x)))

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.feature_map(pixels).mean(dim=(2, 3))

    def score(self, features: torch.Tensor) -> Output:
        return Output(logit=self.head(features.float()).squeeze(-1))

    def forward(self, pixels: torch.Tensor) -> Output:
        fmap = self.feature_map(pixels)
        cells = self.head(fmap.permute(0, 2, 3, 1).float()).squeeze(-1)  # [B, h, w]
        return Output(logit=self.score(fmap.mean(dim=(2, 3))).logit, patch_map=cells)


# -- training recipe -------------------------------------------------------------------------------------------------
class NPRTrainConfig(NativePixelTrainConfig):
    """NPR's recipe: the paper's optimiser (Adam: AdamW without weight decay), learning rate and batch size."""

    lr: float = Field(2e-4, gt=0, description="peak learning rate (NPR: Adam 2e-4)")
    augment: ForensicAugment = Field(
        default_factory=lambda: ForensicAugment.crops_only(128),
        description="crops and flips only: on aigi-mini + aigi-wide val, 2 epochs, AUROC 0.695 without the "
        "post-processing chain against 0.660 with it (as the authors train: no blur or JPEG)",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay (NPR: none, plain Adam)")
    warmup_epochs: float = Field(0.0, ge=0, description="linear warm-up, in epochs (NPR: none)")


@RECIPES.register("npr")
class NPRRecipe(NativePixelRecipe):
    """NPR: a shallow ResNet trained from scratch on the up-sampling residual of native-resolution crops."""

    name = "npr"
    detector = "npr"
    Config = NPRTrainConfig
    param_options = ("factor",)
