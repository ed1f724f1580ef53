"""A stack: model folders combined into one calibrated model (issue #12).

Members may differ in backbone and evaluation protocol, so a stack is not one ``Detector.forward`` over one pixel
tensor: it combines at the model level. Each member scores an image through the normal scoring path
(:func:`aigi.engine.inference.score_paths`: its own protocol, its own feature cache, a perturbation applied to
each), giving its own logit ``log(p / (1 - p))`` of its uncalibrated probability, clipped to ``+-logit_clip`` so that
a saturated one stays finite. The combiner ``sigmoid(w . logits + b)``, a logistic regression fitted on validation
images, gives the stack's own probability, which is then calibrated (Platt, threshold, band) like any model's.

The folder moves as one unit::

    config.json           detector "stack"; params: each member's subfolder and the SHA-256 of each of its files
    model.safetensors     the combiner: combine.weight [1, k], combine.bias [1] (float64)
    README.md             the model card, listing the members
    members/<k>-<name>/   a copy of each member model folder (config.json, model.safetensors, README.md)

Loading checks every member's files against the recorded hashes, then loads each member through
:func:`aigi.checkpoints.load_model` and its usual checks; a missing or changed member is one line naming it. A stack
has no per-patch map (its members see different crops), so ``--explain`` says so.

``aigi train stack --member A --member B [...] --val VAL --out OUT`` fits the combiner on VAL (and calibrates there
unless ``--calibrate-on`` says otherwise) and records each member's and the stack's val AUROC side by side.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch import nn

from aigi.checkpoints import (
    CONFIG_NAME,
    STACK,
    WEIGHTS_NAME,
    Model,
    ModelConfig,
    WeightsHeader,
    check_header,
    load_checked,
    load_model,
    read_config,
    read_safetensors,
)
from aigi.data.decode import ImageInput
from aigi.data.perturb import Perturbation
from aigi.detectors.univfd import on_raw_inputs, standardiser
from aigi.engine.inference import Scores, score_paths
from aigi.engine.trainer import RECIPES, DetectorTrainConfig, Recipe, Run, labelled_or_fail
from aigi.errors import ConfigError, DataError, ModelLoadError, describe_validation
from aigi.io import Writer, bytes_writer
from aigi.names import shown

CARD_NAME = "README.md"
MEMBER_FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)  # what is copied of a member folder (the card when present)
MAX_MEMBERS = 32
NAME_PATTERN = r"[A-Za-z0-9._-]{1,64}"
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class StackMember(BaseModel):
    """One member as ``config.json`` records it: its subfolder of the stack and the SHA-256 of each of its files."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=f"^{NAME_PATTERN}$", description="the member folder's name when the stack was made")
    folder: str = Field(pattern=r"^members/[0-9]{1,2}-" + NAME_PATTERN + "$", description="relative to the stack")
    files: dict[str, Sha256]

    @field_validator("files")
    @classmethod
    def _the_model_files(cls, files: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(files) - set(MEMBER_FILES))
        missing = sorted({CONFIG_NAME, WEIGHTS_NAME} - set(files))
        if unknown or missing:
            raise ValueError(f"a member's files are {', '.join(MEMBER_FILES[:2])} and optionally {CARD_NAME}")
        return files


class StackParams(BaseModel):
    """``config.json``'s ``params`` for a stack."""

    model_config = ConfigDict(extra="forbid")

    members: list[StackMember] = Field(min_length=2, max_length=MAX_MEMBERS)
    logit_clip: float = Field(30.0, gt=0, le=700, allow_inf_nan=False, description="members' logits kept in +-this")

    @model_validator(mode="after")
    def _numbered_folders(self) -> "StackParams":
        """Each member lives in ``members/<k>-<name>``, k its place in the combiner: no folder is shared."""
        for k, m in enumerate(self.members):
            if m.folder != member_folder(k, m.name):
                raise ValueError(f"member {k} must be in {member_folder(k, m.name)}, not {m.folder}")
        return self


def member_folder(k: int, name: str) -> str:
    return f"members/{k}-{name}"


class StackCombiner(nn.Module):
    """What a stack model holds where other models hold their Detector: its members' detectors (so that ``.to()``,
    ``.eval()`` and ``Model.device`` reach them) and the combiner, the only weights of the stack's own
    ``model.safetensors``. Each member caches its own features; the stack has none, and no per-patch map."""

    name: ClassVar[str] = STACK
    cacheable: ClassVar[bool] = False
    patch_map_label: ClassVar[str | None] = None

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.combine = nn.Linear(len(members), 1, dtype=torch.float64).requires_grad_(False)  # fitted in closed form
        nn.init.zeros_(self.combine.weight)
        nn.init.zeros_(self.combine.bias)
        self.members = nn.ModuleList(members)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {f"combine.{k}": v for k, v in self.combine.state_dict().items()}

    def weights_metadata(self) -> dict[str, str]:
        return {}

    def set_combiner(self, weights: np.ndarray, bias: float) -> None:
        with torch.no_grad():
            self.combine.weight.copy_(torch.as_tensor(np.asarray(weights, dtype=np.float64))[None])
            self.combine.bias.fill_(float(bias))

    def combined(self, logits: np.ndarray) -> np.ndarray:
        """``sigmoid(logits @ w + b)`` per row of members' logits ``[n, k]``; NaN where a member has no logit."""
        w = self.combine.weight.detach().cpu().double().numpy()[0]
        return expit(logits @ w + float(self.combine.bias.detach().cpu()))


class StackModel(Model):
    """A model whose probability combines its members' logits; everything else (threshold, Platt scaling, band,
    reports, ``api``) is the plain :class:`Model`'s."""

    def __init__(self, config: ModelConfig, members: list[Model], member_dirs: list[Path]) -> None:
        super().__init__(StackCombiner([m.detector for m in members]), config)  # type: ignore[arg-type]
        self.members, self.member_dirs = members, [Path(d) for d in member_dirs]

    @property
    def params(self) -> StackParams:
        return StackParams.model_validate(self.config.params)

    def named_members(self) -> dict[str, Model]:
        """Each member model by its folder in the stack (``members/0-probe``): to evaluate them beside the stack."""
        return {m.folder: model for m, model in zip(self.params.members, self.members)}

    def member_scores(self, paths: Sequence[ImageInput], **scoring) -> list[Scores]:
        """Each member's own, uncalibrated, scores of the images (``scoring``: :func:`score_paths`'s options)."""
        return [score_paths(m, paths, calibrated=False, **scoring) for m in self.members]

    def member_logits(self, parts: Sequence[Scores]) -> np.ndarray:
        """``[n, k]``: each member's logit of its own probability, clipped to stay finite; NaN where it has none."""
        return np.stack([clipped_logits(s.prob, self.params.logit_clip) for s in parts], 1)

    def card(self) -> str:
        return stack_card(self)

    def folder_files(self, folder: Path, extra_metadata: dict[str, str] | None = None) -> dict[str, Writer]:
        """The stack's own files and a copy of each member's, unless the member is already there (saving in place,
        as ``aigi calibrate`` does); a member whose files changed since the stack was made is refused."""
        files = super().folder_files(folder, extra_metadata)
        for member, source in zip(self.params.members, self.member_dirs):
            if source.resolve() == (folder / member.folder).resolve():
                continue
            for name, sha in member.files.items():
                files[f"{member.folder}/{name}"] = bytes_writer(checked_bytes(source / name, sha, member.name))
        return files


def clipped_logits(prob: np.ndarray, bound: float) -> np.ndarray:
    """``log(p / (1 - p))`` kept within ``+-bound`` (a probability that rounded to 0 or 1 stays finite); NaN stays."""
    p = np.asarray(prob, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.clip(np.log(p) - np.log1p(-p), -bound, bound)


def stack_scores(
    model: StackModel,
    paths: Sequence[ImageInput],
    use_cache: bool = True,
    cache_dir=None,
    batch_size: int = 8,
    progress: bool = True,
    perturbation: Perturbation | None = None,
    calibrated: bool = True,
) -> Scores:
    """What :func:`~aigi.engine.inference.score_paths` gives for a stack: every member scores the images its own way,
    the combiner combines their logits, and the stack's calibration applies. An image a member could not score
    gets that member's reason."""
    scoring = dict(use_cache=use_cache, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
    parts = model.member_scores(paths, perturbation=perturbation, **scoring)
    prob = model.detector.combined(model.member_logits(parts))
    errors: dict[int, str] = {}
    for member, part in zip(model.params.members, parts):
        for i, reason in part.errors.items():
            everyone = all(i in p.errors for p in parts)
            errors.setdefault(i, reason if everyone else f"member {member.folder}: {reason}")
    scores = Scores(prob=prob, errors=errors, cache_hits=sum(p.cache_hits for p in parts))
    if calibrated:
        scores.prob = model.calibrated(scores.prob)
    return scores


# -- the folder: hashes, loading, the card -------------------------------------------------------------------------
def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def member_hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of each model file of a member folder (its card only when it has one)."""
    try:
        return {name: file_sha256(folder / name) for name in MEMBER_FILES if (folder / name).is_file()}
    except OSError as e:
        raise ModelLoadError(f"{folder}: cannot read ({e.strerror or e})") from None


def checked_bytes(path: Path, sha: str, member: str) -> bytes:
    """The bytes of a member's file, which must still be those the stack was made from."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read member {member} of the stack ({e.strerror or e})") from None
    if hashlib.sha256(data).hexdigest() != sha:
        raise ModelLoadError(
            f"{path}: changed since the stack was made from it (SHA-256 differs); train the stack again"
        )
    return data


def check_member(stack: Path, member: StackMember) -> Path:
    """The member's folder in ``stack``, its files as recorded (present, same SHA-256); else one line naming it."""
    where = stack / member.folder
    if not where.is_dir():
        raise ModelLoadError(f"{where}: member {member.name} of the stack is missing (a stack folder moves whole)")
    for name, sha in member.files.items():
        path = where / name
        if not path.is_file():
            raise ModelLoadError(f"{path}: missing from member {member.name} of the stack")
        try:
            same = file_sha256(path) == sha
        except OSError as e:
            raise ModelLoadError(f"{path}: cannot read ({e.strerror or e})") from None
        if not same:
            raise ModelLoadError(
                f"{path}: member {member.name} changed since the stack was made (SHA-256 differs); "
                "a stack's members are fixed: train a new stack"
            )
    if read_config(where).detector == STACK:
        raise ModelLoadError(f"{where}: a stack cannot be a member of a stack")
    return where


def stack_params(folder: Path, config: ModelConfig) -> StackParams:
    try:
        return StackParams.model_validate(config.params)
    except ValidationError as e:
        raise ModelLoadError(f"{folder / CONFIG_NAME}: invalid stack params ({describe_validation(e)})") from None


def load_stack(folder: Path, config: ModelConfig, header: WeightsHeader, allow_download: bool | None) -> StackModel:
    """The stack in ``folder`` (:func:`aigi.checkpoints.load_model` hands it over): every member checked against its
    recorded hashes before any is loaded, then each loaded as a model folder, then the combiner's weights."""
    params = stack_params(folder, config)
    placeholders = [nn.Module() for _ in params.members]
    check_header(StackCombiner(placeholders).trainable_state_dict(), header, STACK)  # before any member is loaded
    dirs = [check_member(folder, m) for m in params.members]
    model = StackModel(config, [load_model(d, allow_download) for d in dirs], dirs)
    state, _ = read_safetensors(folder / WEIGHTS_NAME)
    load_checked(model.detector, state, str(folder / WEIGHTS_NAME))
    return model


def _describe(cfg: ModelConfig) -> str:
    """A member in a few words: ``univfd on efficientnet_lite0 (stage5)``."""
    if cfg.backbone is None:
        return cfg.detector
    level = cfg.backbone.options.get("feature_level")
    return f"{cfg.detector} on {cfg.backbone.family}" + (f" ({level})" if level else "")


def stack_card(model: StackModel) -> str:
    cfg, trained = model.config, {m.get("folder"): m for m in model.config.training.get("members", [])}
    weights = model.detector.combine.weight.detach().cpu().double().numpy()[0]
    lines = [
        f"# aigi model: stack of {len(model.members)} members",
        "",
        "Members (combiner weight on each one's logit):",
    ]
    for m, member, w in zip(model.params.members, model.members, weights):
        auroc = trained.get(m.folder, {}).get("val_auroc")
        seen = f", val AUROC {auroc:.3f}" if auroc is not None else ""
        lines.append(f"- {m.folder}: {_describe(member.config)}, weight {w:+.3f}{seen}")
    fitted = cfg.training.get("config", {}).get("val")
    lines += [
        "",
        f"- combiner: logistic regression on the members' logits, fitted on {shown(fitted or 'unknown')}",
        f"- decision threshold on P(generated): {cfg.threshold:.4f}"
        + (f" ({cfg.calibration.get('rule')})" if cfg.calibration else ""),
        "",
        "Load with `aigi detect --model <this folder>`; the folder moves whole: each member under members/ is "
        "checked against the SHA-256 recorded in config.json when loading.",
    ]
    return "\n".join(lines) + "\n"


def member_overview(folder: Path, config: ModelConfig) -> list[dict]:
    """Each member of a stack folder as ``aigi info`` lists it (from the configs alone; nothing is loaded)."""
    rows = []
    for m in stack_params(folder, config).members:
        try:
            cfg = read_config(folder / m.folder)
            rows.append({"folder": m.folder, "model": _describe(cfg), "threshold": cfg.threshold})
        except ModelLoadError as e:
            rows.append({"folder": m.folder, "problem": str(e)})
    return rows


# -- training: the combiner --------------------------------------------------------------------------------------
class StackTrainConfig(DetectorTrainConfig):
    """The stack's recipe: members' logits on --val, a logistic regression, then calibration (on --val unless
    --calibrate-on names other images)."""

    data: None = Field(None, description="not used: a stack learns only its combiner, on --val")
    member: list[Path] = Field(description="a member model folder; repeat for each (at least 2; not a stack)")
    val: Path = Field(
        description="labelled validation images (not the members' training images): the combiner is fitted on "
        "the members' logits there"
    )
    calibrate_on: Path | None = Field(
        None, description="labelled images on which to calibrate the stack at the end (default: --val)"
    )
    C: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="inverse L2 strength of the combiner (on standardised logits)"
    )

    @model_validator(mode="after")
    def _calibrated_on_val_by_default(self) -> "StackTrainConfig":
        if self.calibrate_on is None:
            self.calibrate_on = self.val
        return self


def member_name(folder: Path) -> str:
    """A member's name in the stack: its folder's name, kept to letters, digits, ``.``, ``_`` and ``-``."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(folder).resolve().name)[:64]
    return name if name.strip(".") else "member"


def check_member_folders(folders: Sequence[Path]) -> list[dict[str, str]]:
    """Each --member's file hashes; refuses fewer than two, a stack, and a model given twice (even under two
    names)."""
    if len(folders) < 2:
        raise ConfigError(f"a stack needs at least 2 --member model folders (got {len(folders)})")
    if len(folders) > MAX_MEMBERS:
        raise ConfigError(f"a stack holds at most {MAX_MEMBERS} members (got {len(folders)})")
    hashes: list[dict[str, str]] = []
    for folder in folders:
        if read_config(folder).detector == STACK:
            raise ConfigError(f"--member {folder}: a stack cannot be a member of a stack; name its members instead")
        mine = member_hashes(Path(folder))
        if WEIGHTS_NAME not in mine:
            raise ModelLoadError(f"{folder}: missing {WEIGHTS_NAME}")
        model_files = {k: mine[k] for k in (CONFIG_NAME, WEIGHTS_NAME)}
        same = [f for f, h in zip(folders, hashes) if {k: h[k] for k in model_files} == model_files]
        if same:
            raise ConfigError(f"--member {folder} is the same model as --member {same[0]}: name each member once")
        hashes.append(mine)
    return hashes


def stack_of(folders: Sequence[Path], hashes: Sequence[dict[str, str]]) -> StackModel:
    """A stack of the given model folders, with a combiner not yet fitted (all weights zero)."""
    members = [
        StackMember(name=member_name(f), folder=member_folder(k, member_name(f)), files=h)
        for k, (f, h) in enumerate(zip(folders, hashes))
    ]
    params = StackParams(members=members)
    config = ModelConfig(detector=STACK, params=params.model_dump(mode="json"), backbone=None, protocol=None)
    return StackModel(config, [load_model(f) for f in folders], list(folders))


def fit_combiner(model: StackModel, image_set, C: float, run: Run) -> dict:
    """Fit the combiner on the members' logits on labelled images (standardised, so that the L2 penalty treats
    members alike whatever their logits' scale; classes balanced); returns the training record's numbers."""
    samples = image_set.samples
    parts = model.member_scores([s.path for s in samples], progress=run.progress)
    x = model.member_logits(parts)
    ok = np.isfinite(x).all(1)
    run.skipped.update(f"{shown(samples[i].path)}: {r}" for p in parts for i, r in p.errors.items())
    x, y = x[ok], np.array([s.label for s in samples])[ok]
    if set(y.tolist()) != {0, 1}:
        raise DataError(f"{image_set.root}: the combiner needs real and generated images its members can score")
    mu, sd = standardiser(x)
    clf = LogisticRegression(C=C, class_weight="balanced", max_iter=10_000).fit((x - mu) / sd, y)
    weights, bias = on_raw_inputs(clf, mu, sd)
    model.detector.set_combiner(weights, bias)
    members = [
        {"folder": m.folder, "source": str(src), "weight": float(w), "val_auroc": float(roc_auc_score(y, x[:, j]))}
        for j, (m, src, w) in enumerate(zip(model.params.members, model.member_dirs, weights))
    ]
    auroc = float(roc_auc_score(y, x @ weights + bias))
    return {"members": members, "combiner_bias": bias, "n_val": int(len(y)), "val_auroc": auroc}


@RECIPES.register("stack")
class StackRecipe(Recipe):
    """Stack model folders into one: a logistic regression on the members' logits, fitted on --val, then calibrated."""

    name = "stack"
    detector = STACK
    Config = StackTrainConfig
    epochs_field = None  # closed form: no epochs
    validates = False

    def check(self) -> None:
        self.hashes = check_member_folders(self.config.member)
        self.val_set = labelled_or_fail(self.config.val, "the stack's combiner")

    def setup(self, run: Run) -> None:
        run.model = stack_of(self.config.member, self.hashes)

    def finish(self, run: Run) -> None:
        run.record.update(fit_combiner(run.model, self.val_set, self.config.C, run))

    @staticmethod
    def describe(result, out: Path) -> str:
        training = result.config.training
        each = ", ".join(f"{m['folder'].split('/')[1]} {m['val_auroc']:.3f}" for m in training["members"])
        return (
            f"saved {out}: stack of {len(training['members'])} (val AUROC {each}, stack {training['val_auroc']:.3f}; "
            f"threshold {result.threshold:.4f})"
        )
