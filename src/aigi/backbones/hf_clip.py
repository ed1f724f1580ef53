"""A whole CLIP from Hugging Face ``transformers``: the vision tower (what every detector reads, exactly as
``hf_vit`` gives it) plus the text tower, both projections into the joint space and the tokenizer, for detectors that
compare images with text (MiraGe's class anchors, :mod:`aigi.detectors.mirage`).

Only ``model_type`` ``clip`` is taken. SigLIP also has a text tower, but its image feature comes from an
attention-pooling head over the patches (no CLS token that MaPLe's prompted tower ends in) and it was trained with a
sigmoid, not a softmax, image-text objective; it is refused with a line that says so.

The towers' layers are called one by one (to splice prompts in): transformers 5 layers take ``(hidden, mask)`` and
return a tensor, 4.x layers ``(hidden, attention_mask, causal_attention_mask)`` and return a tuple; both are handled
(:func:`run_layer`), the 4.x path untested here.

The tokenizer is read from the same source (its vocabulary and merges files: data, no code is run). The text tower
works on token embeddings, so detectors can splice learnable context into a prompt (:meth:`text_features`).
"""

from __future__ import annotations

import inspect
from dataclasses import replace

import torch
from torch import nn

from aigi.backbones.base import BackboneSpec, Preprocess
from aigi.backbones.hf_vit import FAMILIES, BackboneLoadError, HFViTBackbone, _folder_norm, _one_line, load_pretrained
from aigi.errors import ConfigError

WHOLE_CLIP = replace(FAMILIES["clip"], model_class="CLIPModel")  # both towers, not CLIPVisionModel


def _clip_only(config, source: str):
    if config.model_type != "clip":
        why = " (SigLIP pools patches with an attention head, not a CLS token, and has a sigmoid objective)"
        why = why if "siglip" in config.model_type else ""
        raise ConfigError(
            f"backbone '{source}' has model_type {config.model_type!r}; hf_clip needs a whole CLIP (model_type "
            f"'clip', e.g. openai/clip-vit-large-patch14){why}"
        )
    return WHOLE_CLIP


class HFCLIPBackbone(HFViTBackbone):
    """CLIP's vision tower as a backbone, with the text tower, projections, logit scale and tokenizer beside it."""

    def __init__(self, clip: nn.Module, tokenizer, preprocess: Preprocess | None = None) -> None:
        super().__init__(clip.vision_model, preprocess)
        self.text_model = clip.text_model
        self.text_projection = clip.text_projection
        self.visual_projection = clip.visual_projection
        self.logit_scale = clip.logit_scale  # CLIP's learned temperature, as log(scale)
        self.embed_dim = clip.config.projection_dim
        self.text_dim = clip.config.text_config.hidden_size
        self.eos_token_id = clip.config.text_config.eos_token_id
        self.tokenizer = tokenizer

    @classmethod
    def from_spec(cls, spec: BackboneSpec, allow_download: bool = False) -> "HFCLIPBackbone":
        clip, tokenizer, where = load_pretrained(
            spec, allow_download, lambda c: _clip_only(c, spec.source), tokenizer=True
        )
        try:
            backbone = cls(clip.eval(), tokenizer)
            norm = _folder_norm(where)
            if norm is not None:
                backbone.preprocess = Preprocess(size=backbone.preprocess.size, mean=norm[0], std=norm[1])
            return backbone
        except (ValueError, TypeError) as err:
            raise BackboneLoadError(f"could not load backbone '{spec.source}': {_one_line(err)}") from None

    def tokenize(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids ``[T, L]`` (padded to the longest) and each text's end-of-text position ``[T]``, the token
        CLIP pools, found as transformers' CLIPTextModel finds it."""
        ids = torch.as_tensor(self.tokenizer(texts, padding=True)["input_ids"], dtype=torch.long, device="cpu")
        if self.eos_token_id == 2:  # configs written before transformers#24773: the end token has the largest id
            eos = ids.argmax(-1)
        else:
            eos = (ids == self.eos_token_id).int().argmax(-1)
        return ids, eos

    def text_features(
        self,
        ids: torch.Tensor,
        eos: torch.Tensor,
        context: torch.Tensor | None = None,
        deep_context: list[torch.Tensor] | tuple = (),
    ) -> torch.Tensor:
        """Projected text features ``[T, embed_dim]`` (not normalised) of token ids, with ``context`` ``[n, text_dim]``
        in place of the ``n`` tokens after the start token (MaPLe's learnable context) and, before text layer
        ``i + 1``, ``deep_context[i]`` in place of the same positions."""
        tower = self.text_model
        if deep_context and context is None:
            raise ValueError("deep text prompts need the first layer's context too")
        if ids.shape[1] > tower.embeddings.position_embedding.num_embeddings:
            raise ValueError(
                f"a prompt of {ids.shape[1]} tokens exceeds this CLIP's "
                f"{tower.embeddings.position_embedding.num_embeddings} text positions"
            )
        ids = ids.to(tower.embeddings.token_embedding.weight.device)
        x = tower.embeddings.token_embedding(ids)
        n = 0 if context is None else context.shape[0]
        if n:
            x = torch.cat([x[:, :1], context.to(x.dtype).expand(len(ids), -1, -1), x[:, 1 + n :]], 1)
        positions = tower.embeddings.position_ids[:, : ids.shape[1]]
        x = x + tower.embeddings.position_embedding(positions)
        mask = _causal_mask(ids.shape[1], x.dtype, x.device)
        for i, layer in enumerate(tower.encoder.layers):
            if 1 <= i <= len(deep_context):
                x = torch.cat([x[:, :1], deep_context[i - 1].to(x.dtype).expand(len(ids), -1, -1), x[:, 1 + n :]], 1)
            x = run_layer(layer, x, mask)
        x = tower.final_layer_norm(x)
        return self.text_projection(x[torch.arange(len(ids), device=x.device), eos.to(x.device)]).float()

    def prompted_vision(
        self, pixels: torch.Tensor, prompts: list[torch.Tensor] | tuple = ()
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The vision tower with MaPLe's deep prompts: ``prompts[0]`` ``[n, dim]`` appended after the patch tokens
        before the first layer, ``prompts[i]`` replacing them before layer ``i``. Returns the CLS token and the patch
        tokens after ``post_layernorm`` (``[B, dim]``, ``[B, N, dim]``); no prompts: the plain tower."""
        vision = self.model
        dtype = next(vision.parameters()).dtype
        x = vision.embeddings(pixels.to(dtype), interpolate_pos_encoding=True)
        tokens = x.shape[1]
        if prompts:
            x = torch.cat([x, prompts[0].to(dtype).expand(len(x), -1, -1)], 1)
        x = vision.pre_layrnorm(x)
        for i, layer in enumerate(vision.encoder.layers):
            if 1 <= i < len(prompts):
                x = torch.cat([x[:, :tokens], prompts[i].to(dtype).expand(len(x), -1, -1)], 1)
            x = run_layer(layer, x, None)
        x = vision.post_layernorm(x[:, :tokens])
        return x[:, 0].float(), x[:, 1:].float()


def run_layer(layer: nn.Module, x: torch.Tensor, causal_mask: torch.Tensor | None) -> torch.Tensor:
    """One CLIP encoder layer on ``x`` with an optional causal mask, in transformers 5 or 4.x (see the docstring)."""
    if "causal_attention_mask" in inspect.signature(layer.forward).parameters:  # transformers 4.x
        out = layer(x, None, causal_mask)
    else:
        out = layer(x, causal_mask)
    return out[0] if isinstance(out, tuple) else out


def _causal_mask(length: int, dtype: torch.dtype, device) -> torch.Tensor:
    """The text tower's additive causal mask ``[1, 1, L, L]``: each token sees itself and the ones before it."""
    blocked = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
    return torch.zeros(length, length, dtype=dtype, device=device).masked_fill(blocked, torch.finfo(dtype).min)[
        None, None
    ]
