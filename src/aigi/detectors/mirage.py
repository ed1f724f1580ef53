"""MiraGe (Shi, Lu, Ye, Zhang, Fang, "MiraGe: Multimodal Discriminative Representation Learning for Generalizable
AI-Generated Image Detection", ACM MM 2025, arXiv 2508.01525) on a Hugging Face CLIP (``hf_clip`` backbone; the
paper's is ``openai/clip-vit-large-patch14``).

Both CLIP towers stay frozen. What learns is multimodal prompts coupled as in MaPLe (Khattak et al., CVPR 2023):

- text: ``n_ctx`` context vectors in place of the first ``n_ctx`` tokens of ``"{ctx_init} {class}."`` (started from
  those tokens' embeddings), and before each of text layers 1 .. ``prompt_depth - 1`` a fresh set of ``n_ctx``
  vectors in the same positions (started normal, std 0.02);
- vision: ``n_ctx`` prompt tokens appended after the patch tokens before the first layer and replaced before layers
  1 .. ``prompt_depth - 1``, each set a linear projection (text width -> vision width) of the text set of the same
  depth: the two towers' prompts are coupled, not independent.

The class prompts through the prompted text tower are the anchors (real, fake); the image feature is the prompted
vision tower's CLS through CLIP's visual projection; the objective is :mod:`aigi.detectors.discriminative`'s (anchor
alignment, compactness and separation, memory bank). The logit is ``CLIP's logit scale * (cos(f, fake) - cos(f,
real))``. The heatmap is the same gap for each patch token through the visual projection (patch-to-anchor
similarity).

The paper's method section could not be read here (only its abstract), so the prompt settings and the optimiser are
MaPLe's (``n_ctx`` 2, ``ctx_init`` "a photo of a", depth 9, SGD lr 0.0035 with momentum 0.9, weight decay 5e-4, 5
epochs); where this differs from MaPLe's recipe: batch 32 (MaPLe trains few-shot with batch 4), a linear warm-up over
the first epoch (MaPLe holds 1e-5 for one epoch) and a cosine to 1e-6 (MaPLe: to 0). The class words ``real``/``fake``
follow the abstract's real/fake anchors. SigLIP is refused by the ``hf_clip``
backbone (no CLS token for the vision prompts, a sigmoid objective); ``mirage-anchors`` runs on any backbone.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from aigi.backbones.base import Backbone
from aigi.detectors import DETECTORS
from aigi.detectors.base import DetectorParams, Output
from aigi.detectors.discriminative import AnchoredDetector, AnchoredRecipe, AnchoredTrainConfig
from aigi.engine.trainer import RECIPES, BackboneChoice

PAPER_CLIP = "openai/clip-vit-large-patch14"
MAX_LOGIT_SCALE = 100.0  # CLIP clamps its learned temperature here


class MirageParams(DetectorParams):
    n_ctx: int = Field(2, ge=1, le=16, description="learnable context tokens per prompt layer (MaPLe: 2)")
    prompt_depth: int = Field(9, ge=1, le=64, description="transformer layers that receive prompts (MaPLe: 9)")
    ctx_init: str = Field(
        "a photo of a", max_length=200, description="the prompt's start; its first n_ctx tokens learn"
    )
    class_names: tuple[str, str] = Field(("real", "fake"), description="class words of the two anchors (real, fake)")


@DETECTORS.register("mirage")
class Mirage(AnchoredDetector):
    name = "mirage"
    Params = MirageParams
    patch_map_label = "fake-minus-real anchor similarity per patch"

    def __init__(self, params: MirageParams, backbone: Backbone) -> None:
        super().__init__(params, backbone)
        if getattr(backbone, "text_model", None) is None:
            raise ValueError(
                "mirage needs a whole CLIP (backbone family hf_clip, e.g. " + PAPER_CLIP + "); "
                "on a backbone without a text tower use mirage-anchors"
            )
        depth, n = params.prompt_depth, params.n_ctx
        layers = min(len(backbone.text_model.encoder.layers), len(backbone.model.encoder.layers))
        if depth > layers:
            raise ValueError(f"prompt_depth {depth} exceeds the {layers} layers of this CLIP")
        ids, eos = backbone.tokenize([f"{params.ctx_init} {name}." for name in params.class_names])
        if int(backbone.tokenize([params.ctx_init])[1][0]) - 1 < n:  # the context must not replace a class word
            raise ValueError(f"ctx_init {params.ctx_init!r} has fewer than n_ctx={n} tokens")
        self.register_buffer("prompt_ids", ids, False)  # from the tokenizer at every load: not stored
        self.register_buffer("prompt_eos", eos, False)
        with torch.no_grad():
            embedding = backbone.text_model.embeddings.token_embedding
            start = embedding(ids[:1, 1 : 1 + n].to(embedding.weight.device))[0]
        self.ctx = nn.Parameter(start.detach().float().clone())
        self.deep_ctx = nn.ParameterList(
            [nn.Parameter(torch.randn(n, backbone.text_dim) * 0.02) for _ in range(depth - 1)]
        )
        self.vision_proj = nn.ModuleList([nn.Linear(backbone.text_dim, backbone.dim) for _ in range(depth)])

    def vision_prompts(self) -> list[torch.Tensor]:
        return [proj(ctx) for proj, ctx in zip(self.vision_proj, [self.ctx, *self.deep_ctx])]

    def anchors(self) -> torch.Tensor:
        text = self.backbone.text_features(self.prompt_ids, self.prompt_eos, self.ctx, list(self.deep_ctx))
        return F.normalize(text, dim=-1)

    def scale(self) -> torch.Tensor:
        return self.backbone.logit_scale.detach().float().exp().clamp(max=MAX_LOGIT_SCALE)

    def _project(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone.visual_projection(tokens.to(self.backbone.visual_projection.weight)), dim=-1)

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        cls_token, _ = self.backbone.prompted_vision(pixels, self.vision_prompts())
        return self._project(cls_token).float()

    def forward(self, pixels: torch.Tensor) -> Output:
        cls_token, patches = self.backbone.prompted_vision(pixels, self.vision_prompts())
        h, w = pixels.shape[-2] // self.backbone.patch_size, pixels.shape[-1] // self.backbone.patch_size
        anchors = self.anchors()
        cells = self.anchor_logits(self._project(patches).float(), anchors).reshape(-1, h, w)
        return Output(logit=self.anchor_logits(self._project(cls_token).float(), anchors), patch_map=cells)


# -- training recipe -------------------------------------------------------------------------------------------------
class MirageTrainConfig(AnchoredTrainConfig, BackboneChoice):
    """MaPLe's optimiser and schedule (see the module docstring), the toolkit's data pipeline and augmentation."""

    backbone: str = Field("hf_clip", description="backbone family: hf_clip (a whole CLIP, both towers)")
    backbone_source: str | None = Field(PAPER_CLIP, description="CLIP's Hugging Face model id or local folder")
    optimizer: Literal["adamw", "sgd"] = Field("sgd", description="sgd with momentum 0.9 (MaPLe's), or adamw")
    lr: float = Field(0.0035, gt=0, description="peak learning rate (MaPLe: SGD 0.0035)")
    epochs: int = Field(5, ge=1, description="passes over the training images (MaPLe: 5)")
    warmup_epochs: float = Field(1.0, ge=0, description="linear warm-up, in epochs (MaPLe: one)")
    weight_decay: float = Field(5e-4, ge=0, description="weight decay (MaPLe/Dassl: 5e-4)")


@RECIPES.register("mirage")
class MirageRecipe(AnchoredRecipe):
    """MiraGe: MaPLe prompts in both frozen CLIP towers, trained with the discriminative objective."""

    name = "mirage"
    detector = "mirage"
    Config = MirageTrainConfig
    param_options = ("n_ctx", "prompt_depth", "ctx_init")
    text_anchors = True
