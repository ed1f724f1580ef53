"""Turn MIRROR's published checkpoints (``handsome-rich/MIRROR``, arXiv 2602.02222) into aigi folders.

- Phase 1 file (``mirror_phase1.pth``, ``mirror_phase1_epoch_N.pth``): the reality memory alone. It becomes a
  memory folder (:func:`aigi.detectors.mirror_recipe.save_memory`), the input of aigi's Phase 2 training.
- Phase 2 file (``checkpoint-*.pth``): the whole detector. It becomes a model folder that ``aigi detect`` and
  ``aigi eval`` load. Kept: the memory bank, the two branches and the head, and the LoRA adapters of every
  backbone layer. Not kept: the frozen backbone weights and the input normalisation stored beside them. aigi
  loads the backbone from ``--backbone-source`` and normalises with the backbone's own constants. The file's
  copy of the backbone is compared with that source where the names can be matched, and any difference is reported.

Files are read with ``torch.load(..., weights_only=True)`` only. The one class allowed beyond tensors and
plain containers is ``argparse.Namespace``, because the reference stores its command-line arguments that way
and building one runs no code from the file. A file that needs anything else is refused and never unpickled.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from aigi.backbones import BackboneSpec
from aigi.checkpoints import (
    WEIGHTS_NAME,
    ModelConfig,
    ModelLoadError,
    build_model,
    check_tensors,
    load_checked,
    save_model,
)
from aigi.data.transforms import EvalProtocol
from aigi.detectors.memory_bank import MemoryBank
from aigi.detectors.mirror_recipe import (
    MemoryConfig,
    MemorySettings,
    load_memory,
    save_memory,
)

PHASE1 = "phase1"
PHASE2 = "phase2"
DEFAULT_HEADS = 8
DEFAULT_TOP_K = 128
DEFAULT_LORA_ALPHA = 16.0
PHASE1_ENVELOPES = ("model_state_dict", "model", "state_dict")
PHASE2_ENVELOPES = ("model", "state_dict", "model_state_dict")
NORM_BUFFERS = ("norm.mean", "norm.std")

# The reference wraps every backbone layer with peft on its own, so each LoRA key has the layer index, then
# peft's ``base_model.model.``, then the module path inside the layer.
_FILE_LORA = re.compile(
    r"^backbone\.dino\.(?:(?:model|encoder)\.)?layer\.(\d+)\.(?:base_model\.model\.)?(.+)\.lora_([AB])\.default\.weight$"
)
_OUR_LORA = re.compile(r"\blayer\.(\d+)\.(.+)\.lora_([AB])\.default\.weight$")
# DINOv2 calls its projections query/key/value in transformers 4.x and q_proj/k_proj/v_proj in 5.x.
_QKV_ALIASES = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}


@dataclass
class Converted:
    """What a conversion wrote."""

    kind: str  # PHASE1 or PHASE2
    out: Path
    settings: dict[str, Any]
    ignored: int = 0  # backbone tensors of the file not stored (Phase 2)
    checked: int = 0  # of those, how many were compared with the backbone source and found equal
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        s = self.settings
        if self.kind == PHASE1:
            epochs = f", {s['epochs_done']} epochs" if s.get("epochs_done") else ""
            return (
                f"wrote MIRROR memory folder {self.out} ({s['slots']} slots x {s['dim']}, {s['heads']} heads, "
                f"top-k {s['top_k']}{epochs})"
            )
        lora = f"LoRA r={s['lora_r']} alpha={s['lora_alpha']:g}" if s["lora_r"] else "no LoRA"
        lines = [
            f"wrote model folder {self.out} (mirror: {s['slots']} slots x {s['dim']}, {s['heads']} heads, top-k {s['top_k']}, "
            f"{lora}, threshold 0.5)",
            f"{self.ignored} backbone tensors ignored (loaded from the backbone source)"
            + (f"; {self.checked} of them checked equal to it" if self.checked else ""),
        ]
        return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------------
# Reading
# -------------------------------------------------------------------------------------------------------------
def _allow_namespace():
    safe = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe([argparse.Namespace]) if safe is not None else contextlib.nullcontext()


def _refusal(path: Path, err: pickle.UnpicklingError) -> ModelLoadError:
    text = str(err)
    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
    if found:
        return ModelLoadError(
            f"{path}: refused: the file holds a Python object of type {found.group(1)}, which is not a tensor or "
            "a plain container. aigi reads checkpoints with torch.load(weights_only=True) only and never fully "
            "unpickles them, because that can run code from the file. If you trust it, re-save just its "
            "tensors (for example torch.save(ckpt['model'], 'weights.pth')) and convert that file."
        )
    detail = next((ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln), "unknown reason")
    return ModelLoadError(f"{path}: not a readable weights-only PyTorch checkpoint ({detail})")


def read_checkpoint(pth: str | os.PathLike) -> dict:
    """The checkpoint's top-level dict, loaded as weights only (memory-mapped when the format allows)."""
    path = Path(pth)
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    try:
        with _allow_namespace():
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as e:
                if "mmap" not in str(e):
                    raise
                obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except pickle.UnpicklingError as e:
        raise _refusal(path, e) from None
    except Exception as e:  # noqa: BLE001 - any other failure means the file is not a usable checkpoint
        raise ModelLoadError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise ModelLoadError(f"{path}: expected a checkpoint dict, found a {type(obj).__name__}")
    return obj


def _strip(name: str, prefixes: tuple[str, ...]) -> str:
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if name.startswith(p):
                name, changed = name[len(p) :], True
    return name


def _envelope(obj: dict, order: tuple[str, ...]) -> dict:
    for key in order:
        if isinstance(obj.get(key), dict):
            return obj[key]
    return obj


def _state(obj: dict, order: tuple[str, ...], prefixes: tuple[str, ...], path: Path) -> dict[str, torch.Tensor]:
    """The tensors of the checkpoint's state dict, with leading ``prefixes`` removed."""
    raw = _envelope(obj, order)
    bad = [f"{k!r} ({type(v).__name__})" for k, v in raw.items() if not (isinstance(k, str) and torch.is_tensor(v))]
    if bad:
        raise ModelLoadError(
            f"{path}: no state dict found (looked for {', '.join(order)}, then the file itself); "
            f"entries that are not tensors: {', '.join(bad[:8])}" + (" ..." if len(bad) > 8 else "")
        )
    state: dict[str, torch.Tensor] = {}
    for k, v in raw.items():
        name = _strip(k, prefixes)
        if name in state:
            raise ModelLoadError(
                f"{path}: two tensors are both named {name!r} once the prefixes {', '.join(prefixes)} are removed"
            )
        state[name] = v
    return state


def _classify(obj: dict, path: Path) -> str:
    if "memory_config" in obj:
        return PHASE1
    raw = _envelope(obj, PHASE2_ENVELOPES)
    names = [_strip(k, ("module.",)) for k in raw if isinstance(k, str)]
    if any(n.startswith(("detector.", "backbone.")) for n in names):
        return PHASE2
    if any(n in ("memory", "memory_bank.memory") for n in names):
        return PHASE1
    shown = ", ".join(map(repr, list(raw)[:8])) + (" ..." if len(raw) > 8 else "")
    raise ModelLoadError(
        f"{path}: neither a MIRROR Phase 1 memory (a 'memory' tensor) nor a Phase 2 detector "
        f"('detector.*' and 'backbone.*' tensors); its entries: {shown or 'none'}"
    )


def inspect_checkpoint(pth: str | os.PathLike) -> str:
    """``"phase1"`` for a memory checkpoint, ``"phase2"`` for a whole detector."""
    return _classify(read_checkpoint(pth), Path(pth))


# -------------------------------------------------------------------------------------------------------------
# Phase 1: the memory
# -------------------------------------------------------------------------------------------------------------
def _pick(what: str, in_file: Any, given: int | None, default: int, path: Path) -> int:
    if in_file is not None and given is not None and int(in_file) != int(given):
        raise ModelLoadError(f"{path}: its memory_config has {what}={in_file}, but {given} was given")
    return int(in_file if in_file is not None else given if given is not None else default)


def _backbone_width(spec: BackboneSpec) -> tuple[int | None, str | None]:
    """The hidden size an hf_vit backbone will produce, read from its config only (no weights)."""
    if spec.family != "hf_vit" or not spec.source:
        return None, None
    try:
        import transformers

        cfg = transformers.AutoConfig.from_pretrained(spec.source)
    except Exception as e:  # noqa: BLE001 - offline, unknown id: the width just cannot be checked now
        return None, f"could not read the backbone's config to check its width ({type(e).__name__}: {e})"
    cfg = getattr(cfg, "vision_config", None) or cfg
    return getattr(cfg, "hidden_size", None), None


def convert_memory(
    pth,
    out,
    backbone: BackboneSpec,
    protocol: EvalProtocol | None = None,
    heads: int | None = None,
    top_k: int | None = None,
) -> Converted:
    """Write a memory folder from an official Phase 1 checkpoint."""
    path = Path(pth)
    return _convert_memory(read_checkpoint(path), path, Path(out), backbone, protocol, heads, top_k)


def _convert_memory(
    obj: dict,
    path: Path,
    out: Path,
    backbone: BackboneSpec,
    protocol: EvalProtocol | None,
    heads: int | None,
    top_k: int | None,
) -> Converted:
    protocol = protocol or EvalProtocol(format_align=True)
    state = _state(obj, PHASE1_ENVELOPES, ("module.", "memory_bank."), path)
    slots, dim = (int(s) for s in _memory_tensor(state, path).shape)
    mc = _memory_config(obj, path, slots, dim)
    n_heads = _pick("num_heads", mc.get("num_heads"), heads, DEFAULT_HEADS, path)
    k = _pick("top_k", mc.get("top_k"), top_k, DEFAULT_TOP_K, path)
    bank = _load_bank(state, path, dim, slots, n_heads, k)
    notes = _check_width(backbone, dim, path)
    epoch = obj.get("epoch")
    config = MemoryConfig(
        backbone=backbone,
        protocol=protocol,
        dim=dim,
        recipe=MemorySettings(slots=slots, heads=n_heads, top_k=k),
        epochs_done=int(epoch) if isinstance(epoch, int) else 0,
        training=_memory_training(obj, path),
    )
    save_memory(bank, config, out)
    _verify_memory(bank, out)
    settings = {**config.bank(), "epochs_done": config.epochs_done}
    return Converted(PHASE1, out, settings, notes=notes)


def _memory_tensor(state: dict[str, torch.Tensor], path: Path) -> torch.Tensor:
    """The K x D ``memory`` tensor of a Phase 1 state dict."""
    mem = state.get("memory")
    if mem is None:
        raise ModelLoadError(
            f"{path}: missing tensor 'memory' (the K x D memory of a Phase 1 checkpoint); found: "
            + ", ".join(list(state)[:8])
        )
    if mem.ndim != 2:
        raise ModelLoadError(
            f"{path}: tensor 'memory' has shape {tuple(mem.shape)}, expected 2 dimensions (slots x dim)"
        )
    return mem


def _memory_config(obj: dict, path: Path, slots: int, dim: int) -> dict:
    """The file's ``memory_config`` (empty when absent), checked against the memory tensor's shape."""
    mc = obj.get("memory_config")
    if mc is not None and not isinstance(mc, dict):
        raise ModelLoadError(f"{path}: memory_config is a {type(mc).__name__}, expected a dict")
    mc = mc or {}
    if "feature_dim" in mc and int(mc["feature_dim"]) != dim:
        raise ModelLoadError(
            f"{path}: its memory_config has feature_dim={mc['feature_dim']}, but the memory tensor is {slots} x {dim}"
        )
    if "mem_slots" in mc and int(mc["mem_slots"]) != slots:
        raise ModelLoadError(
            f"{path}: its memory_config has mem_slots={mc['mem_slots']}, but the memory tensor has {slots} slots"
        )
    return mc


def _load_bank(state: dict[str, torch.Tensor], path: Path, dim: int, slots: int, heads: int, top_k: int) -> MemoryBank:
    try:
        bank = MemoryBank(dim, slots, heads, top_k)
    except ValueError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    check_tensors(bank.state_dict(), state, str(path), "MIRROR memory")
    bank.load_state_dict(state)
    return bank


def _check_width(backbone: BackboneSpec, dim: int, path: Path) -> list[str]:
    """Refuse a backbone whose tokens are not ``dim`` wide; a width that cannot be read becomes a note."""
    width, problem = _backbone_width(backbone)
    if width is not None and width != dim:
        raise ModelLoadError(
            f"{path}: the memory is {dim}-dimensional but backbone {backbone.source} gives {width}-dimensional tokens"
        )
    return [problem] if problem else []


def _memory_training(obj: dict, path: Path) -> dict[str, Any]:
    training: dict[str, Any] = {"converted_from": str(path)}
    if isinstance(obj.get("backbone_path"), str):
        training["reference_backbone_path"] = obj["backbone_path"]
    return training


def _verify_memory(bank: MemoryBank, out: Path) -> None:
    written, _ = load_memory(out)
    for name, t in bank.state_dict().items():
        if not torch.equal(written.state_dict()[name], t):
            raise ModelLoadError(f"{out}: tensor {name} did not survive the round trip")  # pragma: no cover


# -------------------------------------------------------------------------------------------------------------
# Phase 2: the detector
# -------------------------------------------------------------------------------------------------------------
def _leaf(module_path: str) -> str:
    last = module_path.rsplit(".", 1)[-1]
    return _QKV_ALIASES.get(last, last)


def _backbone_key(rest: str) -> str:
    """A backbone tensor name without peft's wrapping or the layer container's name (``model.``/``encoder.``)."""
    rest = rest.replace(".base_model.model.", ".").replace(".base_layer.", ".")
    return re.sub(r"^(?:model\.|encoder\.)?layer\.", "layer.", rest)


def _shape_params(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Head sizes read off the tensors (the reference's are MirrorParams' defaults)."""

    def rows(name):
        t = state.get(name)
        return int(t.shape[0]) if t is not None and t.ndim == 2 else None

    found = {
        "perplexity_dim": rows("perplexity_mlp.0.weight"),
        "residual_hidden": rows("residual_mlp.0.weight"),
        "residual_dim": rows("residual_mlp.3.weight"),
        "hidden": rows("head.0.weight"),
    }
    return {k: v for k, v in found.items() if v is not None}


def convert_detector(
    pth,
    out,
    backbone: BackboneSpec,
    protocol: EvalProtocol | None = None,
    heads: int | None = None,
    top_k: int | None = None,
    lora_alpha: float | None = None,
) -> Converted:
    """Write a model folder from an official Phase 2 checkpoint (the whole detector)."""
    path = Path(pth)
    return _convert_detector(read_checkpoint(path), path, Path(out), backbone, protocol, heads, top_k, lora_alpha)


def _convert_detector(
    obj: dict,
    path: Path,
    out: Path,
    backbone: BackboneSpec,
    protocol: EvalProtocol | None,
    heads: int | None,
    top_k: int | None,
    lora_alpha: float | None,
) -> Converted:
    protocol = protocol or EvalProtocol(format_align=True)
    state = _state(obj, PHASE2_ENVELOPES, ("module.",), path)
    mapped, lora, base, norm = _split_state(state)
    params = _detector_params(mapped, lora, path, heads, top_k, lora_alpha)
    config = ModelConfig(
        detector="mirror",
        params=params,
        backbone=backbone,
        protocol=protocol,
        threshold=0.5,
        training=_detector_training(obj, path),
    )
    model = _build_detector(config, path)
    det = model.detector
    _map_lora(lora, det.trainable_state_dict(), mapped, path)
    _load_detector(det, mapped, params, backbone, path)
    checked, notes = _compare_backbone(det, base, norm)
    model.config.training["ignored_backbone_tensors"] = len(base) + len(norm)
    save_model(model, out)
    _verify_weights(out, mapped)
    p = model.config.params
    settings = {"dim": det.backbone.dim, **{k: p[k] for k in ("slots", "heads", "top_k", "lora_r", "lora_alpha")}}
    return Converted(PHASE2, out, settings, ignored=len(base) + len(norm), checked=checked, notes=notes)


def _split_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict, dict, dict]:
    """Sort a Phase 2 state dict into (tensors for the detector, the backbone's LoRA adapters by file name with
    their layer, module path and A/B, the frozen backbone weights, the input normalisation)."""
    mapped: dict[str, torch.Tensor] = {}
    lora: dict[str, tuple[int, str, str, torch.Tensor]] = {}
    base: dict[str, torch.Tensor] = {}
    norm: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k.startswith("memory_bank."):
            mapped[k] = v
        elif k.startswith("detector."):
            mapped[k[len("detector.") :]] = v
        elif k in NORM_BUFFERS:
            norm[k] = v
        elif k.startswith("backbone.") and (m := _FILE_LORA.match(k)):
            lora[k] = (int(m.group(1)), m.group(2), m.group(3), v)
        elif k.startswith("backbone.") and ".lora_" not in k:
            base[k] = v
        else:  # an adapter of another layout, or a module MIRROR does not have: reported as unexpected below
            mapped[k] = v
    return mapped, lora, base, norm


def _detector_params(
    mapped: dict[str, torch.Tensor],
    lora: dict[str, tuple[int, str, str, torch.Tensor]],
    path: Path,
    heads: int | None,
    top_k: int | None,
    lora_alpha: float | None,
) -> dict[str, Any]:
    """The detector's params: sizes read off the tensors, the rest from the arguments or the defaults."""
    params: dict[str, Any] = _shape_params(mapped)
    mem = mapped.get("memory_bank.memory")
    if mem is not None and mem.ndim == 2:
        params["slots"] = int(mem.shape[0])
    params["heads"] = heads if heads is not None else DEFAULT_HEADS
    params["top_k"] = top_k if top_k is not None else DEFAULT_TOP_K
    ranks = sorted({int(v.shape[0]) for _, _, ab, v in lora.values() if ab == "A" and v.ndim == 2})
    if len(ranks) > 1:
        raise ModelLoadError(f"{path}: its LoRA adapters have different ranks {ranks}; aigi uses one rank for all")
    params["lora_r"] = ranks[0] if ranks else 0
    params["lora_alpha"] = float(lora_alpha if lora_alpha is not None else DEFAULT_LORA_ALPHA)
    return params


def _detector_training(obj: dict, path: Path) -> dict[str, Any]:
    training: dict[str, Any] = {"converted_from": str(path), "format": "MIRROR Phase 2 checkpoint"}
    if isinstance(obj.get("epoch"), (int, str)):
        training["epoch"] = obj["epoch"]
    args = obj.get("args")
    ref_backbone = getattr(args, "backbone_path", None) if not isinstance(args, dict) else args.get("backbone_path")
    if isinstance(ref_backbone, str):
        training["reference_backbone_path"] = ref_backbone
    return training


def _build_detector(config: ModelConfig, path: Path):
    try:
        return build_model(config, allow_download=True)  # the backbone source the user typed
    except ModelLoadError as e:
        raise ModelLoadError(f"{path}: {e}") from None
    except ValueError as e:  # e.g. heads not dividing the width, top_k above the slots
        raise ModelLoadError(f"{path}: cannot build the detector it describes ({e})") from None


def _map_lora(
    lora: dict[str, tuple[int, str, str, torch.Tensor]],
    expected: dict[str, torch.Tensor],
    mapped: dict[str, torch.Tensor],
    path: Path,
) -> None:
    """Add the file's LoRA tensors to ``mapped`` under aigi's names. Same layer index and module; exact path first,
    else the projection's name (query == q_proj, ...). One with no match keeps its own name (reported as unexpected)."""
    exact, by_leaf = {}, {}
    for name in expected:
        if m := _OUR_LORA.search(name):
            layer, mod, ab = int(m.group(1)), m.group(2), m.group(3)
            exact[(layer, mod, ab)] = name
            by_leaf.setdefault((layer, _leaf(mod), ab), []).append(name)
    for k, (layer, mod, ab, v) in lora.items():
        ours = exact.get((layer, mod, ab))
        if ours is None and len(by_leaf.get((layer, _leaf(mod), ab), [])) == 1:
            ours = by_leaf[(layer, _leaf(mod), ab)][0]
        target = ours or k
        if target in mapped:
            raise ModelLoadError(f"{path}: two LoRA tensors map to {target}")
        mapped[target] = v


def _load_detector(
    det, mapped: dict[str, torch.Tensor], params: dict[str, Any], backbone: BackboneSpec, path: Path
) -> None:
    """Load ``mapped`` into the detector; a mismatch is reported with the sizes the file was read with."""
    try:
        load_checked(det, mapped, str(path))
    except ModelLoadError as e:
        shown = {k: params[k] for k in ("slots", "heads", "top_k", "lora_r") if k in params}
        raise ModelLoadError(
            f"{e}\n  (read as a MIRROR Phase 2 checkpoint with {shown} on backbone {backbone.source})"
        ) from None


def _verify_weights(out: Path, mapped: dict[str, torch.Tensor]) -> None:
    saved = load_file(str(out / WEIGHTS_NAME))
    for name, t in mapped.items():
        if not torch.equal(saved[name], t.to(saved[name].dtype)):
            raise ModelLoadError(f"{out}: tensor {name} did not survive the round trip")  # pragma: no cover


def _compare_backbone(det, base: dict[str, torch.Tensor], norm: dict[str, torch.Tensor]) -> tuple[int, list[str]]:
    """The file's frozen backbone against the one loaded from the backbone source: (tensors found equal, notes)."""
    ours = {
        _backbone_key(k[len("backbone.model.") :]): v
        for k, v in det.state_dict().items()
        if k.startswith("backbone.model.") and ".lora_" not in k
    }
    compared, differ = 0, []
    for k, v in base.items():
        o = ours.get(_backbone_key(k[len("backbone.dino.") :])) if k.startswith("backbone.dino.") else None
        if o is None or o.shape != v.shape:
            continue
        compared += 1
        if not torch.allclose(v.float(), o.float(), rtol=1e-3, atol=1e-5):
            differ.append(k)
    notes: list[str] = []
    if differ:
        notes.append(
            f"{len(differ)} of the {compared} backbone tensors compared differ from the backbone source "
            f"(e.g. {differ[0]}): the checkpoint was trained on another backbone, so the converted model "
            "will not score like the original; check --backbone-source"
        )
    elif base and not compared:
        notes.append(
            "the checkpoint's backbone tensors could not be matched by name to the backbone source "
            "(another transformers layout), so they were not compared"
        )
    if getattr(det.backbone, "num_prefix", 1) > 1:
        notes.append(
            "the reference counted the backbone's register tokens among the patch tokens; aigi leaves them out, "
            "so scores can differ slightly from the reference code's"
        )
    pre = det.backbone.preprocess
    for name, want in (("norm.mean", pre.mean), ("norm.std", pre.std)):
        if name in norm and not torch.allclose(norm[name].float().flatten(), torch.tensor(want)):
            notes.append(
                f"the checkpoint normalises with {name}={norm[name].flatten().tolist()}, "
                f"the backbone's preprocessing with {list(want)}: aigi uses the latter"
            )
    return compared - len(differ), notes


# -------------------------------------------------------------------------------------------------------------
def convert_mirror(
    pth,
    out,
    backbone: BackboneSpec,
    heads: int | None = None,
    top_k: int | None = None,
    lora_alpha: float | None = None,
    protocol: EvalProtocol | None = None,
) -> Converted:
    """Read the file once, tell the phase from its contents and convert it."""
    path, out = Path(pth), Path(out)
    obj = read_checkpoint(path)
    if _classify(obj, path) == PHASE1:
        res = _convert_memory(obj, path, out, backbone, protocol, heads, top_k)
        if lora_alpha is not None:
            res.notes.append("--lora-alpha does not apply to a Phase 1 memory and was ignored")
        return res
    return _convert_detector(obj, path, out, backbone, protocol, heads, top_k, lora_alpha)
