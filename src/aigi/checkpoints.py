"""A trained model is a folder, like a Hugging Face model:

- ``config.json``: the detector's name and hyper-parameters, the backbone (family, HF id / local folder /
  packaged weights, preprocessing), the evaluation protocol, the decision threshold and how it was chosen;
- ``model.safetensors``: only the weights that are not the frozen backbone's.

Loading validates the config and every tensor's name and shape, and fails with a message naming the folder and
the problem. Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from aigi._version import __version__
from aigi.backbones import BackboneSpec, build_backbone
from aigi.data.transforms import EvalProtocol
from aigi.detectors import get_detector
from aigi.detectors.base import Detector
from aigi.errors import ModelLoadError, describe_validation
from aigi.io import atomic_write, write_json, write_text
from aigi.registry import UnknownNameError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    aigi_version: str = __version__
    detector: str
    params: dict[str, Any] = Field(default_factory=dict)
    backbone: BackboneSpec
    protocol: EvalProtocol = Field(default_factory=EvalProtocol)
    threshold: float = 0.5
    calibration: dict[str, Any] | None = None
    training: dict[str, Any] = Field(default_factory=dict)


class Model:
    """A detector with its config: what ``aigi detect`` and ``aigi eval`` run."""

    def __init__(self, detector: Detector, config: ModelConfig) -> None:
        self.detector = detector.eval()
        self.config = config

    @property
    def threshold(self) -> float:
        return self.config.threshold

    @property
    def device(self) -> torch.device:
        """Where the detector's weights are; scoring moves every batch there."""
        ref = next(self.detector.parameters(), None)
        if ref is None:
            ref = next(self.detector.buffers(), None)
        return ref.device if ref is not None else torch.device("cpu")

    def to(self, device: str | torch.device) -> "Model":
        """Move the detector (backbone included) to ``device``, e.g. ``"cuda"``; returns the model."""
        self.detector.to(device)
        return self


def build_model(config: ModelConfig) -> Model:
    try:
        cls = get_detector(config.detector)
    except UnknownNameError as e:
        raise ModelLoadError(str(e)) from None
    try:
        params = cls.Params(**config.params)
    except ValidationError as e:
        raise ModelLoadError(f"invalid {config.detector} hyper-parameters: {describe_validation(e)}") from None
    try:
        backbone = build_backbone(config.backbone)
    except UnknownNameError as e:
        raise ModelLoadError(str(e)) from None
    config.params = params.model_dump(mode="json")
    try:
        detector = cls(params, backbone)
    except ValueError as e:  # settings the parameters alone cannot check, e.g. heads that do not divide the width
        raise ModelLoadError(
            f"invalid {config.detector} hyper-parameters for a {backbone.dim}-d {config.backbone.family} backbone: {e}"
        ) from None
    detector.settle()
    return Model(detector, config)


def save_model(model: Model, folder: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in model.detector.trainable_state_dict().items()}
    metadata = {"format": "pt", "aigi": __version__, **model.detector.weights_metadata(), **(extra_metadata or {})}
    atomic_write(folder / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata=metadata))
    write_json(folder / CONFIG_NAME, model.config.model_dump(mode="json"))
    write_text(folder / "README.md", model_card(model.config))
    return folder


def model_card(cfg: ModelConfig) -> str:
    src = cfg.backbone.source or "packaged weights"
    lines = [
        f"# aigi model: {cfg.detector}",
        "",
        f"- backbone: {cfg.backbone.family} ({src}), options {cfg.backbone.options}",
        f"- decision threshold on P(generated): {cfg.threshold:.4f}"
        + (f" ({cfg.calibration.get('rule')})" if cfg.calibration else ""),
        f"- evaluation protocol: {cfg.protocol.model_dump()}",
        f"- trained on: {cfg.training.get('data') or cfg.training.get('config', {}).get('data', 'unknown')}",
        "",
        "Load with `aigi detect --model <this folder>`; weights in model.safetensors, settings in config.json.",
    ]
    return "\n".join(lines) + "\n"


def read_config(folder: str | os.PathLike) -> ModelConfig:
    folder = Path(folder)
    path = folder / CONFIG_NAME
    if not folder.is_dir():
        raise ModelLoadError(f"{folder}: not a model folder (expected a folder with {CONFIG_NAME} and {WEIGHTS_NAME})")
    if not path.is_file():
        raise ModelLoadError(f"{folder}: missing {CONFIG_NAME}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ModelLoadError(f"{path}: not valid JSON ({e})") from None
    if isinstance(raw, dict) and raw.get("kind") == "mirror-memory":
        raise ModelLoadError(
            f"{folder}: a MIRROR memory folder (from `aigi train mirror-memory`), not a model folder; "
            "pass it as `aigi train mirror --memory`"
        )
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as e:
        raise ModelLoadError(f"{path}: invalid model config ({describe_validation(e)})") from None


def load_model(folder: str | os.PathLike) -> Model:
    folder = Path(folder)
    config = read_config(folder)
    model = build_model(config)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelLoadError(f"{folder}: missing {WEIGHTS_NAME}")
    state, metadata = read_safetensors(weights)
    check_metadata(model.detector.weights_metadata(), metadata, str(weights))
    load_checked(model.detector, state, str(weights))
    return model


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file; an unreadable file is a :class:`ModelLoadError`."""
    try:
        state = load_file(str(path))
        with safe_open(str(path), "pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({e})") from None
    return state, metadata


def check_metadata(expected: dict[str, str], found: dict[str, str], where: str) -> None:
    """Settings recorded with the weights must equal the config's (a file without them is not checked)."""
    wrong = [
        f"{k}: config.json says {v}, the weights were made with {found[k]}"
        for k, v in expected.items()
        if k in found and found[k] != v
    ]
    if wrong:
        raise ModelLoadError(f"{where} does not match its config:\n  " + "\n  ".join(wrong))


def load_checked(detector: Detector, state: dict[str, torch.Tensor], where: str) -> None:
    """Load ``state`` into the detector's trainable weights; every name and shape must match."""
    check_tensors(detector.trainable_state_dict(), state, where, detector.name)
    detector.load_state_dict(state, strict=False)


def check_tensors(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str, what: str) -> None:
    """Every name and shape of ``state`` must match ``expected``; the error lists what does not."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing tensors: {', '.join(missing[:10])}" + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        problems.append(f"unexpected tensors: {', '.join(unexpected[:10])}" + (" ..." if len(unexpected) > 10 else ""))
    if wrong:
        problems.append("shape mismatch: " + "; ".join(wrong[:10]))
    if problems:
        raise ModelLoadError(f"{where} does not match its config ({what}):\n  " + "\n  ".join(problems))


def default_model_path() -> Path:
    return Path(__file__).parent / "default_model"


def load_default_model() -> Model:
    return load_model(default_model_path())
