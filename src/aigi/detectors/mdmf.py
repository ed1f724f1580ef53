"""MDMF (arXiv 2605.09296): an image is a set of patches; its score is the MMD between its projected patches and
those of a reference bank of real images.

- Patch unit: the backbone's tokens, optionally average-pooled over ``pool x pool`` cells. EfficientNet-Lite0's
  stage6 cells are 32 px (the paper's best patch size) and measured best on aigi-mini val; its stage4 cells are
  16 px, so ``pool=2`` there also gives 32-px patches (``benchmarks/mdmf.py sweep``).
- Patch Forensic Signature (PFS): an MLP ``phi`` applied to each patch token.
- Kernel: the deep-kernel mixture of :class:`aigi.detectors.mmd.DeepKernel` on ``(phi(x), x)``.
- Score: biased MMD^2 between the image's patches and the reference bank; the logit is ``(log MMD^2 - center) /
  scale`` with ``center`` between the training reals' and generated images' log-scores and ``scale`` their spread,
  so scores keep their order through the sigmoid; the threshold is calibrated on validation data.
  ``estimator="fast"``: the bank is summarised by its kernel mean embedding in random Fourier features (one vector;
  cost per image independent of the bank's size). ``estimator="exact"``: kernel sums against a stored subsample
  of the bank's patches (cost grows with it).

This file holds the detector (what a model folder stores and how it scores); training is
:func:`aigi.engine.train_mdmf.train_mdmf` (test-power criterion).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from aigi.backbones.base import Backbone
from aigi.detectors import DETECTORS
from aigi.detectors.base import MAX_SLOTS, MAX_WIDTH, Detector, DetectorParams, Output
from aigi.detectors.derived import DerivedCache
from aigi.detectors.mmd import DeepKernel, RandomFourierFeatures


class MDMFParams(DetectorParams):
    pool: int = Field(
        1, ge=1, le=1024, description="average-pool the token grid over pool x pool cells: the patch unit"
    )
    proj_hidden: int = Field(256, ge=1, le=MAX_WIDTH)
    proj_dim: int = Field(64, ge=1, le=MAX_WIDTH, description="dimension of the Patch Forensic Signature")
    sigma_phi: float = Field(
        1.0, gt=0, allow_inf_nan=False, description="initial kernel bandwidth on projected patches (learned)"
    )
    sigma_q: float = Field(
        10.0, gt=0, allow_inf_nan=False, description="initial kernel bandwidth on raw tokens (learned)"
    )
    eps: float = Field(
        0.1, gt=0, lt=1, allow_inf_nan=False, description="initial weight of the raw-token kernel alone (learned)"
    )
    estimator: Literal["fast", "exact"] = Field(
        "fast", description="fast: the bank's random-feature mean embedding; exact: kernel sums against a bank sample"
    )
    rff_features: int = Field(
        2048, ge=16, le=MAX_WIDTH, description="random Fourier features per kernel component (fast estimator)"
    )
    rff_seed: int = Field(0, ge=0, lt=1 << 62)
    bank_patches: int = Field(4096, ge=2, le=MAX_SLOTS, description="reference patches kept for the exact estimator")
    score_form: Literal["linear", "log"] = Field(
        "linear",
        description="logit = (f(MMD^2) - center) / scale with f = log (what train_mdmf fits) or the identity"
        " (MDMF folders written before the log form; kept so they still score as they were calibrated)",
    )


@DETECTORS.register("mdmf")
class MDMF(Detector):
    name = "mdmf"
    Params = MDMFParams
    cacheable = True
    feature_kind = "patches"
    patch_map_label = "patch contribution to the MMD"

    def __init__(self, params: MDMFParams, backbone: Backbone) -> None:
        super().__init__(params, backbone)
        d = backbone.dim
        self.project = nn.Sequential(
            nn.Linear(d, params.proj_hidden), nn.GELU(), nn.Linear(params.proj_hidden, params.proj_dim)
        )
        self.kernel = DeepKernel(params.sigma_phi, params.sigma_q, params.eps)
        f = params.rff_features
        self.rff_joint = RandomFourierFeatures(params.proj_dim + d, f, params.rff_seed)
        self.rff_raw = RandomFourierFeatures(d, f, params.rff_seed + 1)
        # The reference bank, filled by training: its mean embedding (fast) and a patch subsample (exact).
        self.register_buffer("bank_embedding", torch.zeros(2 * f))
        self.register_buffer("bank_tokens", torch.zeros(params.bank_patches, d))
        self.register_buffer("bank_self", torch.zeros(()))  # mean k(R, R) over the subsample, for the exact estimator
        self.register_buffer("token_mean", torch.zeros(d))  # patch standardisation, set from training reals
        self.register_buffer("token_std", torch.ones(d))
        self.register_buffer("score_center", torch.zeros(()))
        self.register_buffer("score_scale", torch.ones(()))
        self._phi_bank = DerivedCache()

    # -- patches ------------------------------------------------------------------------------------------------
    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[B, N, D]`` (row-major grid), before pooling: the cache is shared by every patch unit."""
        return self.backbone(pixels).patches

    def patches(self, tokens: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Pool the token grid over ``pool x pool`` cells: ``[B, N, D] -> [B, n, D]`` and the pooled grid."""
        b, n, d = tokens.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"MDMF expects a square token grid, got {n} tokens")
        p = self.params.pool
        if p == 1:
            return self._standardise(tokens), (side, side)
        grid = tokens.transpose(1, 2).reshape(b, d, side, side)
        pooled = F.avg_pool2d(grid, p, p, ceil_mode=True)
        return self._standardise(pooled.flatten(2).transpose(1, 2)), tuple(pooled.shape[-2:])

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.token_mean) / self.token_std

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Random-feature embedding of patches ``[..., D] -> [..., 2F]``: ``z(x).z(y)`` estimates ``k(x, y)``."""
        u, xq = self.kernel.scaled(self.project(x), x)
        eps = self.kernel.eps
        return torch.cat([torch.sqrt(1 - eps) * self.rff_joint(u), torch.sqrt(eps) * self.rff_raw(xq)], -1)

    # -- scoring --------------------------------------------------------------------------------------------------
    def mmd2(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """Per image: biased MMD^2 to the bank ``[B]``, each patch's share of it ``[B, n]``, and the patch grid."""
        x, grid = self.patches(tokens.float())
        if self.params.estimator == "fast":
            z = self.embed(x)  # [B, n, 2F]
            diff = z.mean(1) - self.bank_embedding  # [B, 2F]
            mmd2 = (diff * diff).sum(-1)
            share = (z - self.bank_embedding) @ diff.unsqueeze(-1)  # [B, n, 1]: patch i's term of |mean_i z_i - mu|^2
            return mmd2, share.squeeze(-1) / x.shape[1], grid
        phi_x = self.project(x)
        kxx = self.kernel(phi_x, x, phi_x, x)  # [B, n, n]
        kxr = self._bank_kernel_mean(phi_x, x)  # [B, n]: mean kernel of each patch against every bank patch
        mmd2 = kxx.mean((-1, -2)) + self.bank_self - 2 * kxr.mean(-1)
        share = (kxx.mean(-1) - 2 * kxr + self.bank_self) / x.shape[1]
        return mmd2, share, grid

    BLOCK_FLOATS = 1 << 24  # kernel block size, images x patches x bank patches: 64 MiB per float32 temporary

    def _bank_projection(self) -> torch.Tensor:
        """``phi(bank)``, cached while the bank and the projection are unchanged (:mod:`aigi.detectors.derived`)."""
        return self._phi_bank.get(
            (self.bank_tokens, *self.project.parameters()), lambda: self.project(self.bank_tokens)
        )

    def clear_cache(self) -> None:
        """Forget the cached bank projection: needed only after editing weights through ``.data``."""
        self._phi_bank.clear()

    def _bank_kernel_mean(self, phi_x: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        bank, phi_r = self.bank_tokens, self._bank_projection()
        rows = max(1, x.shape[0] * x.shape[1])
        step = max(16, min(len(bank), self.BLOCK_FLOATS // rows))
        total = x.new_zeros(x.shape[:-1])
        for i in range(0, len(bank), step):
            total = total + self.kernel(phi_x, x, phi_r[i : i + step], bank[i : i + step]).sum(-1)
        return total / len(bank)

    def _apply(self, fn, recurse: bool = True):  # .to() / .half() drop the cached projection
        self._phi_bank.clear()
        return super()._apply(fn, recurse)

    MMD_FLOOR = 1e-12

    @staticmethod
    def log_score(mmd2: torch.Tensor) -> torch.Tensor:
        """``log MMD^2``: MMD^2 is heavy-tailed (a generated image can sit orders of magnitude further from the bank
        than a real one), so a linear map of it saturates the sigmoid and ties images at P = 1; its log does not."""
        return torch.log(mmd2.clamp_min(MDMF.MMD_FLOOR))

    def score(self, features: torch.Tensor) -> Output:
        mmd2, share, grid = self.mmd2(features)
        s = self.log_score(mmd2) if self.params.score_form == "log" else mmd2
        logit = (s - self.score_center) / self.score_scale
        return Output(logit=logit, patch_map=share.reshape(share.shape[0], *grid))

    # -- fitting helpers ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def fit_standardisation(self, tokens: torch.Tensor) -> None:
        """Per-channel mean and spread of (pooled) patch tokens, so kernels see unit-scale inputs."""
        self.token_mean.zero_()
        self.token_std.fill_(1.0)
        x, _ = self.patches(tokens.float())
        flat = x.reshape(-1, x.shape[-1])
        self.token_mean.copy_(flat.mean(0))
        self.token_std.copy_(flat.std(0).clamp_min(1e-6))

    @torch.no_grad()
    def median_bandwidths(self, x: torch.Tensor) -> None:
        """Set the kernel bandwidths to the median pairwise distance of patches ``[n, D]`` (the usual heuristic)."""
        phi = self.project(x)
        for values, log_sigma in ((x, self.kernel.log_sigma_q), (phi, self.kernel.log_sigma_phi)):
            d = torch.cdist(values, values)
            log_sigma.fill_(float(d[d > 0].median().clamp_min(1e-3).log()))

    # -- the reference bank ----------------------------------------------------------------------------------------
    SELF_PATCHES = 8192

    @torch.no_grad()
    def set_bank(self, tokens: torch.Tensor, generator: torch.Generator | None = None, chunk: int = 64) -> None:
        """Summarise reference images' tokens ``[M, N, D]``: mean embedding over all their patches, and a random
        subsample of ``bank_patches`` patches (with its self-similarity) for the exact estimator."""
        total, count, kept = torch.zeros_like(self.bank_embedding), 0, []
        for i in range(0, len(tokens), chunk):
            x, _ = self.patches(tokens[i : i + chunk].float())
            flat = x.reshape(-1, x.shape[-1])
            total += self.embed(flat).sum(0)
            count += flat.shape[0]
            kept.append(flat)
        self.bank_embedding.copy_(total / count)
        pool = torch.cat(kept)
        pick = torch.randperm(len(pool), generator=generator)[: self.params.bank_patches]
        if len(pick) < self.params.bank_patches:  # fewer patches than slots: repeat (keeps the buffer's shape)
            pick = pick.repeat(math.ceil(self.params.bank_patches / len(pick)))[: self.params.bank_patches]
        bank = pool[pick]
        self.bank_tokens.copy_(bank)
        # mean k(R, R): the same constant for every image (it shifts scores, never their order); from at most
        # SELF_PATCHES patches, since the full double sum is quadratic in the bank's size
        sub = bank[torch.randperm(len(bank), generator=generator)[: self.SELF_PATCHES]]
        phi = self.project(sub)
        self.bank_self.copy_(self.kernel(phi, sub, phi, sub).mean())
