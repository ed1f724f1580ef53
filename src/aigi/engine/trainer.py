"""One trainer for every detector. A detector brings a :class:`Recipe` (its settings with their defaults, how to set
up, the batches of an epoch, the loss of one batch, the closed-form parts at the end); the trainer brings the rest:

- the output folder: refused when it holds something else, resumed when it holds an unfinished run of the same
  settings (``train_state/``: optimizer tensors as safetensors + JSON, never pickled);
- seeding, and ``accelerate`` for CPU, one GPU, several (``accelerate launch -m aigi.cli train ...``; DDP) and
  mixed precision;
- the learning rate each step (the recipe's schedule), the finite-loss check, one progress bar with the loss;
- ``train_log.jsonl``, one line per epoch (started afresh by a fresh run, appended to by a resumed one);
- validation after every epoch through the normal scoring path and :mod:`aigi.engine.metrics` (AUROC, balanced
  accuracy at the model's threshold), calibration at the end, and the typed :class:`TrainingRecord`.

Recipes register themselves in :data:`RECIPES`; ``aigi train <name>`` is generated from them
(:mod:`aigi.cli_train`), each field of a recipe's :class:`RecipeConfig` becoming an option with its description and
bounds. A recipe with no epochs (the linear probe) only has ``finish``.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aigi.errors import ConfigError, DataError, describe_validation
from aigi.names import shown
from aigi.progress import notice, progress_bar
from aigi.registry import Registry

RECIPES: Registry = Registry("training recipe")
LOG_NAME = "train_log.jsonl"
STATE_DIR = "train_state"


PLACES = {
    "data",
    "out",
    "val",
    "calibrate_on",
    "target_real_acc",
    "probability",
    "band_accuracy",
    "reference",
    "memory",
    "epochs",
    "num_workers",
}  # may differ when a run resumes: where things are, how long it runs, how data is loaded (not what it learns)


class RecipeConfig(BaseModel):
    """Settings every recipe has; each recipe subclasses it with its own fields (their defaults are the defaults)."""

    model_config = ConfigDict(extra="forbid")

    data: Path = Field(description="labelled training images (any layout `aigi eval --data` reads)")
    out: Path = Field(description="folder to write (rerun with the same folder to resume)")
    seed: int = Field(0, description="seed of every random draw (same seed and thread count: same weights)")
    mixed_precision: str = Field(
        "no",
        pattern="^(no|fp16|bf16)$",
        description="mixed precision on GPU: no, fp16 or bf16; "
        "several GPUs: run under `accelerate launch -m aigi.cli train ...`",
    )
    params: dict[str, Any] = Field(default_factory=dict, description="detector hyper-parameters (config.json's params)")

    def settings(self) -> dict:
        """What must match for a run to resume: everything but where the data and the output are, and the epochs."""
        return self.model_dump(mode="json", exclude=PLACES)


class DetectorTrainConfig(RecipeConfig):
    """A recipe whose output is a model folder: validation and calibration."""

    val: Path | None = Field(None, description="labelled validation images, scored after every epoch (logged)")
    calibrate_on: Path | None = Field(None, description="labelled images on which to choose the threshold at the end")
    target_real_acc: float | None = Field(
        None, ge=0.0, le=1.0, description="with calibrate_on: lowest threshold keeping this real-photo accuracy"
    )
    probability: Literal["platt", "none"] = Field(
        "platt", description="with calibrate_on: Platt-scale the probability on those images, or keep the detector's"
    )
    band_accuracy: float = Field(
        0.95,
        ge=0.0,
        le=1.0,
        description="with calibrate_on: the accuracy the decided images must reach; images in the band between are "
        "'uncertain' (0: no band)",
    )


class BackboneChoice(BaseModel):
    """Which frozen backbone a recipe trains on, and the evaluation protocol its model will record."""

    backbone: str = Field(
        "efficientnet_lite0",
        description="backbone family: efficientnet_lite0, hf_vit, or hf_clip (CLIP with its text tower)",
    )
    backbone_source: str | None = Field(
        None, description="hf_vit, hf_clip: Hugging Face model id or local folder (DINOv2/v3, CLIP, SigLIP)"
    )
    feature_level: str | None = Field(
        None,
        description="efficientnet_lite0: head, stage6, stage5, stage4 or stage3 (ignored by backbones without levels)",
    )
    format_align: bool = Field(
        True,
        strict=True,  # a --config file's "no" is refused, not read as true
        description="evaluation protocol: re-encode lossless inputs as JPEG q96 "
        "(MIRROR's protocol; the shipped model's)",
    )
    spec: dict[str, Any] | None = Field(
        None,
        description="a whole backbone spec (family, source, options, preprocess); "
        "replaces the four fields above (library use, --config)",
    )
    eval_protocol: dict[str, Any] | None = Field(None, description="a whole evaluation protocol; replaces format_align")

    def backbone_spec(self):
        from aigi.backbones import BackboneSpec, backbone_spec

        if self.spec is not None:
            return BackboneSpec.model_validate(self.spec)
        return backbone_spec(self.backbone, self.backbone_source, self.feature_level)

    def protocol(self):
        from aigi.data.transforms import EvalProtocol

        if self.eval_protocol is not None:
            return EvalProtocol.model_validate(self.eval_protocol)
        return EvalProtocol(format_align=self.format_align)


class TrainingRecord(BaseModel):
    """``config.json``'s ``training`` block: what a model was trained from and how (``--config`` repeats it)."""

    model_config = ConfigDict(extra="allow")

    recipe: str
    config: dict[str, Any]
    epochs_done: int = 0
    devices: int = 1
    skipped_files: list[str] = Field(default_factory=list)
    last_epoch: dict[str, Any] = Field(default_factory=dict)


@dataclass
class Run:
    """What one training run holds; recipes read and fill it."""

    config: RecipeConfig
    out: Path
    accelerator: Any
    resume: bool
    model: Any = None  # the Model being trained (or, for a memory, the recipe's own object)
    module: torch.nn.Module | None = None  # what the optimizer trains (prepared by accelerate)
    optimizer: torch.optim.Optimizer | None = None
    loader: Iterable | None = None
    start_epoch: int = 0
    skipped: set[str] = field(default_factory=set)
    record: dict[str, Any] = field(default_factory=dict)  # recipe extras for the training record
    progress: bool = True  # bars for feature extraction and epochs (main process only)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


class Recipe:
    """How one detector trains. Override what the detector needs; the defaults are a run with no epochs."""

    name: ClassVar[str]
    detector: ClassVar[str]  # the detector it trains (its Params supply param_options)
    Config: ClassVar[type[RecipeConfig]] = RecipeConfig
    epochs_field: ClassVar[str | None] = "epochs"  # the config field that sets the run's length (None: no epochs)
    validates: ClassVar[bool] = True  # score config.val after each epoch
    param_options: ClassVar[
        tuple[str, ...]
    ] = ()  # detector params offered as `aigi train` options (defaults: the Params')

    def __init__(self, config: RecipeConfig) -> None:
        self.config = config

    def check(self) -> None:
        """Check settings and folders before any expensive work (raise ConfigError / DataError)."""

    def setup(self, run: Run) -> None:  # pragma: no cover - recipes with epochs override it
        """Build ``run.model``, ``run.module``, ``run.optimizer`` and ``run.loader`` (not yet prepared)."""
        raise NotImplementedError

    def resume_from(self, run: Run) -> int:
        """Load the saved weights and optimizer state of an unfinished run; return the epochs it finished."""
        raise ConfigError(f"{run.out}: {self.name} runs cannot be resumed; use a new --out folder")

    def epochs(self) -> int:
        return int(getattr(self.config, self.epochs_field)) if self.epochs_field else 0

    def start_epoch(self, run: Run, epoch: int) -> None:
        """Before an epoch: sampler epoch, dropout seed, train mode."""

    def lr(self, run: Run, epoch: int, step: int, steps: int) -> float | None:
        """The learning rate for this step, or None to leave the optimizer's."""
        return None

    def empty(self, run: Run, batch) -> bool:
        """True when the batch holds nothing to learn from (every file unreadable): the step is skipped."""
        return False

    def loss(self, run: Run, batch) -> tuple[torch.Tensor, int, dict]:  # pragma: no cover - as setup
        """``(loss, items in the batch, extra numbers to average in the log)``; runs under autocast."""
        raise NotImplementedError

    def end_epoch(self, run: Run, epoch: int, record: dict) -> None:
        """After an epoch's steps (main process): add numbers to its log record, save its state."""

    def finish(self, run: Run) -> None:
        """Closed-form parts after the epochs (a probe's fit, MDMF's bank); then the trainer calibrates and saves."""

    @staticmethod
    def describe(result, out: Path) -> str:
        """One line for the CLI about what was written."""
        last = result.config.training.get("last_epoch", {})
        auroc = result.config.training.get("val_auroc", last.get("val_auroc"))
        return f"saved {out} (threshold {result.threshold:.4f}" + (
            f", val AUROC {auroc:.3f})" if auroc is not None else ")"
        )

    def save(self, run: Run, epoch: int | None) -> None:
        """Write the output folder (after each epoch, and at the end with ``epoch=None``)."""
        from aigi.checkpoints import save_model

        save_model(run.model, run.out, extra_metadata=None if epoch is None else {"epoch": str(epoch)})


def recipe_config(name: str, values: dict) -> RecipeConfig:
    """Validate settings for recipe ``name``; one line per problem, no pydantic dump."""
    cls = get_recipe(name)
    try:
        return cls.Config(**values)
    except ValidationError as e:
        raise ConfigError(f"invalid {name} settings: {describe_validation(e)}") from None


def get_recipe(name: str) -> type[Recipe]:
    _load_all()
    return RECIPES.get(name)


def recipe_names() -> list[str]:
    _load_all()
    return RECIPES.names()


def _load_all() -> None:
    from aigi.detectors import load_all

    load_all()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def prepare_out(out: Path, resumable: bool) -> bool:
    """True when ``out`` holds a run to resume; refuses a non-empty folder that holds none (never overwritten), so a
    fresh run always starts in an empty folder, with a fresh log."""
    if resumable and (out / STATE_DIR).is_dir():
        return True
    if (out / "config.json").is_file():
        raise ConfigError(f"{out} already holds a finished model; choose a new --out folder (or delete it)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out} already exists and holds no run to resume; choose a new --out folder (or delete it)")
    return False


def train(name: str, config: RecipeConfig | dict, progress: bool = True):
    """Train recipe ``name`` with ``config``; returns what the recipe made (a Model, or a memory's config)."""
    from accelerate import Accelerator

    config = config if isinstance(config, RecipeConfig) else recipe_config(name, config)
    recipe = get_recipe(name)(config)
    out = Path(config.out)
    resume = prepare_out(out, recipe.epochs_field is not None)
    if resume and (out / "config.json").is_file() and isinstance(config, DetectorTrainConfig):
        check_same_settings(out, config, recipe.epochs_field)  # before any feature extraction
    _check_calibration(config)
    recipe.check()
    seed_everything(config.seed)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    run = Run(
        config=config,
        out=out,
        accelerator=accelerator,
        resume=resume,
        progress=progress and accelerator.is_main_process,
    )
    recipe.setup(run)
    if resume:
        run.start_epoch = recipe.resume_from(run)
        if run.main:
            notice(f"resuming from epoch {run.start_epoch} of {recipe.epochs()} in {out}")
    _epochs(recipe, run, progress)
    recipe.finish(run)
    if run.main:
        _calibrate_and_save(recipe, run, progress)
    run.accelerator.wait_for_everyone()
    return run.model


def _check_calibration(config: RecipeConfig) -> None:
    if not isinstance(config, DetectorTrainConfig):
        return
    if config.target_real_acc is not None and config.calibrate_on is None:
        raise ConfigError("--target-real-acc needs --calibrate-on (the images on which to keep that accuracy)")
    if config.calibrate_on is not None:
        labelled_or_fail(config.calibrate_on, "calibration")


def _epochs(recipe: Recipe, run: Run, progress: bool) -> None:
    total = recipe.epochs()
    if not total or run.start_epoch >= total:
        return
    acc = run.accelerator
    run.module, run.optimizer, run.loader = acc.prepare(run.module, run.optimizer, run.loader)
    steps = len(run.loader)
    with progress_bar(
        total=total * steps,
        completed=run.start_epoch * steps,
        description=f"{recipe.name} epoch",
        enabled=progress and run.main,
    ) as bar:
        for epoch in range(run.start_epoch, total):
            bar.update(description=f"{recipe.name} epoch {epoch + 1}/{total}")
            record = _one_epoch(recipe, run, epoch, steps, bar)
            if run.main:
                _validate(recipe, run, record)
                recipe.end_epoch(run, epoch, record)
                run.record.update(epochs_done=epoch + 1, last_epoch=record)
                _write_state(recipe, run, epoch + 1, record)
            acc.wait_for_everyone()


def _one_epoch(recipe: Recipe, run: Run, epoch: int, steps: int, bar) -> dict:
    acc, opt = run.accelerator, run.optimizer
    recipe.start_epoch(run, epoch)
    t0, total_loss, n, extras, lr = time.perf_counter(), 0.0, 0, {}, None
    for step, batch in enumerate(run.loader):
        lr = recipe.lr(run, epoch, step, steps)
        if lr is not None:
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)  # a group may run at a multiple of the schedule (a fresh head)
        if _skip_everywhere(acc, recipe.empty(run, batch)):  # DDP: every process takes part in every step, or none does
            continue
        with acc.autocast():
            loss, items, more = recipe.loss(run, batch)
        check_finite(loss, epoch)
        opt.zero_grad(set_to_none=True)
        acc.backward(loss)
        opt.step()
        total_loss, n = total_loss + loss.item() * items, n + items
        for k, v in more.items():
            extras[k] = extras.get(k, 0.0) + float(v) * items
        bar.advance()
        bar.update(status=f"loss {total_loss / n:.4g}")
    lr = lr if lr is not None else opt.param_groups[0]["lr"]  # the schedule's (group 0 has no lr_scale)
    record = {
        "epoch": epoch + 1,
        "lr": lr,
        "loss": total_loss / max(1, n),
        **{k: v / max(1, n) for k, v in extras.items()},
    }
    return {**record, "seconds": round(time.perf_counter() - t0, 2)}


def _skip_everywhere(acc, empty: bool) -> bool:
    if acc.num_processes == 1:
        return empty
    return bool(acc.gather(torch.tensor([empty], device=acc.device)).any())


def check_finite(loss: torch.Tensor, epoch: int) -> None:
    if not torch.isfinite(loss):
        raise ConfigError(
            f"training diverged in epoch {epoch + 1} (loss {loss.item()}); train again with a lower learning rate "
            "into a new --out folder (this one keeps the last finished epoch)"
        )


def _validate(recipe: Recipe, run: Run, record: dict) -> None:
    """AUROC and balanced accuracy at the model's threshold on config.val, through the normal scoring path."""
    if not (recipe.validates and getattr(run.config, "val", None) is not None):
        return
    record.update(validation_metrics(run.model, run.config.val))


def validation_metrics(model, data) -> dict:
    """AUROC and balanced accuracy (at the model's threshold) over all of ``data``'s images, pooled."""
    from aigi.engine.inference import labelled_scores
    from aigi.engine.metrics import binary_metrics

    model.detector.eval()
    y, p = labelled_scores(model, data, progress=False)  # features cached only if they are the frozen backbone's
    if not y:
        return {}
    m = binary_metrics(y, p, model.threshold)
    return {} if m["auroc"] is None else {"val_auroc": m["auroc"], "val_bal_acc": m["bal_acc"]}


def _write_state(recipe: Recipe, run: Run, epoch: int, record: dict) -> None:
    from aigi.engine.train_state import JsonLog, save_train_state

    if isinstance(run.config, DetectorTrainConfig):
        run.model.config.training = training_record(recipe, run)
    recipe.save(run, epoch)
    save_train_state(run.out / STATE_DIR, run.optimizer, epoch)
    JsonLog(run.out / LOG_NAME).write(**record)


def _calibrate_and_save(recipe: Recipe, run: Run, progress: bool) -> None:
    cfg = run.config
    if isinstance(cfg, DetectorTrainConfig):
        run.model.detector.to("cpu").eval()
        run.model.config.training = training_record(recipe, run)
        if cfg.calibrate_on is not None:
            from aigi.engine.calibrate import calibrate

            band = cfg.band_accuracy or None
            calibrate(run.model, cfg.calibrate_on, cfg.target_real_acc, progress, cfg.probability, band)
    done = run.record.get("epochs_done", run.start_epoch)
    recipe.save(run, done if recipe.epochs() else None)  # with the epoch: a rerun can still resume


def training_record(recipe: Recipe, run: Run) -> dict:
    rec = TrainingRecord(
        recipe=recipe.name,
        config=run.config.model_dump(mode="json"),
        devices=run.accelerator.num_processes,
        skipped_files=sorted(run.skipped),
        **run.record,
    )
    return rec.model_dump(mode="json")


def labelled_or_fail(data: Path, what: str, need_both: bool = True):
    """The labelled images of ``data``; with ``need_both`` both classes must be there."""
    from aigi.data.folders import discover

    image_set = discover(data)
    labels = {s.label for s in image_set.samples}
    if need_both and labels != {0, 1}:
        raise DataError(f"{data}: {what} needs both real and generated images (found labels {sorted(labels)})")
    return image_set


def features_of(run: Run, image_set, what: str, label: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Cached features of the readable images (of one ``label`` when given) and their labels; unreadable files are
    recorded in ``run.skipped``."""
    x, y, _ = readable_features(run, image_set, what, label)
    return x, y


def readable_features(
    run: Run, image_set, what: str, label: int | None = None
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """:func:`features_of`, and the index in ``image_set.samples`` of each readable image. Features are extracted
    through the protocol's single centre view (one row per image), whatever views the model will score with."""
    from aigi.engine.inference import extract_features

    chosen = [i for i, s in enumerate(image_set.samples) if label is None or s.label == label]
    samples = [image_set.samples[i] for i in chosen]
    ext = extract_features(
        run.model,
        [s.path for s in samples],
        progress=run.progress,
        description=f"features: {what}",
        protocol=run.model.config.protocol.single_view(),
    )
    if not ext.ok:
        raise DataError(f"{image_set.root}: none of the {len(samples)} images could be read")
    run.skipped.update(f"{shown(samples[i].path)}: {r}" for i, r in ext.errors.items())
    return ext.stacked(ext.ok), np.array([samples[i].label for i in ext.ok]), [chosen[i] for i in ext.ok]


def balanced_weights(image_set, index: list[int]) -> np.ndarray:
    """A weight per sample (``index`` into ``image_set.samples``) so that every subset (a generator, a photo source:
    a manifest's subset column, or the layout's folders) counts as much as any other of the same label: 1 / (its
    images of that label), scaled so that each label's weights sum to its count."""
    group = {}
    for name, members in image_set.subsets.items():
        for i in members:
            group.setdefault(i, name)  # pooled reals belong to several subsets: the first
    keys = [(image_set.samples[i].label, group.get(i, "")) for i in index]
    counts = Counter(keys)
    w = np.array([1.0 / counts[k] for k in keys])
    for label in {k[0] for k in keys}:
        mine = np.array([k[0] == label for k in keys])
        w[mine] *= mine.sum() / w[mine].sum()
    return w


def check_same_settings(out: Path, config: RecipeConfig, length_field: str) -> None:
    """A run may resume only with the settings it was started with (its length, where the data is, may change)."""
    from aigi.checkpoints import read_config

    prev = read_config(out).training
    before = {k: v for k, v in prev.get("config", {}).items() if k not in PLACES | {length_field}}
    now = {k: v for k, v in config.settings().items() if k != length_field}  # a longer run may continue a shorter one
    if before != now:
        raise ConfigError(f"{out} holds a run with other settings; use a new --out folder")


def resume_model(run: Run) -> int:
    """Resume a model-folder run (``train`` has checked that its settings are this run's): load the weights and the
    optimizer state, carry the training record over, and return the epochs finished."""
    from aigi.checkpoints import (
        WEIGHTS_NAME,
        load_checked,
        read_config,
        read_safetensors,
    )
    from aigi.engine.train_state import load_train_state

    prev = read_config(run.out).training  # its settings were checked by train() before any extraction
    stale = {"val_auroc"}  # measured again at the end of this run when --val is given
    state, metadata = read_safetensors(run.out / WEIGHTS_NAME)
    load_checked(run.model.detector, state, str(run.out / WEIGHTS_NAME))
    run.skipped.update(prev.get("skipped_files", []))
    carried = {"epochs_done", "last_epoch"}  # a rerun with nothing left to train keeps its record
    run.record.update(
        {k: v for k, v in prev.items() if (k in carried or k not in TrainingRecord.model_fields) and k not in stale}
    )
    return load_train_state(run.out / STATE_DIR, run.optimizer, metadata.get("epoch"))
