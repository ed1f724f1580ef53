"""MIRROR (arXiv 2602.02222): compare an image with its "ideal reference" read back from a memory of real images.

Phase 1 (:mod:`aigi.engine.train_mirror`) learns :class:`~aigi.detectors.memory_bank.MemoryBank` on real images
only. Phase 2 (this detector) freezes the memory, adds LoRA adapters to the backbone (peft) and trains a
dual-branch head:

- perplexity evidence ``[mean max attention weight, mean attention entropy]`` -> Linear(2, 64) ReLU Dropout;
- residual ``mean over tokens (tokens - reconstruction)`` -> Linear(D, 512) ReLU Dropout Linear(512, 256);
- ``concat(perplexity, residual, global token)`` -> Linear(64 + 256 + D, 512) ReLU Dropout Linear(512, 2).

The two class logits become aigi's single logit ``logit_fake - logit_real`` (so ``sigmoid`` of it is the
softmax probability of "generated"). The per-patch map is the residual norm ``|| token - reconstruction ||``.
Module names follow the paper's code, which keeps ``aigi convert mirror`` a renaming.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field, model_validator
from torch import nn

from aigi.backbones.base import Backbone
from aigi.detectors import DETECTORS
from aigi.detectors.base import MAX_SLOTS, MAX_WIDTH, Detector, DetectorParams, Output
from aigi.detectors.memory_bank import MemoryBank
from aigi.errors import ConfigError


class MirrorParams(DetectorParams):
    slots: int = Field(4096, ge=1, le=MAX_SLOTS, description="memory slots K")
    heads: int = Field(8, ge=1, le=1024)
    top_k: int = Field(128, ge=1, description="attention entries kept per head and token")
    perplexity_dim: int = Field(64, ge=1, le=MAX_WIDTH)
    residual_hidden: int = Field(512, ge=1, le=MAX_WIDTH)
    residual_dim: int = Field(256, ge=1, le=MAX_WIDTH)
    hidden: int = Field(512, ge=1, le=MAX_WIDTH)
    dropout: float = Field(0.3, ge=0.0, lt=1.0)
    lora_r: int = Field(8, ge=0, le=1024, description="LoRA rank on the backbone; 0: no LoRA (backbone fully frozen)")
    lora_alpha: float = Field(16.0, allow_inf_nan=False)
    lora_targets: list[str] | str | None = Field(
        None,
        description="peft target_modules; None: the backbone's attention q/k/v (ViT) or pointwise convolutions (CNN)",
    )
    chunk_rows: int = Field(4096, ge=1, le=1 << 20, description="token rows per memory read (bounds memory use)")

    @model_validator(mode="after")
    def _top_k_within_slots(self) -> "MirrorParams":
        if self.top_k > self.slots:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed slots ({self.slots})")
        return self


def add_lora(backbone: Backbone, r: int, alpha: float, targets: list[str] | str | None) -> list[str]:
    """Inject LoRA adapters into ``backbone`` in place (peft); returns the adapted module names."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = targets if targets is not None else backbone.lora_targets()
    inject_adapter_in_model(LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets), backbone)
    names = sorted({k.split(".lora_A")[0] for k, _ in backbone.named_parameters() if ".lora_A." in k})
    if not names:
        raise ConfigError(f"LoRA targets {targets!r} match no module of the {type(backbone).__name__} backbone")
    return names


@DETECTORS.register("mirror")
class Mirror(Detector):
    name = "mirror"
    Params = MirrorParams
    feature_kind = "tokens"
    patch_map_label = "residual norm per patch"
    cache_variant = {"lora_r": 0}  # without LoRA the tokens are the frozen backbone's, so they can be cached

    def __init__(self, params: MirrorParams, backbone: Backbone) -> None:
        super().__init__(params, backbone)
        d = backbone.dim
        self.memory_bank = MemoryBank(d, params.slots, params.heads, params.top_k, params.chunk_rows)
        self.memory_bank.requires_grad_(False)  # Phase 1 trains it; here it is a fixed reference
        p = params.dropout
        self.perplexity_mlp = nn.Sequential(nn.Linear(2, params.perplexity_dim), nn.ReLU(), nn.Dropout(p))
        self.residual_mlp = nn.Sequential(
            nn.Linear(d, params.residual_hidden),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(params.residual_hidden, params.residual_dim),
        )
        self.head = nn.Sequential(
            nn.Linear(params.perplexity_dim + params.residual_dim + d, params.hidden),
            nn.ReLU(),
            nn.Dropout(p),
            nn.Linear(params.hidden, 2),
        )
        self.lora_modules = (
            add_lora(backbone, params.lora_r, params.lora_alpha, params.lora_targets) if params.lora_r > 0 else []
        )
        # With LoRA the tokens depend on trained weights, so they cannot be cached per image.
        self.cacheable = not self.lora_modules

    def train(self, mode: bool = True) -> "Mirror":
        super().train(mode)
        self.backbone.eval()  # batch-norm statistics and backbone dropout stay as pretrained; LoRA has no dropout
        self.memory_bank.eval()
        return self

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + N, D]``: the global token, then the patch tokens."""
        t = self.backbone(pixels)
        return torch.cat([t.cls.unsqueeze(1), t.patches], 1)

    def score(self, features: torch.Tensor) -> Output:
        logits, recall, tokens = self.classify(features)
        residual = (tokens - recall.recon.to(tokens.dtype)).norm(dim=-1)  # [B, N]
        return Output(
            logit=(logits[:, 1] - logits[:, 0]).float(), patch_map=_as_grid(residual, self.backbone.token_grid())
        )

    def classify(self, features: torch.Tensor):
        """Two-class logits [B, 2], the memory read-out and the patch tokens (for the training loss)."""
        cls, tokens = features[:, 0], features[:, 1:]
        recall = self.memory_bank(tokens)
        v_per = self.perplexity_mlp(recall.perplexity().to(tokens.dtype))
        v_res = self.residual_mlp((tokens - recall.recon.to(tokens.dtype)).mean(1))
        logits = self.head(torch.cat([v_per, v_res, cls], -1))
        return logits, recall, tokens

    def weights_metadata(self) -> dict[str, str]:
        return self.memory_bank.metadata("memory_bank.")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def _as_grid(values: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor | None:
    """``[B, N] -> [B, h, w]`` on the backbone's grid; a square grid for token sets of another size; else None."""
    n = values.shape[1]
    if grid[0] * grid[1] != n:
        side = math.isqrt(n)
        if side * side != n:
            return None
        grid = (side, side)
    return values.reshape(values.shape[0], *grid)
