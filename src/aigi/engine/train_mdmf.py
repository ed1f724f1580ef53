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

import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from aigi.errors import ConfigError
from aigi.backbones import BackboneSpec
from aigi.checkpoints import Model, ModelConfig, build_model, save_model
from aigi.data.folders import DataError, discover
from aigi.data.transforms import EvalProtocol
from aigi.detectors.mmd import mmd2_unbiased, mmd2_variance
from aigi.engine.inference import extract_features
from aigi.engine.train_state import JsonLog
from aigi.progress import progress_iter


CRITERIA = {
    "image": "(mean s_fake - mean s_real) / sqrt(var s_fake + var s_real + lam), s = per-image MMD^2_b to a reference-bank sample",
    "pooled": "mmd2_u / sqrt(var_H1 + lam) between pooled real and generated patches",
}


def _tokens(model: Model, folder, what: str, progress: bool, label: int | None = None) -> tuple[torch.Tensor, np.ndarray, list[str]]:
    image_set = discover(folder)
    samples = [s for s in image_set.samples if label is None or s.label == label]
    ext = extract_features(model, [s.path for s in samples], progress=progress, description=f"patch tokens: {what}")
    ok = ext.ok
    if not ok:
        raise DataError(f"{folder}: none of the {len(samples)} images could be read")
    bad = [f"{samples[i].path}: {r}" for i, r in sorted(ext.errors.items())]
    return torch.from_numpy(ext.stacked(ok)), np.array([samples[i].label for i in ok]), bad


def _scores(det, tokens: torch.Tensor, chunk: int = 64) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([det.mmd2(tokens[i : i + chunk])[0] for i in range(0, len(tokens), chunk)]).numpy()


def _log_score_scale(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    """``(center, scale)`` for ``logit = (s - center) / scale`` on log-scores ``s`` of the training images: the midpoint
    of the two classes' medians, in units of their robust spread (1.4826 MAD, averaged over the classes).

    Not a logistic fit: the training images are the ones the kernel was fitted to, so a fit on them is overconfident
    (a steep slope), and a steep slope pushes unseen generators' logits past what a float64 sigmoid can tell apart
    from 1. The threshold is calibrated on validation data afterwards anyway."""
    real, fake = real[np.isfinite(real)], fake[np.isfinite(fake)]
    if not len(real) or not len(fake):
        raise ConfigError("MDMF training produced no finite scores for one class: the kernel diverged (try a lower --lr)")
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


def train_mdmf(data, out, reference=None, val=None, backbone: BackboneSpec | None = None, params: dict | None = None,
               protocol: EvalProtocol | None = None, steps: int = 300, lr: float = 1e-3, images_per_side: int = 16,
               patches_per_side: int = 512, lam: float = 1e-8, seed: int = 0, calibrate_on=None,
               target_real_acc: float | None = None, criterion: str = "image", progress: bool = True) -> Model:
    if criterion not in ("image", "pooled"):
        raise ConfigError(f"criterion must be 'image' or 'pooled', got {criterion!r}")
    out = Path(out)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    # score_form "log": the scale fitted below is on log MMD^2
    config = ModelConfig(detector="mdmf", params={**(params or {}), "score_form": "log"}, backbone=backbone or BackboneSpec(options={"feature_level": "stage6"}),
                         protocol=protocol or EvalProtocol(format_align=True))
    model = build_model(config)
    det = model.detector
    tokens, labels, bad = _tokens(model, data, "train", progress)
    if set(labels.tolist()) != {0, 1}:
        raise DataError(f"{data}: MDMF training needs real and generated images (found labels {sorted(set(labels.tolist()))})")
    real, fake = tokens[labels == 0], tokens[labels == 1]
    ref_tokens, _, bad_ref = _tokens(model, reference, "reference", progress, label=0) if reference is not None else (real, None, [])
    det.fit_standardisation(real)
    sample, _ = det.patches(tokens[torch.randperm(len(tokens), generator=g)[:32]].float())
    det.median_bandwidths(sample.reshape(-1, sample.shape[-1])[:2048])
    params_ = [p for n, p in det.named_parameters() if not n.startswith("backbone.")]
    opt = torch.optim.AdamW(params_, lr=lr, weight_decay=1e-4)
    log = JsonLog(out / "train_log.jsonl")
    det.train()
    t0, history = time.perf_counter(), []
    ref_flat = det.patches(ref_tokens.float())[0].reshape(-1, real.shape[-1]) if criterion == "image" else None
    for step in progress_iter(range(steps), total=steps, description="MDMF (test power)", enabled=progress):
        if criterion == "image":
            power, mmd2 = _image_level_power(det, real, fake, ref_flat, images_per_side, patches_per_side, lam, g)
        else:
            power, mmd2 = _pooled_power(det, real, fake, images_per_side, patches_per_side, lam, g)
        opt.zero_grad(set_to_none=True)
        (-power).backward()
        opt.step()
        history.append(float(power.detach()))
        if (step + 1) % 50 == 0 or step + 1 == steps:
            with torch.no_grad():
                log.write(step=step + 1, test_power=float(np.mean(history[-50:])), mmd2=float(mmd2),
                          sigma_phi=float(det.kernel.log_sigma_phi.exp()), sigma_q=float(det.kernel.log_sigma_q.exp()),
                          eps=float(det.kernel.eps), seconds=round(time.perf_counter() - t0, 1))
    det.eval()
    det.set_bank(ref_tokens, g)
    center, scale = _log_score_scale(det.log_score(torch.from_numpy(_scores(det, real))).numpy(),
                           det.log_score(torch.from_numpy(_scores(det, fake))).numpy())
    det.score_center.fill_(center)
    det.score_scale.fill_(scale)
    info = {"data": str(data), "reference": str(reference or data), "reference_images": int(len(ref_tokens)), "steps": steps,
            "lr": lr, "images_per_side": images_per_side, "patches_per_side": patches_per_side, "criterion": CRITERIA[criterion],
            "final_test_power": float(np.mean(history[-50:])), "skipped_files": bad + bad_ref}
    if val is not None:
        vt, vy, _ = _tokens(model, val, "val", progress)
        if len(set(vy.tolist())) == 2:
            info["val_auroc"] = float(roc_auc_score(vy, _scores(det, vt)))
    model.config.training = info
    if calibrate_on is not None:
        from aigi.engine.calibrate import calibrate

        calibrate(model, calibrate_on, target_real_acc, progress=progress)
    save_model(model, out)
    return model
