"""A trained model is a folder, like a Hugging Face model:

- ``config.json``: the detector's name and hyper-parameters, the backbone (family, HF id / local folder /
  packaged weights, preprocessing), the evaluation protocol, the decision threshold and how it was chosen;
- ``model.safetensors``: only the weights that are not the frozen backbone's.

Loading validates the config (every size bounded, the threshold a probability) and reads the weights file's header
first: every tensor's name and shape, and the settings recorded with them, are checked against the config on a
meta-device skeleton of the detector (which allocates nothing) before the detector is built, so a folder cannot make
aigi allocate more than its own weights file holds. Failures are one message naming the file and the problem.
Nothing is ever unpickled. A backbone named by a model folder is read from local files only (a local folder or the
Hugging Face cache) unless downloads are allowed: ``load_model(..., allow_download=True)`` or ``AIGI_ALLOW_DOWNLOAD=1``.

Weights are written with a sorted header (:func:`save_safetensors`): the same weights give the same bytes.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from aigi._version import __version__
from aigi.backbones import BackboneSpec, build_backbone
from aigi.backbones.base import Backbone
from aigi.data.transforms import EvalProtocol
from aigi.detectors import get_detector
from aigi.detectors.base import Detector, DetectorParams
from aigi.errors import ConfigError, ModelLoadError, describe_validation
from aigi.io import Writer, bytes_writer, json_writer, read_json, text_writer, write_bytes, write_set
from aigi.names import shown
from aigi.registry import UnknownNameError

M = TypeVar("M", bound=torch.nn.Module)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
STACK = "stack"  # a stack model (aigi.detectors.stack): member models combined; no backbone or protocol of its own


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class ModelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    aigi_version: str = __version__
    detector: str
    params: dict[str, Any] = Field(default_factory=dict)
    backbone: BackboneSpec | None = Field(None, description="None only for a stack, whose members have theirs")
    protocol: EvalProtocol | None = Field(default_factory=EvalProtocol, description="None only for a stack")
    threshold: float = Field(0.5, ge=0.0, le=1.0, allow_inf_nan=False, description="on P(generated), in [0, 1]")
    platt: tuple[FiniteFloat, FiniteFloat] | None = Field(
        None,
        description="(a, b): P(generated) = sigmoid(a * logit(p) + b) of the detector's p, fitted on the calibration "
        "data (Platt scaling); None: the detector's own probability",
    )
    band: tuple[Probability, Probability] | None = Field(
        None, description="(low, high): the verdict is 'uncertain' when low < P(generated) < high; None: always decided"
    )
    calibration: dict[str, Any] | None = None
    training: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _a_backbone_unless_a_stack(self) -> "ModelConfig":
        """A stack scores through its members, each with its own backbone and protocol; every other model has one."""
        if self.detector == STACK and (self.backbone is not None or self.protocol is not None):
            raise ValueError(
                "a stack has no backbone or protocol of its own (its members have theirs): both must be null"
            )
        if self.detector != STACK and (self.backbone is None or self.protocol is None):
            raise ValueError(f"a {self.detector} model needs a backbone and an evaluation protocol")
        return self

    @model_validator(mode="after")
    def _band_holds_the_threshold(self) -> "ModelConfig":
        if self.band is not None and not self.band[0] <= self.threshold <= self.band[1]:
            raise ValueError(f"band {list(self.band)} must hold the threshold {self.threshold}")
        return self


def platt_scaled(prob: np.ndarray, a: float, b: float) -> np.ndarray:
    """sigmoid(a * logit(p) + b), with p kept inside (1e-7, 1 - 1e-7) so that 0 and 1 stay finite."""
    p = np.clip(np.asarray(prob, dtype=float), 1e-7, 1 - 1e-7)
    return 1.0 / (1.0 + np.exp(-(a * np.log(p / (1 - p)) + b)))


def views_of(config: ModelConfig) -> str:
    """What a model scores of each image (a stack: each member its own views)."""
    return config.protocol.describe() if config.protocol is not None else "each member's own views"


class Model:
    """A detector with its config: what ``aigi detect`` and ``aigi eval`` run."""

    def __init__(self, detector: Detector, config: ModelConfig) -> None:
        self.detector = detector.eval()
        self.config = config

    @property
    def threshold(self) -> float:
        return self.config.threshold

    def calibrated(self, prob: np.ndarray) -> np.ndarray:
        """The detector's P(generated) through the model's Platt scaling (unchanged without one); NaN stays NaN."""
        if self.config.platt is None:
            return prob
        a, b = self.config.platt
        return platt_scaled(prob, a, b)

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

    def card(self) -> str:
        """The model card (the folder's README.md)."""
        return model_card(self.config)

    def folder_files(self, folder: Path, extra_metadata: dict[str, str] | None = None) -> dict[str, Writer]:
        """What :func:`save_model` writes into ``folder``, as one set: the weights, ``config.json`` and the model card
        (a stack adds its members' folders)."""
        state = self.detector.trainable_state_dict()
        metadata = {"format": "pt", "aigi": __version__, **self.detector.weights_metadata(), **(extra_metadata or {})}
        return {
            WEIGHTS_NAME: bytes_writer(safetensors_bytes(state, metadata)),
            CONFIG_NAME: json_writer(self.config.model_dump(mode="json")),
            "README.md": text_writer(self.card()),
        }


def build_model(config: ModelConfig, allow_download: bool | None = None, stored: WeightsHeader | None = None) -> Model:
    """The model a config describes, with freshly initialised weights.

    ``allow_download``: whether the backbone may be downloaded (None: ``AIGI_ALLOW_DOWNLOAD`` decides, off by default;
    see :func:`aigi.backbones.build_backbone`). ``stored``: the header of the weights file about to be loaded; the
    detector's own tensors and settings are checked against it before any of them is allocated."""
    cls, params = detector_params(config)
    try:
        backbone = build_backbone(config.backbone, allow_download)
    except UnknownNameError as e:
        raise ModelLoadError(str(e)) from None
    config.params = params.model_dump(mode="json")
    _native_or_fail(cls, config, backbone)
    what = f"{config.detector} hyper-parameters for a {backbone.dim}-d {config.backbone.family} backbone"
    if stored is not None:
        skeleton = _construct(cls, params, meta_copy(backbone), what, device="meta")
        skeleton.settle()
        check_metadata(skeleton.weights_metadata(), stored.metadata, stored.where)
        check_header(skeleton.trainable_state_dict(), stored, config.detector)
    detector = _construct(cls, params, backbone, what)
    detector.settle()
    return Model(detector, config)


def _native_or_fail(cls: type[Detector], config: ModelConfig, backbone) -> None:
    """A detector of pixel traces must see crops exactly as the file holds them: no resize anywhere on its path."""
    protocol = config.protocol
    if cls.native_resolution and (
        protocol.resample or (protocol.crop or backbone.preprocess.size) != backbone.preprocess.size
    ):
        raise ModelLoadError(
            f"a {config.detector} model reads pixels at native resolution: its protocol needs resample=false and "
            f"crop equal to the input side {backbone.preprocess.size}"
        )


def detector_params(config: ModelConfig) -> tuple[type[Detector], DetectorParams]:
    """The detector class a config names and its validated hyper-parameters."""
    try:
        cls = get_detector(config.detector)
    except UnknownNameError as e:
        raise ModelLoadError(str(e)) from None
    try:
        return cls, cls.Params(**config.params)
    except ValidationError as e:
        raise ModelLoadError(f"invalid {config.detector} hyper-parameters: {describe_validation(e)}") from None


def _construct(
    cls: type[Detector], params: DetectorParams, backbone: Backbone, what: str, device: str | None = None
) -> Detector:
    """``cls(params, backbone)``; on the meta device (shapes only, nothing allocated) when ``device="meta"``."""
    try:
        with torch.device(device) if device else nullcontext():
            return cls(params, backbone)
    except ValueError as e:  # settings the parameters alone cannot check, e.g. heads that do not divide the width
        raise ModelLoadError(f"invalid {what}: {e}") from None
    except RuntimeError as e:  # e.g. out of memory
        raise ModelLoadError(f"cannot build the {what}: {' '.join(str(e).split())}") from None


def meta_copy(module: M) -> M:
    """A copy of ``module`` whose tensors are on the meta device: its structure, shapes and ``requires_grad`` flags,
    none of its data (nothing is copied or allocated)."""
    memo: dict[int, Any] = {}
    for t in module.parameters():
        memo[id(t)] = torch.nn.Parameter(torch.empty_like(t, device="meta"), requires_grad=t.requires_grad)
    for t in module.buffers():
        memo[id(t)] = torch.empty_like(t, device="meta")
    return copy.deepcopy(module, memo)


def save_model(model: Model, folder: str | os.PathLike, extra_metadata: dict[str, str] | None = None) -> Path:
    """Write the weights, ``config.json`` and the model card as one set (:func:`aigi.io.write_set`): a reader sees
    the earlier model or this one, never a mix; a full or read-only disk raises :class:`aigi.io.WriteError` and leaves
    an earlier model whole; other files in the folder (a trainer's log and state) are left alone."""
    write_set(folder, model.folder_files(Path(folder), extra_metadata))
    return Path(folder)


def safetensors_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> bytes:
    """A safetensors file's bytes with its header's keys sorted (the library writes its metadata in a random order),
    so the same tensors and metadata always give the same bytes."""
    state = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    raw = safetensors_save(state, metadata=dict(metadata) if metadata else None)
    size = int.from_bytes(raw[:8], "little")
    header = json.dumps(json.loads(raw[8 : 8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the data stays 8-byte aligned, as the library writes it
    return len(header).to_bytes(8, "little") + header + raw[8 + size :]


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``tensors`` (moved to the CPU) atomically as a safetensors file with a sorted header."""
    return write_bytes(path, safetensors_bytes(tensors, metadata))


def model_card(cfg: ModelConfig) -> str:
    src = shown(cfg.backbone.source or "packaged weights")
    lines = [
        f"# aigi model: {cfg.detector}",
        "",
        f"- backbone: {cfg.backbone.family} ({src}), options {cfg.backbone.options}",
        f"- decision threshold on P(generated): {cfg.threshold:.4f}"
        + (f" ({cfg.calibration.get('rule')})" if cfg.calibration else ""),
        f"- evaluation protocol: {cfg.protocol.model_dump()}",
        f"- trained on: {shown(cfg.training.get('data') or cfg.training.get('config', {}).get('data', 'unknown'))}",
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
        raw = read_json(path)
    except ConfigError as e:
        raise ModelLoadError(str(e)) from None
    if isinstance(raw, dict) and raw.get("kind") == "mirror-memory":
        raise ModelLoadError(
            f"{folder}: a MIRROR memory folder (from `aigi train mirror-memory`), not a model folder; "
            "pass it as `aigi train mirror --memory`"
        )
    try:
        return ModelConfig.model_validate(raw)
    except ValidationError as e:
        raise ModelLoadError(f"{path}: invalid model config ({describe_validation(e)})") from None


def load_model(folder: str | os.PathLike, allow_download: bool | None = None) -> Model:
    """Load a model folder. Its weights file's header is checked against its config before anything is allocated;
    its backbone comes from local files only unless ``allow_download`` (None: ``AIGI_ALLOW_DOWNLOAD``) says so."""
    folder = Path(folder)
    config = read_config(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelLoadError(f"{folder}: missing {WEIGHTS_NAME}")
    header = read_header(weights)
    if config.detector == STACK:
        from aigi.detectors.stack import load_stack

        return load_stack(folder, config, header, allow_download)
    try:
        model = build_model(config, allow_download, stored=header)
    except ConfigError as e:  # settings only building can check, e.g. a backbone's options
        raise ModelLoadError(f"{folder / CONFIG_NAME}: {e}") from None
    state, metadata = read_safetensors(weights)
    check_metadata(model.detector.weights_metadata(), metadata, str(weights))
    load_checked(model.detector, state, str(weights))
    return model


@dataclass(frozen=True)
class WeightsHeader:
    """What a safetensors file's header says: every tensor's shape and dtype, and the metadata (no tensor is read)."""

    where: str
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str]
    dtypes: dict[str, str] = field(default_factory=dict)  # safetensors' names: F32, F16, BF16, I64, BOOL, ...


MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit


def _unreadable(path, reason) -> ModelLoadError:
    return ModelLoadError(f"{path}: not a readable safetensors file ({' '.join(str(reason).split())})")


def _parse_header(raw: bytes, path) -> WeightsHeader:
    """The header at the start of ``raw`` (a safetensors file's first bytes: at least 8 plus the header's length)."""
    size = int.from_bytes(raw[:8], "little") if len(raw) >= 8 else -1
    if not 0 < size <= min(len(raw) - 8, MAX_HEADER_BYTES):
        raise _unreadable(path, "no safetensors header")
    try:
        entries = json.loads(raw[8 : 8 + size])
        metadata = entries.pop("__metadata__", None) or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in dict(metadata).items()):
            raise ValueError("metadata must map text to text")
        shapes = {k: tuple(int(n) for n in v["shape"]) for k, v in entries.items()}
        dtypes = {k: str(v["dtype"]) for k, v in entries.items()}
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as e:
        raise _unreadable(path, f"bad header: {type(e).__name__}: {e}") from None
    return WeightsHeader(str(path), shapes, metadata, dtypes)


def read_header(path: str | os.PathLike) -> WeightsHeader:
    """The header of a safetensors file, read by Python (any file name, not only UTF-8 ones); an unreadable file is a
    :class:`ModelLoadError`."""
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            fh.seek(0)
            raw = fh.read(8 + min(size, MAX_HEADER_BYTES))
    except OSError as e:
        raise _unreadable(path, e.strerror or e) from None
    return _parse_header(raw, path)


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and header metadata of a safetensors file; an unreadable file is a :class:`ModelLoadError`."""
    try:
        data = Path(path).read_bytes()
        header = _parse_header(data[: 8 + MAX_HEADER_BYTES], path)
        state = safetensors_load(data)
    except (SafetensorError, OSError, ValueError) as e:
        raise _unreadable(path, getattr(e, "strerror", None) or e) from None
    return state, header.metadata


SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


def check_header(expected: Mapping[str, torch.Tensor], header: WeightsHeader, what: str) -> None:
    """The header's tensor names and shapes must match ``expected``, and their dtypes too: a floating-point tensor
    may be stored in any float type (loading converts it), anything else exactly as the model holds it."""
    check_tensors(expected, header.shapes, header.where, what)
    wrong = [
        f"{k}: file {header.dtypes.get(k)} vs model {SAFETENSORS_DTYPES.get(v.dtype, v.dtype)}"
        for k, v in expected.items()
        if not _dtype_fits(v.dtype, header.dtypes.get(k))
    ]
    if wrong:
        raise ModelLoadError(f"{header.where} does not match its config ({what}): dtype mismatch: " + "; ".join(wrong))


def _dtype_fits(model_dtype: torch.dtype, stored: str | None) -> bool:
    if model_dtype.is_floating_point:
        return stored in FLOAT_DTYPES
    return stored == SAFETENSORS_DTYPES.get(model_dtype)


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


def check_tensors(
    expected: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor | tuple[int, ...]],
    where: str,
    what: str,
) -> None:
    """Every name and shape of ``state`` (tensors, or shapes from a file's header) must match ``expected``; the error
    lists what does not."""
    shapes = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in state.items()}
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    wrong = [
        f"{k}: file {shapes[k]} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in shapes and shapes[k] != tuple(v.shape)
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
