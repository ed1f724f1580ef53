"""MMD building blocks: estimators, the deep-kernel mixture, the test-power criterion and the random-feature fast path."""

import math

import torch

from aigi.detectors.mmd import (
    DeepKernel,
    RandomFourierFeatures,
    gaussian,
    mean_embedding,
    mmd2_biased,
    mmd2_from_embeddings,
    mmd2_unbiased,
    mmd2_variance,
    test_power,
)


def _kernels(x, y, sigma=1.0):
    return gaussian(x, x, sigma), gaussian(y, y, sigma), gaussian(x, y, sigma)


def test_unbiased_mmd_is_zero_in_expectation_for_identical_distributions():
    g = torch.Generator().manual_seed(0)
    vals = torch.stack(
        [mmd2_unbiased(*_kernels(torch.randn(64, 8, generator=g), torch.randn(64, 8, generator=g))) for _ in range(200)]
    )
    assert abs(vals.mean().item()) < 3 * vals.std().item() / math.sqrt(len(vals))  # zero within 3 standard errors
    assert (vals < 0).any()  # unbiased: it does go below zero


def test_mmd_grows_with_the_shift():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 8, generator=g)
    means = []
    for shift in (0.0, 0.25, 0.5, 1.0, 2.0):
        y = torch.randn(128, 8, generator=g) + shift
        means.append(mmd2_unbiased(*_kernels(x, y)).item())
    assert all(a < b for a, b in zip(means, means[1:])), means


def test_biased_minus_unbiased_is_the_diagonal_term():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(20, 3, generator=g), torch.randn(30, 3, generator=g)
    kxx, kyy, kxy = _kernels(x, y)
    n, m = 20, 30
    # V-statistic = U-statistic re-weighted with the unit diagonal of a Gaussian kernel
    expect = (kxx.sum() - n) / (n * n) + n / (n * n) + (kyy.sum() - m) / (m * m) + m / (m * m) - 2 * kxy.mean()
    assert torch.allclose(mmd2_biased(kxx, kyy, kxy), expect)


def test_deep_kernel_is_the_stated_mixture_and_learns():
    k = DeepKernel(sigma_phi=0.7, sigma_q=2.0, eps=0.2)
    phi_a, phi_b, a, b = torch.randn(5, 4), torch.randn(6, 4), torch.randn(5, 3), torch.randn(6, 3)
    kappa = torch.exp(-(torch.cdist(phi_a, phi_b) ** 2) / (2 * 0.7**2))
    q = torch.exp(-(torch.cdist(a, b) ** 2) / (2 * 2.0**2))
    assert torch.allclose(k(phi_a, a, phi_b, b), ((1 - 0.2) * kappa + 0.2) * q, atol=1e-5)
    k(phi_a, a, phi_b, b).sum().backward()
    assert all(p.grad is not None and p.grad.abs() > 0 for p in k.parameters())


def test_variance_and_test_power():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(100, 4, generator=g)
    same, shifted = torch.randn(100, 4, generator=g), torch.randn(100, 4, generator=g) + 0.7
    assert mmd2_variance(*_kernels(x, shifted)) > 0
    assert test_power(*_kernels(x, shifted)) > 3 * abs(test_power(*_kernels(x, same)))


def test_random_features_approximate_the_gaussian_kernel_and_the_mmd():
    rff = RandomFourierFeatures(6, features=16384, seed=0)
    g = torch.Generator().manual_seed(4)
    u, v = torch.randn(40, 6, generator=g) * 0.5, torch.randn(50, 6, generator=g) * 0.5
    approx = rff(u) @ rff(v).T
    assert (approx - gaussian(u, v)).abs().max() < 0.05
    x, y = torch.randn(256, 6, generator=g) * 0.5, torch.randn(2000, 6, generator=g) * 0.5 + 0.3
    exact = mmd2_biased(*_kernels(x, y))
    fast = mmd2_from_embeddings(mean_embedding(rff(x)), mean_embedding(rff(y)))
    assert abs(fast - exact) < 0.1 * exact, (fast, exact)


def test_random_features_are_reproducible_from_the_seed():
    a, b = RandomFourierFeatures(3, 64, seed=7), RandomFourierFeatures(3, 64, seed=7)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.phase, b.phase)
    assert not torch.equal(a.weight, RandomFourierFeatures(3, 64, seed=8).weight)
