"""MIRROR's two training recipes and the memory folder they pass between them.

Phase 1 (``aigi train mirror-memory``, :class:`MemoryRecipe`): the backbone is frozen, so its patch tokens are
extracted once (and cached per image: the evaluation crop as view 0, plus ``views - 1`` fixed augmented crops) and
the memory bank trains on those tokens of REAL images only: ``MSE(recon, tokens) + ortho_weight * ||norm(M)
norm(M)^T - I||_F``, AdamW, cosine over epochs. Output: a memory folder (``config.json`` + ``memory.safetensors``).

Phase 2 (``aigi train mirror``, :class:`MirrorRecipe`): the memory is loaded and frozen, LoRA goes on the backbone
and the dual-branch head trains on augmented real and generated images with label-smoothed cross-entropy, AdamW (no
decay on biases and 1-D weights), ``lr = blr * batch / 256`` with a linear warm-up then a cosine to ``min_lr`` per
step. Output: a model folder ``aigi detect`` loads.

Both run through the common trainer (:mod:`aigi.engine.trainer`): CPU, one GPU or several, resume, log.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from torch.utils.data import DataLoader, TensorDataset

from aigi._version import __version__
from aigi.backbones import BackboneSpec, build_backbone
from aigi.checkpoints import (
    CONFIG_NAME,
    ModelConfig,
    build_model,
    check_header,
    check_metadata,
    check_tensors,
    read_header,
    read_safetensors,
    safetensors_bytes,
)
from aigi.data.folders import DataError, Sample, discover
from aigi.data.transforms import (
    AugmentedView,
    EvalProtocol,
    TrainAugment,
    phase1_augment,
)
from aigi.detectors.base import MAX_WIDTH
from aigi.detectors.memory_bank import MemoryBank
from aigi.detectors.mirror import MirrorParams
from aigi.engine.features import extract
from aigi.engine.inference import cache_for
from aigi.engine.train_images import EpochShuffle, PixelEpochs, TrainImages, collate_images, param_groups
from aigi.engine.train_state import load_train_state, warmup_cosine
from aigi.engine.trainer import (
    RECIPES,
    STATE_DIR,
    BackboneChoice,
    DetectorTrainConfig,
    Recipe,
    RecipeConfig,
    Run,
    labelled_or_fail,
    resume_model,
)
from aigi.errors import ConfigError, ModelLoadError, describe_validation
from aigi.io import bytes_writer, json_writer, read_json, write_set
from aigi.names import shown

MEMORY_WEIGHTS = "memory.safetensors"


# ---------------------------------------------------------------------------------------------------------------
# Phase 1: the reality memory
# ---------------------------------------------------------------------------------------------------------------
class MemorySettings(BaseModel):
    """Phase 1 hyper-parameters (defaults: the paper's), recorded in the memory folder as ``recipe``."""

    model_config = ConfigDict(extra="forbid")

    slots: int = MirrorParams.model_fields["slots"]
    heads: int = MirrorParams.model_fields["heads"]
    top_k: int = MirrorParams.model_fields["top_k"]
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1, description="token sets per step")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    ortho_weight: float = Field(0.01, ge=0, description="weight of || norm(M) norm(M)^T - I ||_F")
    views: int = Field(
        1, ge=1, description="crops per image whose tokens are cached: the evaluation crop, then views-1 augmented ones"
    )
    seed: int = RecipeConfig.model_fields["seed"]

    @model_validator(mode="after")
    def _top_k_within_slots(self) -> "MemorySettings":
        if self.top_k > self.slots:
            raise ValueError(f"top_k ({self.top_k}) cannot exceed slots ({self.slots})")
        return self


class MemoryConfig(BaseModel):
    """``config.json`` of a memory folder."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "mirror-memory"
    aigi_version: str = __version__
    backbone: BackboneSpec
    protocol: EvalProtocol
    dim: int = Field(ge=1, le=MAX_WIDTH)
    recipe: MemorySettings
    epochs_done: int = Field(0, ge=0)
    training: dict = Field(default_factory=dict)

    def bank(self) -> dict:
        return {"dim": self.dim, "slots": self.recipe.slots, "heads": self.recipe.heads, "top_k": self.recipe.top_k}


def real_samples(data: str | os.PathLike) -> list[Sample]:
    """The real images under ``data``: the label-0 images of a labelled tree, or every image of a folder whose
    name says it is real (``0_real``, ``real``, ``nature``)."""
    image_set = discover(data)
    reals = [s for s in image_set.samples if s.label == 0]
    if not reals:
        raise DataError(
            f"{data}: no real images found (Phase 1 learns from real images only: give a folder such as train/0_real)"
        )
    return reals


def extract_tokens(
    backbone_spec: BackboneSpec,
    protocol: EvalProtocol,
    paths: list[Path],
    views: int,
    seed: int,
    cache_dir=None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    allow_download: bool | None = None,
) -> tuple[torch.Tensor, list[str]]:
    """Patch tokens [n_ok * views, N, D] of every readable image and view (cached), and the unreadable files."""
    backbone = build_backbone(backbone_spec, allow_download).to(device)
    arrays, bad = [], []
    for v in range(views):
        view = protocol.single_view() if v == 0 else AugmentedView(augment=phase1_augment(), view=v, seed=seed)
        cache = cache_for(backbone_spec, backbone.preprocess, view, "patches", cache_dir)
        ext = extract(
            paths,
            lambda px: backbone(px.to(device)).patches,
            backbone.preprocess,
            view,
            cache=cache,
            description=f"tokens (view {v + 1}/{views})",
            progress=progress,
        )
        if v == 0:
            bad = [f"{shown(paths[i])}: {r}" for i, r in sorted(ext.errors.items())]
        if ext.ok:
            arrays.append(ext.stacked(ext.ok))
    if not arrays:
        raise DataError(f"none of the {len(paths)} images could be read")
    return torch.from_numpy(np.concatenate(arrays)), bad


def save_memory(bank: MemoryBank, config: MemoryConfig, folder: str | os.PathLike) -> None:
    """The memory's weights and config, written as one set (:func:`aigi.io.write_set`)."""
    metadata = {"format": "pt", "aigi": __version__, **bank.metadata(), "epoch": str(config.epochs_done)}
    write_set(
        folder,
        {
            MEMORY_WEIGHTS: bytes_writer(safetensors_bytes(bank.state_dict(), metadata)),
            CONFIG_NAME: json_writer(config.model_dump(mode="json")),
        },
    )


def load_memory(folder: str | os.PathLike) -> tuple[MemoryBank, MemoryConfig]:
    """Read a memory folder written by Phase 1 (or ``aigi convert mirror``); names, shapes and settings are checked."""
    bank, config, _ = _read_memory(folder)
    return bank, config


def _read_memory(folder) -> tuple[MemoryBank, MemoryConfig, dict[str, str]]:
    """The memory folder's bank, config and weights metadata. The weights file's header is checked against the config
    on a meta-device skeleton of the bank (nothing allocated) before the bank is built and its tensors read."""
    folder = Path(folder)
    config = _memory_config(folder)
    weights = folder / MEMORY_WEIGHTS
    header = read_header(weights)
    try:
        with torch.device("meta"):
            skeleton = MemoryBank(**config.bank())
    except ValueError as e:
        raise ModelLoadError(f"{folder / CONFIG_NAME}: impossible memory settings: {e}") from None
    check_metadata(skeleton.metadata(), header.metadata, str(weights))
    check_header(skeleton.state_dict(), header, "MIRROR memory")
    bank = MemoryBank(**config.bank())
    state, metadata = read_safetensors(weights)
    check_tensors(bank.state_dict(), state, str(weights), "MIRROR memory")
    bank.load_state_dict(state)
    return bank, config, metadata


def _memory_config(folder: Path) -> MemoryConfig:
    """A memory folder's validated ``config.json``; every problem is one :class:`ModelLoadError` naming the file."""
    path = folder / CONFIG_NAME
    try:
        raw = read_json(path)
    except FileNotFoundError:
        raise ModelLoadError(f"{folder}: not a MIRROR memory folder (missing {CONFIG_NAME})") from None
    except ConfigError as e:
        raise ModelLoadError(str(e)) from None
    if isinstance(raw, dict) and "detector" in raw:
        raise ModelLoadError(
            f"{folder}: a model folder, not a MIRROR memory folder (make one with `aigi train mirror-memory`)"
        )
    try:
        return MemoryConfig.model_validate(raw)
    except ValidationError as e:
        raise ModelLoadError(f"{path}: invalid memory config ({describe_validation(e)})") from None


class MemoryTrainConfig(RecipeConfig, BackboneChoice, MemorySettings):
    data: Path = Field(description="real images (e.g. train/0_real, or a labelled tree: its real images are used)")
    feature_level: str | None = Field(
        "stage6",
        description="efficientnet_lite0: head, stage6 (default here: best on "
        "aigi-mini val for its size), stage5, stage4, stage3",
    )

    def settings_record(self) -> MemorySettings:
        return MemorySettings(**{k: getattr(self, k) for k in MemorySettings.model_fields})


@RECIPES.register("mirror-memory")
class MemoryRecipe(Recipe):
    """MIRROR Phase 1: learn the memory of real images from frozen backbone tokens (cached)."""

    name = "mirror-memory"
    detector = "mirror"
    Config = MemoryTrainConfig
    validates = False

    def check(self) -> None:
        cfg, out = self.config, Path(self.config.out)
        self.samples = real_samples(cfg.data)
        dim = build_backbone(
            cfg.backbone_spec(), allow_download=True
        ).dim  # settings the tokens' width decides, before the extraction
        if dim % cfg.heads:
            raise ConfigError(f"--heads {cfg.heads} does not divide the backbone's {dim}-d tokens")
        if (out / STATE_DIR).is_dir():  # resuming: the settings must be the saved ones (checked before the extraction)
            _, prev, _ = _read_memory(out)
            mine = cfg.settings_record().model_copy(update={"epochs": prev.recipe.epochs})
            if (prev.recipe, prev.backbone, prev.protocol) != (mine, cfg.backbone_spec(), cfg.protocol()):
                raise ConfigError(
                    f"{out} holds a Phase 1 run with other settings ({prev.recipe}); use a new --out folder"
                )

    def setup(self, run: Run) -> None:
        cfg, acc = self.config, run.accelerator
        with acc.main_process_first():  # the first process fills the token cache, the others then read it
            tokens, bad = extract_tokens(
                cfg.backbone_spec(),
                cfg.protocol(),
                [s.path for s in self.samples],
                cfg.views,
                cfg.seed,
                None,
                run.progress,
                acc.device,
                allow_download=True,  # Phase 1 trains on the backbone the user chose
            )
        run.skipped.update(bad)
        run.model = MemoryConfig(
            backbone=cfg.backbone_spec(),
            protocol=cfg.protocol(),
            dim=int(tokens.shape[-1]),
            recipe=cfg.settings_record(),
            training={
                "data": str(cfg.data),
                "images": len(self.samples),
                "token_sets": int(tokens.shape[0]),
                "tokens_per_image": int(tokens.shape[1]),
                "skipped_files": bad,
            },
        )
        self.bank = MemoryBank(**run.model.bank())
        run.module = self.bank
        run.optimizer = torch.optim.AdamW(self.bank.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.order = EpochShuffle(len(tokens), cfg.seed)
        run.loader = DataLoader(TensorDataset(tokens), batch_size=cfg.batch_size, sampler=self.order, drop_last=False)

    def resume_from(self, run: Run) -> int:
        prev, _, metadata = _read_memory(run.out)
        self.bank.load_state_dict(prev.state_dict())
        run.model.epochs_done = load_train_state(run.out / STATE_DIR, run.optimizer, metadata.get("epoch"))
        return run.model.epochs_done

    def start_epoch(self, run: Run, epoch: int) -> None:
        self.order.use_epoch(epoch)
        run.module.train()

    def lr(self, run: Run, epoch: int, step: int, steps: int) -> float:
        return warmup_cosine(epoch, self.config.epochs, 0, self.config.lr, 0.0)  # CosineAnnealingLR, stepped per epoch

    def loss(self, run: Run, batch):
        (x,) = batch
        core = run.accelerator.unwrap_model(run.module)
        mse = F.mse_loss(run.module(x).recon.float(), x.float())
        return mse + self.config.ortho_weight * core.orthogonality(), len(x), {"mse": mse.item()}

    def end_epoch(self, run: Run, epoch: int, record: dict) -> None:
        with torch.no_grad():
            record.update(phase=1, ortho=float(run.accelerator.unwrap_model(run.module).orthogonality()))
        run.model.epochs_done = epoch + 1

    @staticmethod
    def describe(result: MemoryConfig, out) -> str:
        return f"saved memory {out}: {result.recipe.slots} slots x {result.dim} dims, {result.epochs_done} epochs"

    def save(self, run: Run, epoch: int | None) -> None:
        save_memory(run.accelerator.unwrap_model(run.module), run.model, run.out)


# ---------------------------------------------------------------------------------------------------------------
# Phase 2: the detector
# ---------------------------------------------------------------------------------------------------------------
class MirrorTrainConfig(DetectorTrainConfig):
    memory: Path = Field(description="memory folder from `aigi train mirror-memory` (fixes the backbone and protocol)")
    epochs: int = Field(100, ge=1, description="the paper's 100")
    batch_size: int = Field(64, ge=1, description="images per step and device")
    blr: float = Field(5e-4, gt=0, description="base learning rate: lr = blr * total batch / 256")
    min_lr: float = Field(1e-6, ge=0)
    warmup_epochs: float = Field(1.0, ge=0)
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (none on biases and 1-D weights)")
    smoothing: float = Field(0.1, ge=0, lt=1, description="label smoothing of the cross-entropy")
    augment: TrainAugment = Field(default_factory=TrainAugment)
    num_workers: int = Field(1, ge=0, description="data-loading worker processes")


class _Step(torch.nn.Module):
    """The trainable forward pass as one module, so DDP sees it: pixels -> two-class logits."""

    def __init__(self, detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.detector.classify(self.detector.features(pixels))[0]


@RECIPES.register("mirror")
class MirrorRecipe(PixelEpochs, Recipe):
    """MIRROR Phase 2: frozen memory, LoRA on the backbone, dual-branch head (perplexity + residual + global token)."""

    name = "mirror"
    detector = "mirror"
    Config = MirrorTrainConfig
    param_options = ("lora_r", "lora_alpha")

    def check(self) -> None:
        self.bank, self.memory = load_memory(self.config.memory)
        self.train_set = labelled_or_fail(self.config.data, "Phase 2")
        if self.config.val is not None:
            labelled_or_fail(self.config.val, "validation", need_both=False)

    def setup(self, run: Run) -> None:
        cfg = self.config
        self.bank, mem = load_memory(cfg.memory)  # again, after seeding: its initialisation draws from the seeded RNG
        params = {**cfg.params, **{k: v for k, v in mem.bank().items() if k != "dim"}}
        # the memory folder's backbone: local files only unless AIGI_ALLOW_DOWNLOAD (Phase 1 put it in the cache)
        run.model = build_model(
            ModelConfig(detector="mirror", params=params, backbone=mem.backbone, protocol=mem.protocol)
        )
        det = run.model.detector
        if det.backbone.dim != mem.dim:
            raise ModelLoadError(
                f"{cfg.memory}: the memory holds {mem.dim}-d tokens but its backbone gives {det.backbone.dim}-d ones"
            )
        det.memory_bank.load_state_dict(self.bank.state_dict())
        self.dataset = TrainImages(self.train_set.samples, cfg.augment, det.backbone.preprocess, cfg.seed)
        self.order = EpochShuffle(len(self.dataset), cfg.seed)
        run.loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=self.order,
            drop_last=len(self.dataset) > cfg.batch_size,
            num_workers=cfg.num_workers,
            collate_fn=collate_images,
        )
        run.module = _Step(det)
        self.base_lr = cfg.blr * cfg.batch_size * run.accelerator.num_processes / 256
        run.optimizer = torch.optim.AdamW(param_groups(det, cfg.weight_decay), lr=self.base_lr)
        run.record.update(
            memory_sha256=hashlib.sha256((Path(cfg.memory) / MEMORY_WEIGHTS).read_bytes()).hexdigest(),
            memory_recipe=mem.recipe.model_dump(mode="json"),
        )

    def resume_from(self, run: Run) -> int:
        digest = run.record["memory_sha256"]
        epoch = resume_model(run)
        if run.record.get("memory_sha256") != digest:
            raise ConfigError(f"{run.out} holds a Phase 2 run with another memory; use a new --out folder")
        return epoch

    def loss(self, run: Run, batch):
        x, y, _ = batch
        logits = run.module(x)
        return F.cross_entropy(logits.float(), y, label_smoothing=self.config.smoothing), len(y), {}

    def end_epoch(self, run: Run, epoch: int, record: dict) -> None:
        record["phase"] = 2
