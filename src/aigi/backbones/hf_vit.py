"""Vision transformers from Hugging Face ``transformers``: DINOv2 (with or without registers), DINOv3 ViT, and the
vision towers of CLIP and SigLIP, from a hub id or a local folder.

Token layout of ``last_hidden_state`` (transformers 5.x): ``[CLS, registers..., patches...]`` for the DINO
families, ``[CLS, patches...]`` for CLIP, ``[patches...]`` for SigLIP. Register tokens are dropped.

- DINO: ``last_hidden_state`` is already after the final layer norm; the global token is that CLS.
- CLIP: ``last_hidden_state`` is *before* ``post_layernorm``, which the model applies to CLS only
  (``pooler_output``); we apply ``post_layernorm`` to the patch tokens as well, so both are normalised alike.
- SigLIP: ``last_hidden_state`` is after ``post_layernorm``; the global token is the attention-pooling head's
  output (``pooler_output``) when the model has a head, else the mean of the patch tokens.

Options (``spec.options``): ``dtype`` (``float32`` default, ``bfloat16``, ``float16``). Outputs are float32.

A hub id is local-only unless downloads are allowed (``from_spec(spec, allow_download=True)``: training from a source
the user typed; a model folder's spec only with ``AIGI_ALLOW_DOWNLOAD=1``): then it must be in the local Hugging Face
cache and nothing touches the network. When downloads are allowed it is checked before anything is downloaded, so
that a machine without the Hub fails at once with one line (:class:`BackboneLoadError`) instead of huggingface_hub's
retries: with ``HF_HUB_OFFLINE``/``TRANSFORMERS_OFFLINE`` set the id must be in the local cache; otherwise the Hub is
asked once, with a short timeout, and when it cannot be reached the cached copy is used, or, with none, the load fails.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from huggingface_hub import constants as hub_constants
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.utils import get_session

from aigi.backbones.base import ALLOW_DOWNLOAD_VAR, TRUE_VALUES, Backbone, BackboneSpec, Preprocess, Tokens
from aigi.errors import ConfigError, ModelLoadError
from aigi.io import read_json

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
OPENAI_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
PROBE_TIMEOUT_S = 5.0  # how long to wait for the Hub to answer before calling it unreachable


class BackboneLoadError(ModelLoadError, OSError):
    """A backbone that cannot be loaded (no such folder, not in the cache while offline, Hub unreachable, bad files).

    A :class:`~aigi.errors.ModelLoadError`, which the CLI prints as one ``error:`` line, and an ``OSError``, the type
    these failures had before."""


def _one_line(err: BaseException) -> str:
    """An exception's message on one line (transformers' messages span several)."""
    return " ".join(str(err).split()) or type(err).__name__


def _offline_var() -> str | None:
    """The variable that puts huggingface_hub in offline mode, read now (the library reads it once, at import)."""
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in TRUE_VALUES:
            return var
    return OFFLINE_VARS[0] if getattr(hub_constants, "HF_HUB_OFFLINE", False) else None


def _in_cache(repo_id: str) -> bool:
    """Whether the local Hugging Face cache holds the model's ``config.json``."""
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id that cannot be a cache entry
        return False


def _hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or hub_constants.ENDPOINT).rstrip("/")


def _unreachable(endpoint: str) -> str | None:
    """Why the Hub at ``endpoint`` cannot be reached with one request, or None when it answers (any HTTP status)."""
    try:
        get_session().head(endpoint, timeout=PROBE_TIMEOUT_S)
    except Exception as err:  # connection refused, no DNS, timeout, proxy or TLS failure
        if "timeout" in type(err).__name__.lower():
            return f"no answer within {PROBE_TIMEOUT_S:g} s"
        return _one_line(err)
    return None


def _check_hub_id(source: str, allow_download: bool) -> bool:
    """Fail fast, with one line, for a hub id that cannot be loaded without the Hub; True: load from the cache only.

    Without ``allow_download`` the Hub is never asked. With it, huggingface_hub would otherwise retry an unreachable
    Hub for about half a minute, logging each try."""
    cached = _in_cache(source)
    if not allow_download:
        if cached:
            return True
        raise BackboneLoadError(
            f"could not load backbone '{source}': not a local folder and not in the local Hugging Face cache, and "
            f"downloads are off for a model's backbone; allow them with --allow-download or {ALLOW_DOWNLOAD_VAR}=1"
        )
    var = _offline_var()
    if var:
        if cached:
            return True
        raise BackboneLoadError(
            f"could not load backbone '{source}': not in the local Hugging Face cache and offline mode is on ({var} is set); "
            f"pass a local model folder, or unset {var} to download it"
        )
    endpoint = _hub_endpoint()
    reason = _unreachable(endpoint)
    if reason is None:
        return False
    if cached:
        return True  # the Hub is out of reach: use the cached copy, as offline mode would
    raise BackboneLoadError(
        f"could not load backbone '{source}': cannot reach the Hugging Face Hub at {endpoint} ({reason}) "
        f"and it is not in the local cache; check the network, or pass a local model folder"
    )


@dataclass(frozen=True)
class Family:
    model_class: str  # attribute of ``transformers``
    has_cls: bool
    norm: tuple[tuple[float, ...], tuple[float, ...]]
    size: int | None  # None: the config's image_size
    norm_patches: bool = False  # apply the model's post_layernorm to the patch tokens (CLIP)


QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"))
DINO = dict(has_cls=True, norm=IMAGENET, size=224)
FAMILIES = {
    "dinov2": Family("Dinov2Model", **DINO),
    "dinov2_with_registers": Family("Dinov2WithRegistersModel", **DINO),
    "dinov3_vit": Family("DINOv3ViTModel", **DINO),
    "clip": Family("CLIPVisionModel", has_cls=True, norm=OPENAI_CLIP, size=None, norm_patches=True),
    "clip_vision_model": Family("CLIPVisionModel", has_cls=True, norm=OPENAI_CLIP, size=None, norm_patches=True),
    "siglip": Family("SiglipVisionModel", has_cls=False, norm=HALF, size=None),
    "siglip_vision_model": Family("SiglipVisionModel", has_cls=False, norm=HALF, size=None),
}


def _family(model_type: str, source: str) -> Family:
    if model_type not in FAMILIES:
        raise ConfigError(
            f"backbone '{source}' has model_type {model_type!r}, which hf_vit does not support "
            f"(supported: {', '.join(FAMILIES)})"
        )
    return FAMILIES[model_type]


def _side(value: int | tuple[int, ...] | list[int]) -> int:
    """A square size from a config value that may be an int or a pair."""
    return int(value if isinstance(value, int) else value[0])


def _folder_norm(source: str) -> tuple[object, object] | None:
    """``image_mean``/``image_std`` from a local folder's ``preprocessor_config.json``, if present."""
    path = Path(source) / "preprocessor_config.json"
    if not path.is_file():
        return None
    cfg = read_json(path)  # a ConfigError naming the file
    if isinstance(cfg, dict) and "image_mean" in cfg and "image_std" in cfg:
        return cfg["image_mean"], cfg["image_std"]
    return None


def _dtype_option(spec: BackboneSpec) -> torch.dtype:
    """The ``dtype`` option of a spec (the only option the transformers families read)."""
    opts = dict(spec.options)
    unknown = set(opts) - {"dtype"}
    if unknown:
        raise ConfigError(f"unknown {spec.family} options {sorted(unknown)}; supported: ['dtype']")
    dtype_name = opts.get("dtype", "float32")
    if not isinstance(dtype_name, str) or dtype_name not in DTYPES:
        raise ConfigError(f"unknown {spec.family} dtype {dtype_name!r}; choose from {list(DTYPES)}")
    return DTYPES[dtype_name]


def load_pretrained(spec: BackboneSpec, allow_download: bool, family_of, tokenizer: bool = False):
    """``(model, where)``, or ``(model, tokenizer, where)`` with ``tokenizer``: the transformers model a spec's source
    names (a local folder or a hub id, see the module docstring), of the class ``family_of(config).model_class``
    (``family_of`` raises a ConfigError for a model type it does not take). Every failure is one
    :class:`BackboneLoadError` line."""
    source = spec.source
    if not source:
        raise ConfigError(f"{spec.family} backbone needs a source: a Hugging Face model id or a local folder")
    dtype = _dtype_option(spec)
    folder = Path(source).expanduser()
    if not folder.is_dir() and (folder.is_absolute() or source.startswith((".", "~"))):
        raise BackboneLoadError(f"could not load backbone '{source}': no such folder")
    where = str(folder) if folder.is_dir() else source
    hint = "" if folder.is_dir() else "not a local folder; as a Hugging Face model id: "
    cache_only = not folder.is_dir() and _check_hub_id(source, allow_download)
    local = {"local_files_only": True} if cache_only else {}
    try:
        config = transformers.AutoConfig.from_pretrained(where, **local)
    except Exception as err:
        raise BackboneLoadError(f"could not load backbone '{source}': {hint}{_one_line(err)}") from err
    family = family_of(config)
    try:
        model = getattr(transformers, family.model_class).from_pretrained(where, dtype=dtype, **local)
        if not tokenizer:
            return model, where
        return model, transformers.AutoTokenizer.from_pretrained(where, **local), where
    except Exception as err:
        raise BackboneLoadError(f"could not load backbone '{source}': {hint}{_one_line(err)}") from err


class HFViTBackbone(Backbone):
    """Wraps a transformers vision model; ``forward`` returns CLS/global, patch tokens and the grid."""

    def __init__(self, model: torch.nn.Module, preprocess: Preprocess | None = None) -> None:
        super().__init__()
        if hasattr(model, "vision_model") and model.config.model_type in ("clip", "siglip"):
            model = model.vision_model  # a full CLIPModel / SiglipModel: keep the vision tower
        cfg = model.config
        self.family = _family(cfg.model_type, type(model).__name__)
        self.model = model
        self.dim = cfg.hidden_size
        self.patch_size = _side(cfg.patch_size)
        self.num_prefix = int(self.family.has_cls) + getattr(cfg, "num_register_tokens", 0)
        forward_params = inspect.signature(model.forward).parameters
        self._kwargs = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in forward_params else {}
        mean, std = self.family.norm
        size = self.family.size or _side(cfg.image_size)
        self.preprocess = preprocess or Preprocess(size=size, mean=mean, std=std)
        self.train(model.training)

    @classmethod
    def from_model(cls, model: torch.nn.Module, preprocess: Preprocess | None = None) -> "HFViTBackbone":
        return cls(model, preprocess)

    @classmethod
    def from_spec(cls, spec: BackboneSpec, allow_download: bool = False) -> "HFViTBackbone":
        """The backbone a spec names; a Hugging Face id is read from the local cache only unless ``allow_download``."""
        model, where = load_pretrained(spec, allow_download, lambda config: _family(config.model_type, spec.source))
        try:
            backbone = cls(model.eval())  # eval mode, like from_pretrained's model
            norm = _folder_norm(where)
            if norm is not None:
                backbone.preprocess = Preprocess(size=backbone.preprocess.size, mean=norm[0], std=norm[1])
        except (ValueError, TypeError) as err:  # a config out of bounds (image_size), bad image_mean/image_std
            raise BackboneLoadError(f"could not load backbone '{spec.source}': {_one_line(err)}") from None
        return backbone

    def lora_targets(self) -> list[str]:
        """The attention's query/key/value projections of every layer (MIRROR Phase 2's LoRA targets).

        transformers 5 names them ``q_proj``/``k_proj``/``v_proj`` in every family here; 4.x called DINOv2's
        ``query``/``key``/``value``. The names the loaded model actually has are returned."""
        leaves = {name.rsplit(".", 1)[-1] for name, _ in self.model.named_modules()}
        for names in QKV_NAMES:
            if set(names) <= leaves:
                return list(names)
        raise ValueError(
            f"no attention q/k/v projections found in {type(self.model).__name__} (looked for {QKV_NAMES})"
        )

    def forward(self, pixels: torch.Tensor) -> Tokens:
        dtype = next(self.model.parameters()).dtype
        out = self.model(pixel_values=pixels.to(dtype), **self._kwargs)
        patches = out.last_hidden_state[:, self.num_prefix :]
        if self.family.norm_patches:  # CLIP: see the module docstring
            tower = getattr(self.model, "vision_model", self.model)  # transformers 4.x nests the tower
            patches = tower.post_layernorm(patches)
        if self.family.has_cls or out.pooler_output is not None:
            cls_token = out.pooler_output
        else:
            cls_token = patches.mean(1)
        grid = (pixels.shape[-2] // self.patch_size, pixels.shape[-1] // self.patch_size)
        return Tokens(patches=patches.float(), cls=cls_token.float(), grid=grid)
