"""Maximum mean discrepancy between sets of patch features, exact and fast (building blocks for MDMF).

Kernel: the deep-kernel mixture of learned-kernel MMD two-sample tests (Liu et al., ICML 2020),

    k(x, y) = [(1 - eps) * kappa(phi(x), phi(y)) + eps] * q(x, y),

with ``kappa`` a Gaussian of bandwidth ``sigma_phi`` on projected features and ``q`` a Gaussian of bandwidth
``sigma_q`` on the inputs. A product of Gaussians is a Gaussian on the concatenation ``[phi(x)/sigma_phi,
x/sigma_q]``, so the kernel is a two-component mixture of Gaussians:

    k = (1 - eps) * G([phi/s_phi, x/s_q]) + eps * G(x/s_q),     G(u, v) = exp(-|u - v|^2 / 2).

- :func:`mmd2_unbiased` / :func:`mmd2_biased`: the U- and V-statistics from kernel matrices;
- :func:`mmd2_variance`: the variance of the unbiased estimate under the alternative (for the test-power
  criterion ``mmd2 / sqrt(var + lam)``, Sutherland et al. 2017, Liu et al. 2020);
- :class:`RandomFourierFeatures`: ``z(u)`` with ``E[z(u).z(v)] = G(u, v)``, so that the biased MMD^2 against a
  fixed reference set is ``|mean z(X) - mean z(R)|^2``, and the reference set is summarised by one vector
  (its kernel mean embedding): the per-image cost no longer depends on the reference set's size.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances ``[..., n, m]`` (clamped at 0 against rounding)."""
    d = (x * x).sum(-1, keepdim=True) + (y * y).sum(-1).unsqueeze(-2) - 2 * x @ y.transpose(-1, -2)
    return d.clamp_min_(0)


def gaussian(x: torch.Tensor, y: torch.Tensor, sigma: float | torch.Tensor = 1.0) -> torch.Tensor:
    return torch.exp(-sq_dists(x, y) / (2 * sigma**2))


class DeepKernel(nn.Module):
    """The mixture kernel above with learnable ``sigma_phi``, ``sigma_q`` (log-parametrised) and ``eps`` (logit)."""

    def __init__(self, sigma_phi: float = 1.0, sigma_q: float = 1.0, eps: float = 0.1) -> None:
        super().__init__()
        self.log_sigma_phi = nn.Parameter(torch.tensor(math.log(sigma_phi)))
        self.log_sigma_q = nn.Parameter(torch.tensor(math.log(sigma_q)))
        self.eps_logit = nn.Parameter(torch.tensor(math.log(eps / (1 - eps))))

    @property
    def eps(self) -> torch.Tensor:
        return torch.sigmoid(self.eps_logit)

    def scaled(self, phi: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The two Gaussian components' inputs: ``[phi/s_phi, x/s_q]`` and ``x/s_q``."""
        xq = x / self.log_sigma_q.exp()
        return torch.cat([phi / self.log_sigma_phi.exp(), xq], -1), xq

    def forward(self, phi_a: torch.Tensor, a: torch.Tensor, phi_b: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        ua, qa = self.scaled(phi_a, a)
        ub, qb = self.scaled(phi_b, b)
        eps = self.eps
        return (1 - eps) * gaussian(ua, ub) + eps * gaussian(qa, qb)


def mmd2_unbiased(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 (U-statistic; diagonals of ``kxx`` and ``kyy`` left out). Batched over leading dims."""
    n, m = kxx.shape[-1], kyy.shape[-1]
    sxx = (kxx.sum((-1, -2)) - kxx.diagonal(dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
    syy = (kyy.sum((-1, -2)) - kyy.diagonal(dim1=-2, dim2=-1).sum(-1)) / (m * (m - 1))
    return sxx + syy - 2 * kxy.mean((-1, -2))


def mmd2_biased(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> torch.Tensor:
    """Biased MMD^2 (V-statistic): ``|mean phi(X) - mean phi(Y)|^2`` in the kernel's feature space."""
    return kxx.mean((-1, -2)) + kyy.mean((-1, -2)) - 2 * kxy.mean((-1, -2))


def mmd2_variance(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor) -> torch.Tensor:
    """Variance estimate of the unbiased MMD^2 under the alternative, for equal sample sizes (Liu et al. 2020,
    eq. 5): ``4/n^3 sum_i (sum_j H_ij)^2 - 4/n^4 (sum_ij H_ij)^2`` with ``H = Kxx + Kyy - Kxy - Kyx``."""
    n = kxx.shape[-1]
    if kyy.shape[-1] != n or kxy.shape[-1] != n:
        raise ValueError("the variance estimate needs equally many samples on both sides")
    h = kxx + kyy - kxy - kxy.transpose(-1, -2)
    row = h.sum(-1)
    return 4.0 / n**3 * (row * row).sum(-1) - 4.0 / n**4 * h.sum((-1, -2)) ** 2


def test_power(kxx: torch.Tensor, kyy: torch.Tensor, kxy: torch.Tensor, lam: float = 1e-8) -> torch.Tensor:
    """The criterion learned-kernel MMD tests maximise: ``mmd2_u / sqrt(var_H1 + lam)``."""
    return mmd2_unbiased(kxx, kyy, kxy) / torch.sqrt(mmd2_variance(kxx, kyy, kxy).clamp_min(0) + lam)


test_power.__test__ = False  # not a pytest test despite its name


class RandomFourierFeatures(nn.Module):
    """``z(u) = sqrt(2/D) cos(W u + b)`` with ``W ~ N(0, I)``, ``b ~ U[0, 2pi)``: ``z(u).z(v)`` estimates the unit
    Gaussian kernel ``exp(-|u - v|^2 / 2)`` (Rahimi & Recht 2007). Fixed (buffers), seeded, so it is saved with a model."""

    def __init__(self, dim: int, features: int = 4096, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("weight", torch.randn(features, dim, generator=g))
        self.register_buffer("phase", torch.rand(features, generator=g) * 2 * math.pi)
        self.features = features

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        return math.sqrt(2.0 / self.features) * torch.cos(u @ self.weight.T + self.phase)


def mean_embedding(z: torch.Tensor) -> torch.Tensor:
    """Kernel mean embedding of a set of feature rows ``[..., n, D] -> [..., D]``."""
    return z.mean(-2)


def mmd2_from_embeddings(mu_x: torch.Tensor, mu_y: torch.Tensor) -> torch.Tensor:
    """Biased MMD^2 from two mean embeddings: ``|mu_x - mu_y|^2``."""
    return ((mu_x - mu_y) ** 2).sum(-1)
