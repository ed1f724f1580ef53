"""Tiny, randomly initialised backbones shared by the tests: one place for the configs every test file builds on."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

from aigi.backbones import BackboneSpec, Preprocess
from aigi.data.transforms import EvalProtocol

TINY_VIT = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
EFFNET_STAGE4 = {"feature_level": "stage4", "pretrained": False}  # 112-d tokens, a 4x4 grid at 64 px
SMALL = Preprocess(size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
EFFNET_SPEC = BackboneSpec(options=dict(EFFNET_STAGE4), preprocess=SMALL)  # random weights: no package weights read
SMALL_PROTOCOL = EvalProtocol(max_short_side=None, crop=64)

# kind -> (config class, model class, extra config, patch size, register tokens)
VIT_KINDS = {
    "dinov2": ("Dinov2Config", "Dinov2Model", dict(image_size=56), 14, 0),
    "dinov2_with_registers": (
        "Dinov2WithRegistersConfig",
        "Dinov2WithRegistersModel",
        dict(image_size=56, num_register_tokens=4),
        14,
        4,
    ),
    "dinov3_vit": ("DINOv3ViTConfig", "DINOv3ViTModel", dict(image_size=32, num_register_tokens=4), 8, 4),
    "clip_vision_model": ("CLIPVisionConfig", "CLIPVisionModel", dict(image_size=32), 8, 0),
    "siglip_vision_model": ("SiglipVisionConfig", "SiglipVisionModel", dict(image_size=32), 8, 0),
    "siglip_no_head": ("SiglipVisionConfig", "SiglipVisionModel", dict(image_size=32, vision_use_head=False), 8, 0),
}


def tiny_vit(kind: str, seed: int = 0) -> tuple[torch.nn.Module, int, int]:
    """A tiny random transformers vision model of one family, its patch size and its number of register tokens."""
    config_cls, model_cls, extra, patch, registers = VIT_KINDS[kind]
    torch.manual_seed(seed)
    config = getattr(transformers, config_cls)(**TINY_VIT, patch_size=patch, **extra)
    return getattr(transformers, model_cls)(config).eval(), patch, registers


def tiny_vit_folder(root: Path, kind: str = "dinov2") -> Path:
    """A tiny random model saved as a local Hugging Face folder (what `--backbone-source FOLDER` reads)."""
    folder = Path(root) / f"tiny-{kind}"
    if not (folder / "config.json").is_file():
        tiny_vit(kind)[0].save_pretrained(folder)
    return folder


def tiny_clip_tokenizer(legacy: bool = False) -> transformers.CLIPTokenizer:
    """A character-level CLIP tokenizer (lower-case letters and a little punctuation; no merges), built in memory.
    ``legacy``: the end token has the largest id, as in OpenAI's CLIPs, whose configs say ``eos_token_id`` 2."""
    chars = list("abcdefghijklmnopqrstuvwxyz.,!?'-")
    vocab = {"<|startoftext|>": 0} if legacy else {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: i + len(vocab) for i, c in enumerate(chars)})
    vocab.update({c + "</w>": i + len(vocab) for i, c in enumerate(chars)})
    if legacy:
        vocab["<|endoftext|>"] = len(vocab)
    return transformers.CLIPTokenizer(vocab=vocab, merges=[])


def tiny_clip(seed: int = 0, legacy: bool = False) -> tuple[transformers.CLIPModel, transformers.CLIPTokenizer]:
    """A tiny random whole CLIP (both towers, 3 layers each) and its tokenizer (``legacy``: OpenAI's end-token ids)."""
    tokenizer = tiny_clip_tokenizer(legacy)
    torch.manual_seed(seed)
    text = dict(TINY_VIT, num_hidden_layers=3, vocab_size=len(tokenizer), max_position_embeddings=48)
    end = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    text.update(bos_token_id=0, eos_token_id=2 if legacy else end, pad_token_id=end)
    vision = dict(TINY_VIT, num_hidden_layers=3, hidden_size=48, intermediate_size=96, image_size=32, patch_size=8)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=24)
    return transformers.CLIPModel(config).eval(), tokenizer


def tiny_clip_folder(root: Path, legacy: bool = False) -> Path:
    """A tiny random whole CLIP saved with its tokenizer as a local Hugging Face folder (an ``hf_clip`` source)."""
    folder = Path(root) / ("tiny-clip-legacy" if legacy else "tiny-clip")
    if not (folder / "config.json").is_file():
        model, tokenizer = tiny_clip(legacy=legacy)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


VLM_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def tiny_vlm_folder(root: Path, seed: int = 0) -> Path:
    """A tiny random LLaVA (CLIP vision tower + Llama text model, 28-pixel images) with a character-level tokenizer
    and a chat template, saved as a Hugging Face folder that AutoProcessor / AutoModelForImageTextToText load."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:;!?'\"{}[]()<>/_-=+*\n")
    vocab = {c: i for i, c in enumerate(["<pad>", "<s>", "</s>", "<image>", *chars])}
    char_level = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    char_level.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=char_level, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<pad>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    images = transformers.CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    processor = transformers.LlavaProcessor(
        image_processor=images,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VLM_CHAT_TEMPLATE,
    )
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = transformers.LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", image_size=28, patch_size=14, **small),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), num_key_value_heads=1, **small),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    folder = Path(root) / "tiny-vlm"
    transformers.LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
