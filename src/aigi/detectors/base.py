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

# Bounds on detector sizes read from a config (generous: far above any shipped or paper setting, but finite, so a
# config cannot ask for an allocation no weights file could fill; the weights file's header is checked too).
MAX_WIDTH = 65_536  # a hidden layer's or projection's width
MAX_SLOTS = 1_000_000  # memory slots / reference patches kept


def zero_linear(dim: int) -> nn.Linear:
    """A ``Linear(dim, 1)`` head that starts at zero (every image logit 0) until it is fitted or trained."""
    head = nn.Linear(dim, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


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
    """Base class. Generic code (scoring, the feature cache, ``--explain``, saving) reads only what is declared here.

    - ``name``, ``Params``: the registry name and the hyper-parameter model (``config.json``'s ``params``).
    - ``feature_kind``: what ``features()`` returns, part of the feature-cache key (``global``, ``patches``, ``tokens``).
    - ``cacheable``: ``features()`` depends only on the frozen backbone and the image, so it may be cached per file.
      A class default that an instance may turn off (MIRROR with LoRA adapters on its backbone).
    - ``cache_variant``: the params under which ``features()`` is cacheable (``aigi features`` builds that variant);
      None when no variant is (a network trained whole, from scratch).
    - ``patch_map_label``: what ``Output.patch_map`` shows, or None when the detector gives no per-patch map.
    - ``native_resolution``: the detector reads the pixels as the generator left them; a model folder whose protocol
      could resize them is refused.
    - ``patch_grid()``: the ``(h, w)`` of the patch map for the backbone's input size (None without a map).
    """

    name: ClassVar[str]
    Params: ClassVar[type[DetectorParams]] = DetectorParams
    feature_kind: ClassVar[str] = "logit"
    cacheable: bool = False
    cache_variant: ClassVar[dict | None] = {}
    patch_map_label: ClassVar[str | None] = None
    native_resolution: ClassVar[bool] = False  # reads pixel traces: its protocol must never resize (resample=false)

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

    def training_logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """What a recipe that trains on pixels fits to the labels: one logit per image [B] by default; a detector
        trained per patch returns [B, h, w] (each patch gets its image's label)."""
        return self.score(self.features(pixels)).logit

    def patch_grid(self) -> tuple[int, int] | None:
        """The patch map's grid; by default the backbone's token grid when the detector has a map."""
        return self.backbone.token_grid() if self.patch_map_label else None

    def measured_patch_grid(self) -> tuple[int, int]:
        """The patch map's grid found by one dry run on a zero image of the preprocessing size (eval mode, batch-norm
        statistics untouched), remembered per size: for detectors whose map is not the backbone's token grid."""
        size = self.backbone.preprocess.size
        grids = self.__dict__.setdefault("_map_grids", {})
        if size not in grids:
            ref = next(self.parameters())
            was_training = self.training
            self.eval()
            with torch.no_grad():
                out = self(torch.zeros(1, 3, size, size, device=ref.device, dtype=ref.dtype))
            self.train(was_training)
            grids[size] = tuple(out.patch_map.shape[-2:])
        return grids[size]

    def weights_metadata(self) -> dict[str, str]:
        """Settings the weights were made with that their shapes do not show (e.g. attention heads, top-k);
        stored in the safetensors header and checked against config.json when a model folder is loaded."""
        return {}

    def settle(self) -> None:
        """Fix what a model folder stores to what the constructor left trainable (:func:`aigi.checkpoints.build_model`
        calls it): a later ``requires_grad_(False)``, e.g. to export, must not drop the adapters from a save."""
        self.__dict__["_frozen_names"] = self._find_frozen()

    def frozen_names(self) -> set[str]:
        """``state_dict`` keys of the frozen backbone: the only tensors a model folder leaves out (see ``settle``)."""
        settled = self.__dict__.get("_frozen_names")  # an empty set is settled too: a backbone trained whole
        return settled if settled is not None else self._find_frozen()

    def _find_frozen(self) -> set[str]:
        """``state_dict`` keys of the frozen backbone: the only tensors a model folder leaves out.

        A backbone tensor is trained, and so saved, when it is a parameter that requires gradients after the
        detector's constructor (LoRA adapters, a stage a detector unfreezes), or a buffer of a module with such a
        parameter (a trained batch norm's running statistics). A detector declares what it trains by what it
        leaves trainable in ``__init__``; recipes do not change ``requires_grad`` later."""
        frozen = set()
        for mod_name, module in self.backbone.named_modules():
            prefix = f"backbone.{mod_name}." if mod_name else "backbone."
            trained_here = any(p.requires_grad for p in module.parameters(recurse=False))
            for name, param in module.named_parameters(recurse=False):
                if not param.requires_grad:
                    frozen.add(prefix + name)
            for name, buf in module.named_buffers(recurse=False):
                if buf is not None and not trained_here and name not in module._non_persistent_buffers_set:
                    frozen.add(prefix + name)
        return frozen

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights a model folder stores: everything but the frozen backbone's pretrained tensors."""
        frozen = self.frozen_names()
        return {k: v for k, v in self.state_dict().items() if k not in frozen}


class PixelTraceDetector(Detector):
    """A network trained from scratch on the pixels as the file holds them, on the ``pixels`` backbone (NPR, the
    local-patch detector): nothing frozen, so nothing cacheable, a protocol that never resizes, and a patch map whose
    grid is found by a dry run."""

    cacheable = False
    cache_variant = None
    native_resolution = True

    def patch_grid(self) -> tuple[int, int]:
        return self.measured_patch_grid()


class PartlyTrainedBackbone:
    """Mixed into a detector that fine-tunes its backbone from one parameter on (the fine-tuned CNN, MiraGe's offline
    variant): everything before stays frozen, batch norms included, and is not stored in the model folder."""

    backbone: Backbone

    def unfreeze_from(self, first: str | None, part: nn.Module | None = None) -> None:
        """Train the backbone's parameters from the first whose name starts with ``first`` (None: all of them);
        ``part``: only within this module of the backbone (e.g. CLIP's vision tower), names relative to it."""
        part = self.backbone if part is None else part
        names = [n for n, _ in part.named_parameters()]
        if first is not None and not any(n.startswith(first) for n in names):
            raise ValueError(f"train_from {first!r} names no backbone parameter (they start {names[0]!r} ...)")
        training = first is None
        for name, p in part.named_parameters():
            training = training or name.startswith(first)
            p.requires_grad_(training)

    def train(self, mode: bool = True):
        """Train mode for what is trained; the frozen part of the backbone (its batch norms) stays in eval mode, so
        its running statistics, which the model folder does not store, never move."""
        super().train(mode)
        for module in self.backbone.modules():
            own = list(module.parameters(recurse=False))
            if own and not any(p.requires_grad for p in own):
                module.eval()
        return self
