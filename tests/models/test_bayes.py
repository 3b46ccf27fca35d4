"""supuq.models.bayes: the weight-noise convolution's KL terms (Gaussian and log-uniform priors) and its sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from supuq.models.bayes import BayesConv2d


# Molchanov, Ashukha & Vetrov (2017), "Variational dropout sparsifies deep neural networks", eq. 14:
# -KL(q || log-uniform) ~ k1 sigmoid(k2 + k3 log alpha) - 0.5 log(1 + 1/alpha) - k1, alpha = sigma^2 / mu^2.
MOLCHANOV_K1, MOLCHANOV_K2, MOLCHANOV_K3 = 0.63576, 1.87320, 1.48695


def test_bayes_gaussian_kl_closed_form():
    layer = BayesConv2d(1, 2, kernel_size=1, prior="gaussian", prior_std=2.0)
    with torch.no_grad():
        layer.weight_mu.copy_(torch.tensor([0.5, -1.0]).view(2, 1, 1, 1))
        layer.weight_log_sigma.copy_(torch.tensor([-1.0, 0.0]).view(2, 1, 1, 1))
    expected = 0.0
    for mu, ls in [(0.5, -1.0), (-1.0, 0.0)]:
        s = math.exp(ls)
        expected += math.log(2.0 / s) + (s**2 + mu**2) / (2 * 2.0**2) - 0.5
    assert layer.kl().item() == pytest.approx(expected, rel=1e-6)


def test_bayes_log_uniform_kl_finite_nonnegative_decreasing_in_alpha():
    layer = BayesConv2d(1, 1, kernel_size=1, prior="log_uniform")
    kls = []
    for log_sigma in torch.linspace(-8, 4, 13):  # mu = 1, so log alpha = 2 log sigma
        with torch.no_grad():
            layer.weight_mu.fill_(1.0)
            layer.weight_log_sigma.fill_(float(log_sigma))
        kls.append(layer.kl().item())
    assert all(math.isfinite(k) for k in kls)
    assert min(kls) > -1e-2  # the approximation dips at most slightly below 0
    assert all(a > b for a, b in zip(kls, kls[1:]))  # more noise relative to the mean -> closer to the prior
    # A weight with mean exactly 0 (alpha -> inf) stays finite and ~0.
    with torch.no_grad():
        layer.weight_mu.zero_()
    assert abs(layer.kl().item()) < 1e-2


def _log_uniform_kl_per_weight(mu: float, log_sigma: float) -> float:
    layer = BayesConv2d(1, 1, kernel_size=1, prior="log_uniform")
    with torch.no_grad():
        layer.weight_mu.fill_(mu)
        layer.weight_log_sigma.fill_(log_sigma)
    return layer.kl().item()


@pytest.mark.parametrize("mu, log_sigma", [(1.0, -4.0), (-0.3, -1.0), (2.0, 0.5), (0.05, 0.0), (1.0, 3.0)])
def test_bayes_log_uniform_kl_is_molchanov_eq_14(mu, log_sigma):
    """The layer's KL is the paper's formula with the paper's constants (written here, not read from bayes.py)."""
    alpha = math.exp(2 * log_sigma) / (mu * mu + 1e-8)
    sigmoid = 1 / (1 + math.exp(-(MOLCHANOV_K2 + MOLCHANOV_K3 * math.log(alpha))))
    neg_kl = MOLCHANOV_K1 * sigmoid - 0.5 * math.log1p(1 / alpha) - MOLCHANOV_K1
    assert _log_uniform_kl_per_weight(mu, log_sigma) == pytest.approx(-neg_kl, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("alpha", [0.01, 0.1, 1.0, 10.0, 100.0])
def test_bayes_log_uniform_kl_matches_a_numerical_kl(alpha):
    """Against the exact KL by quadrature (Molchanov et al. 2017, eq. 13, the constant fixed by KL -> 0 as
    alpha -> inf): KL = E_{e ~ N(1, alpha)} log|e| - 0.5 log alpha + (euler_gamma + log 2) / 2. The paper's
    approximation is within ~0.007 of it."""
    from scipy import integrate, stats

    sigma = math.sqrt(alpha)
    integrand = lambda x: math.log(abs(x)) * stats.norm.pdf(x, loc=1.0, scale=sigma)  # noqa: E731
    expected_log = sum(integrate.quad(integrand, lo, hi, limit=200)[0] for lo, hi in ((-math.inf, 0), (0, math.inf)))
    exact = expected_log - 0.5 * math.log(alpha) + (np.euler_gamma + math.log(2)) / 2
    assert _log_uniform_kl_per_weight(1.0, math.log(sigma)) == pytest.approx(exact, abs=0.01)


def test_bayes_local_reparameterisation_moments():
    torch.manual_seed(0)
    layer = BayesConv2d(2, 3, kernel_size=3, init_log_sigma=-1.0)
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        out = layer(x, draws=4000)  # [1, 4000, 3, 5, 5]
        mean = F.conv2d(x, layer.weight_mu, layer.bias, padding=1)
        var = F.conv2d(x * x, layer.weight_log_sigma.exp() ** 2, padding=1)
    assert out.shape == (1, 4000, 3, 5, 5)
    torch.testing.assert_close(out.mean(1), mean, atol=0.1, rtol=0.05)
    torch.testing.assert_close(out.var(1), var, atol=0.05, rtol=0.15)


def test_bayes_explicit_weight_samples_are_held_fixed():
    torch.manual_seed(0)
    layer = BayesConv2d(2, 3, kernel_size=3, init_log_sigma=-1.0)
    x = torch.randn(4, 2, 6, 6)
    w = layer.sample_weights(2)
    out = layer.forward_weights(x, w)  # [4, 2, 3, 6, 6]
    assert out.shape == (4, 2, 3, 6, 6)
    for m in range(2):
        torch.testing.assert_close(out[:, m], F.conv2d(x, w[m], layer.bias, padding=1))
    assert not torch.allclose(out[:, 0], out[:, 1])
