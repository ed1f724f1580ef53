"""``mirage-anchors``: MiraGe's discriminative objective on any registered backbone. **Not the published MiraGe**
(that is ``mirage``, :mod:`aigi.detectors.mirage`, which needs a CLIP): this variant keeps the objective and the
memory bank (:mod:`aigi.detectors.discriminative`) and replaces what needs CLIP:

- **anchors**: two learned class embeddings (real, fake) on a backbone without a text tower; on an ``hf_clip``
  backbone, CLIP's frozen text embeddings of ``"a photo of a {class}."`` (no learned context);
- **adaptation**: in place of MiraGe's vision prompts, the backbone's last blocks are fine-tuned (``train_from``, as
  the fine-tuned CNN does) or, on a ViT, LoRA adapters on its attention (``lora_r``); on CLIP only the vision tower
  (``train_from`` names are then relative to it, e.g. ``encoder.layers.20``), never the text tower;
- **projection**: a two-layer MLP head into a ``embed_dim``-d space (SupCon's projection head); on CLIP, a linear head
  started from CLIP's own visual projection, so that training starts from zero-shot CLIP.

The image's logit is ``(cos(f, fake) - cos(f, real)) / temperature``. The model folder records the variant:
``config.json``'s detector is ``mirage-anchors`` and the weights' header says ``variant`` and ``anchors``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from aigi.backbones.base import Backbone
from aigi.detectors import DETECTORS
from aigi.detectors.base import DetectorParams, Output, PartlyTrainedBackbone
from aigi.detectors.discriminative import AnchoredDetector, AnchoredRecipe, AnchoredTrainConfig
from aigi.engine.trainer import RECIPES, BackboneChoice

VARIANT = "mirage-anchors: MiraGe's objective on any backbone, not the published CLIP-prompt method"


class MirageAnchorsParams(DetectorParams):
    embed_dim: int = Field(128, ge=2, le=4096, description="width of the projected features (ignored on hf_clip)")
    temperature: float = Field(
        0.07, gt=0, le=10, description="anchor-logit temperature: the logit is the anchor cosine gap over this"
    )
    train_from: str | None = Field(
        None,
        max_length=200,
        description="fine-tune the backbone from the first parameter whose name starts with this (e.g. "
        "net.stages.3); None: the whole backbone",
    )
    finetune: bool = Field(True, strict=True, description="false: the backbone stays frozen (only the head learns)")
    lora_r: int = Field(0, ge=0, le=1024, description="LoRA rank on a ViT backbone's attention (0: none)")
    lora_alpha: float = Field(16.0, allow_inf_nan=False)
    class_names: tuple[str, str] = Field(("real", "fake"), description="on CLIP: the class words of the text anchors")


@DETECTORS.register("mirage-anchors")
class MirageAnchors(PartlyTrainedBackbone, AnchoredDetector):
    name = "mirage-anchors"
    Params = MirageAnchorsParams
    patch_map_label = "anchor logit per cell"

    def __init__(self, params: MirageAnchorsParams, backbone: Backbone) -> None:
        super().__init__(params, backbone)
        text = getattr(backbone, "text_model", None) is not None
        self.learned_anchors = not text
        if text:
            self.head = nn.Linear(backbone.dim, backbone.embed_dim, bias=False)
            self.head.weight.data.copy_(backbone.visual_projection.weight.data)
            ids, eos = backbone.tokenize([f"a photo of a {name}." for name in params.class_names])
            with torch.no_grad():
                self.register_buffer("text_anchors", F.normalize(backbone.text_features(ids, eos), dim=-1), False)
        else:
            self.head = nn.Sequential(
                nn.Linear(backbone.dim, backbone.dim), nn.ReLU(), nn.Linear(backbone.dim, params.embed_dim)
            )
            self.anchor_weights = nn.Parameter(torch.randn(2, params.embed_dim))
        vision = backbone.model if text else backbone  # on CLIP only the vision tower adapts; the text side is frozen
        if params.lora_r:
            from aigi.detectors.mirror import add_lora

            add_lora(vision, params.lora_r, params.lora_alpha, backbone.lora_targets())
        elif params.finetune:
            self.unfreeze_from(params.train_from, vision)

    def weights_metadata(self) -> dict[str, str]:
        return {"variant": VARIANT, "anchors": "learned" if self.learned_anchors else "clip text"}

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(pixels).cls.float()), dim=-1)

    def anchors(self) -> torch.Tensor:
        return F.normalize(self.anchor_weights, dim=-1) if self.learned_anchors else self.text_anchors

    def scale(self) -> torch.Tensor:
        return torch.tensor(1.0 / self.params.temperature)

    def forward(self, pixels: torch.Tensor) -> Output:
        tokens = self.backbone(pixels)
        h, w = tokens.grid
        anchors = self.anchors()
        cells = self.anchor_logits(F.normalize(self.head(tokens.patches.float()), dim=-1), anchors)
        logit = self.anchor_logits(F.normalize(self.head(tokens.cls.float()), dim=-1), anchors)
        return Output(logit=logit, patch_map=cells.reshape(-1, h, w))


# -- training recipe -------------------------------------------------------------------------------------------------
class MirageAnchorsTrainConfig(AnchoredTrainConfig, BackboneChoice):
    """The fine-tuned CNN's recipe (data, augmentation, balanced epochs, AdamW, schedule) with MiraGe's objective in
    place of cross-entropy, so the two compare on the objective alone."""

    lr: float = Field(1e-4, gt=0, description="peak learning rate of the backbone (as the fine-tuned CNN)")
    head_lr_scale: float = Field(10.0, gt=0, description="the head and the anchors learn this many times faster")


@RECIPES.register("mirage-anchors")
class MirageAnchorsRecipe(AnchoredRecipe):
    """MiraGe's objective and memory bank on any backbone (not the published CLIP-prompt method)."""

    name = "mirage-anchors"
    detector = "mirage-anchors"
    Config = MirageAnchorsTrainConfig
    param_options = ("train_from", "finetune", "lora_r", "embed_dim", "temperature")

    def lr_scales(self) -> dict[str, float]:
        return {"head.": self.config.head_lr_scale, "anchor_weights": self.config.head_lr_scale}
