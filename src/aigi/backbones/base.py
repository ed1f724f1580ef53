"""The one contract every backbone meets.

A backbone maps normalised pixels ``[B, 3, H, W]`` to :class:`Tokens`: patch tokens ``[B, N, D]``
(``N = h * w``, row-major over the token grid), one global token ``[B, D]`` and the grid ``(h, w)``.
It also declares the preprocessing it expects (:class:`Preprocess`), so the data pipeline never
has to guess sizes or normalisation constants.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

# Largest input side a config may ask for. Activation memory grows with the side squared (a ViT's attention with its
# fourth power): EfficientNet-Lite0 peaked at 4.2 GB for one 4096-pixel image, so 4096 let a model folder exhaust
# memory within bounds. At 1024 (DINOv2 uses 518, SigLIP 384-512) one image stays near a quarter of a GB.
MAX_IMAGE_SIDE = 1024
ALLOW_DOWNLOAD_VAR = "AIGI_ALLOW_DOWNLOAD"  # set to 1 to let a model folder's backbone be downloaded
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}  # as huggingface_hub reads its switches


def downloads_allowed(allow: bool | None = None) -> bool:
    """Whether a backbone may be downloaded: ``allow`` when given, else ``AIGI_ALLOW_DOWNLOAD`` (off by default)."""
    if allow is not None:
        return allow
    return os.environ.get(ALLOW_DOWNLOAD_VAR, "").strip().upper() in TRUE_VALUES


@dataclass
class Tokens:
    patches: torch.Tensor  # [B, N, D]
    cls: torch.Tensor  # [B, D]
    grid: tuple[int, int]  # (h, w) with h * w == N

    def __post_init__(self) -> None:
        h, w = self.grid
        if self.patches.shape[1] != h * w:
            raise ValueError(f"patch tokens {tuple(self.patches.shape)} do not fill the grid {self.grid}")


Finite = Annotated[float, Field(allow_inf_nan=False)]


class Preprocess(BaseModel):
    """What a backbone expects of its input: square side and normalisation."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(224, ge=1, le=MAX_IMAGE_SIDE)
    mean: tuple[Finite, Finite, Finite] = (0.485, 0.456, 0.406)
    std: tuple[Finite, Finite, Finite] = (0.229, 0.224, 0.225)

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(s > 0 for s in v):
            raise ValueError(f"std must be positive, got {v}")
        return v


class BackboneSpec(BaseModel):
    """Where a backbone comes from; stored in every model's ``config.json``.

    ``family`` picks the implementation (``efficientnet_lite0`` or ``hf_vit``); ``source`` is a
    Hugging Face model id or a local folder for the transformers family, ignored for packaged weights.
    """

    model_config = ConfigDict(extra="forbid")

    family: str = "efficientnet_lite0"
    source: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    preprocess: Preprocess | None = None  # None: the backbone's own default

    def key(self) -> str:
        """A stable text identifying the backbone's features (for the feature cache)."""
        return self.model_dump_json()


class Backbone(nn.Module):
    """Base class: subclasses set ``dim``, ``preprocess`` and implement ``forward``."""

    dim: int
    preprocess: Preprocess

    def forward(self, pixels: torch.Tensor) -> Tokens:  # pragma: no cover - abstract
        raise NotImplementedError

    def token_grid(self) -> tuple[int, int]:
        """The token grid ``(h, w)`` for an input of the preprocessing size: a constant of the backbone, found by one
        dry run in eval mode (batch-norm statistics untouched) and remembered per input size."""
        size = self.preprocess.size
        grids = self.__dict__.setdefault("_token_grids", {})
        if size not in grids:
            ref = next(self.parameters(), None)
            x = torch.zeros(1, 3, size, size, device=ref.device if ref is not None else "cpu")
            was_training = self.training
            self.eval()
            with torch.no_grad():
                grids[size] = tuple(self(x if ref is None else x.to(ref.dtype)).grid)
            self.train(was_training)
        return grids[size]

    def lora_targets(self) -> list[str] | str:
        """Module names (list) or a regex (str) for peft's ``target_modules``: where LoRA adapters go."""
        raise NotImplementedError(f"{type(self).__name__} does not name LoRA targets")

    def freeze(self) -> "Backbone":
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        return self
