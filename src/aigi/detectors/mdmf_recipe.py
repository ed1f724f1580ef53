"""MDMF training: learn the Patch Forensic Signature and the kernel by a test-power criterion, then store the
reference bank's summary in the model folder.

Two criteria, both ratios of a separation to its spread (the power of a two-sample test, as in learned-kernel
MMD tests, Liu et al. 2020), optimised over the projection ``phi`` and the kernel's bandwidths and mixing weight:

- ``image`` (the default): each step draws ``images_per_side`` real and generated training images and a sample of
  ``patches_per_side`` reference-bank patches, scores every image as the detector does (its biased MMD^2 to the
  bank sample, ``s``), and maximises ``(mean s_fake - mean s_real) / sqrt(var s_fake + var s_real + lam)``.
- ``pooled``: the paper's wording taken literally: ``patches_per_side`` patches pooled over the sampled real and
  over the sampled generated images, maximising ``MMD^2_u(real, generated) / sqrt(Var_H1 + lam)`` (the unbiased
  estimate over its variance under the alternative).

Why ``image`` is the default: detection ranks single images by their distance to the bank, and a kernel that
separates the pooled patch distributions need not separate images (pooled patches of generated images differ from
real ones in ways each single image shares with real ones). On aigi-mini (stage4 tokens pooled 2x2, val AUROC of
the detector after training): ``image`` 0.948 after 1000 steps, ``pooled`` 0.715 after 150 and 0.507 after 1000.
The variance term is what makes both a power criterion rather than a bare separation: a wide but unstable gap is
penalised.

After training: the bank is summarised from the reference real images, the score's scale is fitted on the training
images (log MMD^2, centred between real and generated and in units of their spread, see
:func:`_log_score_scale`), and the threshold may be calibrated on validation data.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from aigi.checkpoints import read_safetensors, save_safetensors
from aigi.detectors.mmd import mmd2_unbiased, mmd2_variance
from aigi.engine.trainer import (
    RECIPES,
    STATE_DIR,
    BackboneChoice,
    DetectorTrainConfig,
    Recipe,
    Run,
    features_of,
    labelled_or_fail,
    resume_model,
    validation_metrics,
)
from aigi.errors import ConfigError

SAMPLER = "sampler.safetensors"  # the step sampler's random state, beside the optimizer's

CRITERIA = {
    "image": "(mean s_fake - mean s_real) / sqrt(var s_fake + var s_real + lam), s = per-image MMD^2_b to a reference-bank sample",
    "pooled": "mmd2_u / sqrt(var_H1 + lam) between pooled real and generated patches",
}


def _log_score_scale(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    """``(center, scale)`` for ``logit = (s - center) / scale`` on log-scores ``s`` of the training images: the midpoint
    of the two classes' medians, in units of their robust spread (1.4826 MAD, averaged over the classes).

    Not a logistic fit: the training images are the ones the kernel was fitted to, so a fit on them is overconfident
    (a steep slope), and a steep slope pushes unseen generators' logits past what a float64 sigmoid can tell apart
    from 1. The threshold is calibrated on validation data afterwards anyway."""
    real, fake = real[np.isfinite(real)], fake[np.isfinite(fake)]
    if not len(real) or not len(fake):
        raise ConfigError(
            "MDMF training produced no finite scores for one class: the kernel diverged (try a lower --lr)"
        )
    med_r, med_f = float(np.median(real)), float(np.median(fake))
    spread = np.mean([np.median(np.abs(v - np.median(v))) * 1.4826 for v in (real, fake)])
    if not np.isfinite(spread) or spread <= 0:
        spread = float(np.std(np.concatenate([real, fake]))) or 1.0
    return (med_r + med_f) / 2, float(spread)


def _pooled_power(det, real, fake, images_per_side, patches_per_side, lam, g):
    """Test power between the pooled patches of real and of generated images (a patch-level two-sample test)."""
    sides = []
    for pool in (real, fake):
        x, _ = det.patches(pool[torch.randint(len(pool), (images_per_side,), generator=g)].float())
        flat = x.reshape(-1, x.shape[-1])
        sides.append(flat[torch.randperm(len(flat), generator=g)[:patches_per_side]])
    n = min(len(sides[0]), len(sides[1]))
    xr, xf = sides[0][:n], sides[1][:n]
    pr, pf = det.project(xr), det.project(xf)
    kxx, kyy, kxy = det.kernel(pr, xr, pr, xr), det.kernel(pf, xf, pf, xf), det.kernel(pr, xr, pf, xf)
    mmd2 = mmd2_unbiased(kxx, kyy, kxy)
    return mmd2 / torch.sqrt(mmd2_variance(kxx, kyy, kxy).clamp_min(0) + lam), mmd2


def _image_level_power(det, real, fake, ref_flat, images_per_side, patches_per_side, lam, g):
    """Separation of per-image scores, as the detector scores: each image's MMD^2 to a sample of the reference
    bank; maximise ``(mean s_fake - mean s_real) / sqrt(var s_fake + var s_real + lam)``."""
    bank = ref_flat[torch.randperm(len(ref_flat), generator=g)[:patches_per_side]]
    phi_b = det.project(bank)
    kbb = det.kernel(phi_b, bank, phi_b, bank).mean()
    scores = []
    for pool in (real, fake):
        x, _ = det.patches(pool[torch.randint(len(pool), (images_per_side,), generator=g)].float())  # [B, n, D]
        phi = det.project(x)
        kxx = det.kernel(phi, x, phi, x).mean((-1, -2))
        kxb = det.kernel(phi, x, phi_b.expand(len(x), -1, -1), bank.expand(len(x), -1, -1)).mean((-1, -2))
        scores.append(kxx + kbb - 2 * kxb)
    s_real, s_fake = scores
    gap = s_fake.mean() - s_real.mean()
    return gap / torch.sqrt(s_fake.var() + s_real.var() + lam), gap


class MDMFTrainConfig(DetectorTrainConfig, BackboneChoice):
    feature_level: str | None = Field(
        "stage6",
        description="efficientnet_lite0: stage6 (default: 32-px cells, best on aigi-mini "
        "val), stage5, stage4 (16-px cells), stage3",
    )
    reference: Path | None = Field(
        None, description="clean real images for the reference bank (default: the real training images)"
    )
    steps: int = Field(1000, ge=1, description="optimisation steps of the test-power criterion")
    log_every: int = Field(50, ge=1, description="steps per logged epoch (a resumed run continues from the last one)")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    images_per_side: int = Field(16, ge=2, description="real and generated training images drawn per step")
    patches_per_side: int = Field(512, ge=2, description="reference-bank patches drawn per step")
    lam: float = Field(1e-8, gt=0, description="variance regulariser of the power criterion")
    criterion: Literal["image", "pooled"] = Field(
        "image", description="image (separation of per-image scores) or pooled (patch-level test power)"
    )


class _Steps:
    """An epoch's step numbers: ``log_every`` of them, fewer in the last epoch (the sampling is the recipe's own)."""

    def __init__(self, steps: int, per_epoch: int) -> None:
        self.steps, self.per_epoch, self.epoch = steps, per_epoch, 0

    def __len__(self) -> int:
        return min(self.per_epoch, self.steps)

    def __iter__(self):
        first = self.epoch * self.per_epoch
        return iter(range(first, min(self.steps, first + self.per_epoch)))


@RECIPES.register("mdmf")
class MDMFRecipe(Recipe):
    """MDMF: patch-distribution detection by MMD against a bank of real images (deep kernel, test-power training)."""

    name = "mdmf"
    detector = "mdmf"
    Config = MDMFTrainConfig
    param_options = ("pool", "estimator", "bank_patches")
    epochs_field = "steps"  # what sets the run's length (epochs() turns it into logged epochs of log_every steps)
    validates = False  # the score needs the bank, summarised after the last step: validated once, in finish()

    def epochs(self) -> int:
        return math.ceil(self.config.steps / self.config.log_every)

    def check(self) -> None:
        cfg = self.config
        self.train_set = labelled_or_fail(cfg.data, "MDMF training")
        self.reference_set = (
            labelled_or_fail(cfg.reference, "the reference bank", need_both=False) if cfg.reference else None
        )
        self.val_set = labelled_or_fail(cfg.val, "validation", need_both=False) if cfg.val else None
        if cfg.mixed_precision != "no":  # the power ratio's variance floor (lam=1e-8) underflows in half precision
            raise ConfigError("MDMF trains in full precision: leave --mixed-precision at no")

    def setup(self, run: Run) -> None:
        from aigi.checkpoints import ModelConfig, build_model

        cfg = self.config
        params = {**cfg.params, "score_form": "log"}  # the scale fitted in finish() is on log MMD^2
        run.model = build_model(
            ModelConfig(detector="mdmf", params=params, backbone=cfg.backbone_spec(), protocol=cfg.protocol()),
            allow_download=True,  # training: the backbone is the user's choice
        )
        det = run.model.detector
        self.g = torch.Generator().manual_seed(cfg.seed)
        tokens, labels = features_of(run, self.train_set, "train")
        tokens = torch.from_numpy(tokens)
        self.real, self.fake = tokens[labels == 0], tokens[labels == 1]
        self.ref_tokens = (
            torch.from_numpy(features_of(run, self.reference_set, "reference", label=0)[0])
            if self.reference_set
            else self.real
        )
        det.fit_standardisation(self.real)
        sample, _ = det.patches(tokens[torch.randperm(len(tokens), generator=self.g)[:32]].float())
        det.median_bandwidths(sample.reshape(-1, sample.shape[-1])[:2048])
        ref_flat = (
            det.patches(self.ref_tokens.float())[0].reshape(-1, self.real.shape[-1])
            if cfg.criterion == "image"
            else None
        )
        device = run.accelerator.device  # the training copies; finish() works on the CPU originals
        self.train_real, self.train_fake = self.real.to(device), self.fake.to(device)
        self.ref_flat = None if ref_flat is None else ref_flat.to(device)
        run.module = det
        run.optimizer = torch.optim.AdamW(
            [p for n, p in det.named_parameters() if not n.startswith("backbone.")],
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
        )
        run.loader = _Steps(cfg.steps, cfg.log_every)
        run.record.update(
            reference=str(cfg.reference or cfg.data),
            reference_images=int(len(self.ref_tokens)),
            criterion=CRITERIA[cfg.criterion],
        )

    def start_epoch(self, run: Run, epoch: int) -> None:
        run.loader.epoch = epoch
        run.model.detector.train()

    def loss(self, run: Run, step: int):
        cfg, det = self.config, run.model.detector
        if cfg.criterion == "image":
            power, mmd2 = _image_level_power(
                det,
                self.train_real,
                self.train_fake,
                self.ref_flat,
                cfg.images_per_side,
                cfg.patches_per_side,
                cfg.lam,
                self.g,
            )
        else:
            power, mmd2 = _pooled_power(
                det, self.train_real, self.train_fake, cfg.images_per_side, cfg.patches_per_side, cfg.lam, self.g
            )
        return -power, 1, {"test_power": float(power.detach()), "mmd2": float(mmd2.detach())}

    def end_epoch(self, run: Run, epoch: int, record: dict) -> None:
        k = run.model.detector.kernel
        with torch.no_grad():
            record.update(
                step=min(self.config.steps, (epoch + 1) * self.config.log_every),
                sigma_phi=float(k.log_sigma_phi.exp()),
                sigma_q=float(k.log_sigma_q.exp()),
                eps=float(k.eps),
            )
        run.record["final_test_power"] = record["test_power"]
        self.sampler_state = self.g.get_state()  # as the epoch ends (finish() draws from it again for the bank)

    def save(self, run: Run, epoch: int | None) -> None:
        """The model folder, then the sampler's state tagged with the same epoch (checked on resume)."""
        super().save(run, epoch)
        if epoch is not None:
            state, meta = {"generator": self.sampler_state}, {"epoch": str(epoch)}
            save_safetensors(state, run.out / STATE_DIR / SAMPLER, meta)

    def resume_from(self, run: Run) -> int:
        from aigi.checkpoints import read_config

        done = read_config(run.out).training["config"]["steps"]
        if (
            done % self.config.log_every and self.config.steps > done
        ):  # its last epoch was short: steps would be skipped
            raise ConfigError(f"{run.out}: a run of {done} steps (not a multiple of log_every) cannot be extended")
        epoch = resume_model(run)
        state, meta = read_safetensors(run.out / STATE_DIR / SAMPLER)
        if meta.get("epoch") != str(epoch):
            raise ConfigError(
                f"{run.out}: the last save was cut short (sampler from epoch {meta.get('epoch')}, weights "
                f"from epoch {epoch}); use a new --out folder"
            )
        self.g.set_state(state["generator"])
        self.sampler_state = state["generator"]
        return epoch

    def finish(self, run: Run) -> None:
        det = run.model.detector.cpu()
        det.eval()
        det.set_bank(self.ref_tokens, self.g)
        center, scale = _log_score_scale(
            det.log_score(torch.from_numpy(_scores(det, self.real))).numpy(),
            det.log_score(torch.from_numpy(_scores(det, self.fake))).numpy(),
        )
        det.score_center.fill_(center)
        det.score_scale.fill_(scale)
        if self.val_set is not None:
            run.record.update(
                {k: v for k, v in validation_metrics(run.model, self.config.val).items() if k == "val_auroc"}
            )


def _scores(det, tokens: torch.Tensor, chunk: int = 64) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([det.mmd2(tokens[i : i + chunk])[0] for i in range(0, len(tokens), chunk)]).numpy()
