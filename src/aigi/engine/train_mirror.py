"""MIRROR's two training phases.

Phase 1 (:func:`train_memory`): the backbone is frozen, so its patch tokens are extracted once (and cached per
image: the evaluation crop as view 0, plus ``views - 1`` fixed augmented crops) and the memory bank trains on
those tokens of REAL images only: ``MSE(recon, tokens) + ortho_weight * ||norm(M) norm(M)^T - I||_F``, AdamW,
cosine over epochs. Output: a memory folder (``config.json`` + ``memory.safetensors``).

Phase 2 (:func:`train_detector`): the memory is loaded and frozen, LoRA goes on the backbone and the dual-branch
head trains on augmented real and generated images with label-smoothed cross-entropy, AdamW (no decay on biases
and 1-D weights), ``lr = blr * batch / 256`` with a linear warm-up then a cosine to ``min_lr`` per step.
Output: a model folder ``aigi detect`` loads.

Both run on CPU, one GPU or several (``accelerate launch``; DDP), with mixed precision on GPU, write a JSON-lines
log and their state after every epoch, and resume from it when run again with the same output folder.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.torch import save_file
from torch.utils.data import DataLoader, Dataset, TensorDataset

from aigi.errors import ConfigError
from aigi._version import __version__
from aigi.backbones import BackboneSpec, build_backbone
from aigi.checkpoints import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    Model,
    ModelConfig,
    ModelLoadError,
    build_model,
    check_metadata,
    check_tensors,
    load_checked,
    read_config,
    read_safetensors,
    save_model,
)
from aigi.data.decode import ImageDecodeError, load_image
from aigi.data.folders import DataError, Sample, discover
from aigi.data.transforms import AugmentedView, EvalProtocol, TrainAugment, phase1_augment
from aigi.detectors.memory_bank import MemoryBank
from aigi.engine.features import extract
from aigi.engine.inference import cache_for
from aigi.engine.train_state import JsonLog, load_train_state, save_train_state, warmup_cosine
from aigi.errors import describe_validation
from aigi.io import atomic_write, read_json, write_json
from aigi.progress import notice, progress_bar, progress_iter

MEMORY_WEIGHTS = "memory.safetensors"
LOG_NAME = "train_log.jsonl"
STATE_DIR = "train_state"


def _accelerator(mixed_precision: str = "no", cpu: bool = False):
    from accelerate import Accelerator

    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


class EpochShuffle(torch.utils.data.Sampler):
    """A fresh permutation per epoch, drawn from ``(seed, epoch)`` alone: a resumed run sees the same batches as
    an uninterrupted one. Every DDP process draws the same order; accelerate splits the batches between them.
    (Not called ``set_epoch``: accelerate would call that itself with its own count of passes in this process,
    which restarts at 0 on resume.)"""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------------
# Phase 1: the reality memory
# ---------------------------------------------------------------------------------------------------------------
class MemoryRecipe(BaseModel):
    """Phase 1 hyper-parameters (defaults: the paper's)."""

    model_config = ConfigDict(extra="forbid")

    slots: int = Field(4096, ge=1)
    heads: int = Field(8, ge=1)
    top_k: int = Field(128, ge=1)
    epochs: int = Field(100, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = 1e-4
    weight_decay: float = 1e-4
    ortho_weight: float = 0.01
    views: int = Field(1, ge=1, description="crops per image: the evaluation crop, then views-1 fixed augmented ones")
    seed: int = 0


class MemoryConfig(BaseModel):
    """``config.json`` of a memory folder."""

    model_config = ConfigDict(extra="forbid")

    kind: str = "mirror-memory"
    aigi_version: str = __version__
    backbone: BackboneSpec
    protocol: EvalProtocol
    dim: int
    recipe: MemoryRecipe
    epochs_done: int = 0
    training: dict = Field(default_factory=dict)

    def bank(self) -> dict:
        return {"dim": self.dim, "slots": self.recipe.slots, "heads": self.recipe.heads, "top_k": self.recipe.top_k}


def real_samples(data: str | os.PathLike) -> list[Sample]:
    """The real images under ``data``: the label-0 images of a labelled tree, or every image of a folder whose
    name says it is real (``0_real``, ``real``, ``nature``)."""
    image_set = discover(data)
    reals = [s for s in image_set.samples if s.label == 0]
    if not reals:
        raise DataError(f"{data}: no real images found (Phase 1 learns from real images only: give a folder such as train/0_real)")
    return reals


def extract_tokens(backbone_spec: BackboneSpec, protocol: EvalProtocol, paths: list[Path], views: int, seed: int,
                   cache_dir=None, progress: bool = True, device: str | torch.device = "cpu") -> tuple[torch.Tensor, list[str]]:
    """Patch tokens [n_ok * views, N, D] of every readable image and view (cached), and the unreadable files."""
    backbone = build_backbone(backbone_spec).to(device)
    arrays, bad = [], []
    for v in range(views):
        view = protocol if v == 0 else AugmentedView(augment=phase1_augment(), view=v, seed=seed)
        cache = cache_for(backbone_spec, backbone.preprocess, view, "patches", cache_dir)
        ext = extract(paths, lambda px: backbone(px.to(device)).patches, backbone.preprocess, view, cache=cache,
                      description=f"tokens (view {v + 1}/{views})", progress=progress)
        if v == 0:
            bad = [f"{paths[i]}: {r}" for i, r in sorted(ext.errors.items())]
        if ext.ok:
            arrays.append(ext.stacked(ext.ok))
    if not arrays:
        raise DataError(f"none of the {len(paths)} images could be read")
    return torch.from_numpy(np.concatenate(arrays)), bad


def save_memory(bank: MemoryBank, config: MemoryConfig, folder: str | os.PathLike) -> None:
    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in bank.state_dict().items()}
    metadata = {"format": "pt", "aigi": __version__, **bank.metadata(), "epoch": str(config.epochs_done)}
    atomic_write(folder / MEMORY_WEIGHTS, lambda tmp: save_file(state, tmp, metadata=metadata))
    write_json(folder / CONFIG_NAME, config.model_dump(mode="json"))


def load_memory(folder: str | os.PathLike) -> tuple[MemoryBank, MemoryConfig]:
    """Read a memory folder written by Phase 1 (or ``aigi convert mirror``); names, shapes and settings are checked."""
    bank, config, _ = _read_memory(folder)
    return bank, config


def _read_memory(folder) -> tuple[MemoryBank, MemoryConfig, dict[str, str]]:
    folder = Path(folder)
    try:
        config = MemoryConfig.model_validate(read_json(folder / CONFIG_NAME))
    except FileNotFoundError:
        raise ModelLoadError(f"{folder}: not a MIRROR memory folder (missing {CONFIG_NAME})") from None
    except ValidationError as e:
        if "detector" in read_json(folder / CONFIG_NAME):
            raise ModelLoadError(f"{folder}: a model folder, not a MIRROR memory folder (make one with "
                                 "`aigi train mirror-memory`)") from None
        raise ModelLoadError(f"{folder / CONFIG_NAME}: invalid memory config ({describe_validation(e)})") from None
    except ValueError as e:
        raise ModelLoadError(f"{folder / CONFIG_NAME}: invalid memory config: {e}") from None
    try:
        bank = MemoryBank(**config.bank())
    except ValueError as e:
        raise ModelLoadError(f"{folder / CONFIG_NAME}: impossible memory settings: {e}") from None
    state, metadata = read_safetensors(folder / MEMORY_WEIGHTS)
    check_metadata(bank.metadata(), metadata, str(folder / MEMORY_WEIGHTS))
    check_tensors(bank.state_dict(), state, str(folder / MEMORY_WEIGHTS), "MIRROR memory")
    bank.load_state_dict(state)
    return bank, config, metadata


def _fresh_out(out: Path, what: str) -> bool:
    """True when ``out`` holds a run to resume; refuses to write over a finished folder or unrelated files."""
    if (out / STATE_DIR).is_dir():
        return True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and holds no {what} run to resume; choose a new --out folder (or delete it)")
    return False


def train_memory(data, out, backbone: BackboneSpec | None = None, protocol: EvalProtocol | None = None,
                 recipe: MemoryRecipe | None = None, cache_dir=None, mixed_precision: str = "no", progress: bool = True) -> MemoryConfig:
    out = Path(out)
    recipe = recipe or MemoryRecipe()
    backbone = backbone or BackboneSpec()
    protocol = protocol or EvalProtocol(format_align=True)
    resume = _fresh_out(out, "Phase 1")
    if resume:  # check before the (long) token extraction
        _, prev_cfg, _ = _read_memory(out)
        if (prev_cfg.recipe, prev_cfg.backbone, prev_cfg.protocol) != (recipe.model_copy(update={"epochs": prev_cfg.recipe.epochs}), backbone, protocol):
            raise ConfigError(f"{out} holds a Phase 1 run with other settings ({prev_cfg.recipe}); use a new --out folder")
    _seed(recipe.seed)
    samples = real_samples(data)
    acc = _accelerator(mixed_precision)
    with acc.main_process_first():  # the first process fills the token cache, the others then read it
        tokens, bad = extract_tokens(backbone, protocol, [s.path for s in samples], recipe.views, recipe.seed, cache_dir,
                                     progress and acc.is_main_process, acc.device)
    config = MemoryConfig(backbone=backbone, protocol=protocol, dim=int(tokens.shape[-1]), recipe=recipe,
                          training={"data": str(data), "images": len(samples), "token_sets": int(tokens.shape[0]),
                                    "tokens_per_image": int(tokens.shape[1]), "skipped_files": bad})
    bank = MemoryBank(**config.bank())
    opt = torch.optim.AdamW(bank.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    start = 0
    if resume:
        prev, _, metadata = _read_memory(out)
        bank.load_state_dict(prev.state_dict())
        start = config.epochs_done = load_train_state(out / STATE_DIR, opt, metadata.get("epoch"))
        if acc.is_main_process:
            notice(f"resuming from epoch {start} of {recipe.epochs} in {out}")
    order = EpochShuffle(len(tokens), recipe.seed)
    loader = DataLoader(TensorDataset(tokens), batch_size=recipe.batch_size, sampler=order, drop_last=False)
    bank, opt, loader = acc.prepare(bank, opt, loader)
    core = acc.unwrap_model(bank)
    log = JsonLog(out / LOG_NAME)
    # One bar over every step of every epoch (a resumed run starts part-way), with the epoch's running loss.
    steps = len(loader)
    with progress_bar(total=recipe.epochs * steps, completed=start * steps, description=f"phase 1 epoch {start + 1}/{recipe.epochs}",
                      enabled=progress and acc.is_main_process and start < recipe.epochs) as bar:
        for epoch in range(start, recipe.epochs):
            lr = warmup_cosine(epoch, recipe.epochs, 0, recipe.lr, 0.0)  # CosineAnnealingLR, stepped per epoch
            for g in opt.param_groups:
                g["lr"] = lr
            order.use_epoch(epoch)
            t0, tot, tot_mse, n = time.perf_counter(), 0.0, 0.0, 0
            bank.train()
            bar.update(description=f"phase 1 epoch {epoch + 1}/{recipe.epochs}")
            for (x,) in loader:
                with acc.autocast():
                    mse = F.mse_loss(bank(x).recon.float(), x.float())
                    loss = mse + recipe.ortho_weight * core.orthogonality()
                _check_finite(loss, epoch)
                opt.zero_grad(set_to_none=True)
                acc.backward(loss)
                opt.step()
                tot, tot_mse, n = tot + loss.item() * len(x), tot_mse + mse.item() * len(x), n + len(x)
                bar.advance()
                bar.update(status=f"loss {tot / n:.4g}")
            config.epochs_done = epoch + 1
            if acc.is_main_process:
                with torch.no_grad():
                    ortho = float(core.orthogonality())
                save_memory(core, config, out)
                save_train_state(out / STATE_DIR, opt, epoch + 1)
                log.write(phase=1, epoch=epoch + 1, lr=lr, loss=tot / max(1, n), mse=tot_mse / max(1, n), ortho=ortho,
                          seconds=round(time.perf_counter() - t0, 2))
            acc.wait_for_everyone()
    return config


def _check_finite(loss: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(loss):
        raise ConfigError(f"training diverged in epoch {epoch + 1} (loss {loss.item()}); lower the learning rate. "
                         "The folder keeps the last finished epoch; rerunning resumes from it.")


# ---------------------------------------------------------------------------------------------------------------
# Phase 2: the detector
# ---------------------------------------------------------------------------------------------------------------
class DetectorRecipe(BaseModel):
    """Phase 2 hyper-parameters (defaults: the paper's, except epochs, which the paper sets to 100)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(100, ge=1)
    batch_size: int = Field(64, ge=1, description="per device")
    blr: float = Field(5e-4, description="lr = blr * total batch / 256")
    min_lr: float = 1e-6
    warmup_epochs: float = 1.0
    weight_decay: float = 0.01
    smoothing: float = 0.1
    augment: TrainAugment = Field(default_factory=TrainAugment)
    num_workers: int = 1
    seed: int = 0


class _TrainImages(Dataset):
    """Labelled images through the training augmentation; an unreadable file yields its reason instead."""

    def __init__(self, samples: list[Sample], augment: TrainAugment, pre, seed: int) -> None:
        self.samples, self.augment, self.pre, self.seed, self.epoch = samples, augment, pre, seed, 0

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = self.samples[i]
        rng = random.Random(f"{self.seed}/{self.epoch}/{i}")
        try:
            dec = load_image(s.path)
            return self.augment.apply(dec.image, int(s.label), self.pre, rng), int(s.label), ""
        except ImageDecodeError as e:
            return None, int(s.label), f"{s.path}: {e.reason}"
        except Exception as e:  # noqa: BLE001 - one bad file must not stop training
            return None, int(s.label), f"{s.path}: could not prepare image ({type(e).__name__}: {e})"


def _collate(items):
    ok = [(x, y) for x, y, err in items if x is not None]
    errors = [err for x, y, err in items if x is None]
    if not ok:
        return None, None, errors
    return torch.stack([x for x, _ in ok]), torch.tensor([y for _, y in ok]), errors


class _Step(torch.nn.Module):
    """The trainable forward pass as one module, so DDP sees it: pixels -> two-class logits."""

    def __init__(self, detector) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.detector.classify(self.detector.features(pixels))[0]


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and 1-D weights (norms), as the paper's optimizer factory does."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _val_scores(model: Model, samples: list[Sample], device, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    det = model.detector
    ext = extract([s.path for s in samples], lambda px: det(px.to(device)).logit, det.backbone.preprocess,
                  model.config.protocol, cache=None, description="validation", progress=progress)
    ok = ext.ok
    return np.array([samples[i].label for i in ok]), np.array([float(ext.features[i]) for i in ok])


def train_detector(data, out, memory: str | os.PathLike, params: dict | None = None, recipe: DetectorRecipe | None = None,
                   val=None, calibrate_on=None, target_real_acc: float | None = None, mixed_precision: str = "no",
                   progress: bool = True) -> Model:
    from sklearn.metrics import roc_auc_score

    from aigi.engine.calibrate import calibrate

    out = Path(out)
    recipe = recipe or DetectorRecipe()
    resume = _fresh_out(out, "Phase 2")
    _seed(recipe.seed)
    bank, mem_cfg = load_memory(memory)
    params = {**(params or {}), **{k: v for k, v in mem_cfg.bank().items() if k != "dim"}}
    config = ModelConfig(detector="mirror", params=params, backbone=mem_cfg.backbone, protocol=mem_cfg.protocol)
    model = build_model(config)
    det = model.detector
    if det.backbone.dim != mem_cfg.dim:
        raise ModelLoadError(f"{memory}: the memory holds {mem_cfg.dim}-d tokens but its backbone gives {det.backbone.dim}-d ones")
    det.memory_bank.load_state_dict(bank.state_dict())
    memory_digest = hashlib.sha256((Path(memory) / MEMORY_WEIGHTS).read_bytes()).hexdigest()
    train_set = discover(data)
    labels = {s.label for s in train_set.samples}
    if labels != {0, 1}:
        raise DataError(f"{data}: Phase 2 needs both real and generated images (found labels {sorted(labels)})")
    val_samples = discover(val).samples if val is not None else []

    acc = _accelerator(mixed_precision)
    dataset = _TrainImages(train_set.samples, recipe.augment, det.backbone.preprocess, recipe.seed)
    order = EpochShuffle(len(dataset), recipe.seed)
    loader = DataLoader(dataset, batch_size=recipe.batch_size, sampler=order, drop_last=len(dataset) > recipe.batch_size,
                        num_workers=recipe.num_workers, collate_fn=_collate)
    step_module = _Step(det)
    base_lr = recipe.blr * recipe.batch_size * acc.num_processes / 256
    opt = torch.optim.AdamW(param_groups(det, recipe.weight_decay), lr=base_lr)
    model.config.training = {"data": str(data), "val": str(val) if val else None, "memory": str(memory),
                             "memory_sha256": memory_digest, "recipe": recipe.model_dump(mode="json"),
                             "memory_recipe": mem_cfg.recipe.model_dump(mode="json"),
                             "mixed_precision": mixed_precision, "devices": acc.num_processes}
    start, skipped = 0, set()
    if resume:
        prev = read_config(out)
        same = (prev.params, prev.backbone, prev.training.get("memory_sha256"), prev.training.get("recipe")) == (
            model.config.params, model.config.backbone, memory_digest, {**model.config.training["recipe"], "epochs": prev.training.get("recipe", {}).get("epochs")})
        if not same:
            raise ConfigError(f"{out} holds a Phase 2 run with other settings or another memory; use a new --out folder")
        state, metadata = read_safetensors(out / WEIGHTS_NAME)
        load_checked(det, state, str(out / WEIGHTS_NAME))
        start = load_train_state(out / STATE_DIR, opt, metadata.get("epoch"))
        skipped = set(prev.training.get("skipped_files", []))
    step_module, opt, loader = acc.prepare(step_module, opt, loader)
    steps_per_epoch = len(loader)
    total, warmup = recipe.epochs * steps_per_epoch, int(recipe.warmup_epochs * steps_per_epoch)
    log = JsonLog(out / LOG_NAME)
    for epoch in range(start, recipe.epochs):
        dataset.epoch = epoch
        order.use_epoch(epoch)
        # dropout: a resumed epoch draws what it would have; each DDP process its own stream
        torch.manual_seed((recipe.seed * 1_000_003 + epoch) * 64 + acc.process_index)
        det.train()
        t0, tot, n = time.perf_counter(), 0.0, 0
        for it, (x, y, errors) in enumerate(progress_iter(loader, total=steps_per_epoch, description=f"phase 2 epoch {epoch + 1}/{recipe.epochs}", enabled=progress)):
            skipped.update(errors)
            lr = warmup_cosine(epoch * steps_per_epoch + it, total, warmup, base_lr, recipe.min_lr)
            for g in opt.param_groups:
                g["lr"] = lr
            # Every process must take part in every step (DDP): skip a batch only when one process has nothing.
            empty = acc.gather(torch.tensor([x is None], device=acc.device)).any()
            if empty:
                continue
            with acc.autocast():
                logits = step_module(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=recipe.smoothing)
            _check_finite(loss, epoch)
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            opt.step()
            tot, n = tot + loss.item() * len(y), n + len(y)
        record = {"phase": 2, "epoch": epoch + 1, "lr": lr, "loss": tot / max(1, n), "seconds": round(time.perf_counter() - t0, 2)}
        det.eval()
        if val_samples and acc.is_main_process:
            yv, sv = _val_scores(model, val_samples, acc.device, progress)
            if len(set(yv.tolist())) == 2 and np.isfinite(sv).all():
                record["val_auroc"] = float(roc_auc_score(yv, sv))
                record["val_bal_acc"] = float(((sv[yv == 0] < 0).mean() + (sv[yv == 1] >= 0).mean()) / 2)
        if acc.is_main_process:
            model.config.training.update(epochs_done=epoch + 1, skipped_files=sorted(skipped), last_epoch=record)
            save_model(model, out, extra_metadata={"epoch": str(epoch + 1)})
            save_train_state(out / STATE_DIR, opt, epoch + 1)
            log.write(**record)
        acc.wait_for_everyone()
    det.to("cpu").eval()
    if calibrate_on is not None and acc.is_main_process:
        calibrate(model, calibrate_on, target_real_acc, progress=progress)
        save_model(model, out)
    return model
