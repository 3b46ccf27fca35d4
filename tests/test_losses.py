"""Known-answer tests for supuq.losses (hand-computed values and torch.distributions references)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

from supuq.losses import (
    LossTerms,
    kendall_gal_nll,
    kl_gaussians,
    l2_penalty,
    reconstruction,
    supervised_aleatoric,
)
from supuq.train import LOSS_KEYS


def test_kl_gaussians_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu_q, ls_q, mu_p, ls_p = (torch.randn(5, 6, generator=g) for _ in range(4))
    ref = kl_divergence(
        Independent(Normal(mu_q, ls_q.exp()), 1),
        Independent(Normal(mu_p, ls_p.exp()), 1),
    )
    got = kl_gaussians(mu_q, ls_q, mu_p, ls_p)
    assert got.shape == (5,)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_kl_gaussians_zero_for_identical():
    mu, ls = torch.randn(3, 4), torch.randn(3, 4)
    torch.testing.assert_close(kl_gaussians(mu, ls, mu, ls), torch.zeros(3))


def test_reconstruction_sums_pixels_and_averages_batch():
    # logit 0 -> BCE = log 2 per pixel, whatever the target; 2 x 3 x 4 pixels per item.
    logits = torch.zeros(5, 3, 4)
    targets = torch.randint(0, 2, (5, 3, 4)).float()
    torch.testing.assert_close(reconstruction(logits, targets), torch.tensor(12 * math.log(2)))
    # One item with a hand value: logit 2, target 1 -> log(1 + e^-2).
    one = reconstruction(torch.full((1, 1, 1), 2.0), torch.ones(1, 1, 1))
    torch.testing.assert_close(one, torch.tensor(math.log1p(math.exp(-2.0))))


def test_supervised_aleatoric_known_value_and_clamp():
    p_m = torch.tensor([0.25, 0.5])
    p_g = torch.tensor([1.0, 0.5])
    expected = (-math.log(0.25) + math.log(2.0)) / 2
    torch.testing.assert_close(supervised_aleatoric(p_m, p_g), torch.tensor(expected))
    # A saturated prediction stays finite thanks to the clamp.
    assert torch.isfinite(supervised_aleatoric(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 0.0])))


def test_kendall_gal_nll_matches_naive_logsumexp():
    g = torch.Generator().manual_seed(1)
    n, d, t, h, w = 2, 3, 7, 4, 5
    mu = torch.randn(n, 1, h, w, generator=g)
    log_sigma = torch.randn(n, 1, h, w, generator=g) * 0.5
    targets = torch.randint(0, 2, (n, d, h, w), generator=g).float()
    eps = torch.randn(t, n, 1, h, w, generator=g)
    # Naive: materialise [T, N, D, H, W] likelihoods, average probabilities over T per pixel.
    logits = mu + log_sigma.exp() * eps
    lik = torch.where(targets.bool(), torch.sigmoid(logits), torch.sigmoid(-logits))  # broadcast over D
    ref = -torch.log(lik.mean(0)).sum((2, 3)).mean()
    torch.testing.assert_close(kendall_gal_nll(mu, log_sigma, targets, eps), ref, rtol=1e-5, atol=1e-5)


def test_kendall_gal_nll_with_zero_noise_is_bce():
    mu = torch.randn(2, 1, 3, 3)
    targets = torch.randint(0, 2, (2, 4, 3, 3)).float()
    eps = torch.zeros(5, 2, 1, 3, 3)
    got = kendall_gal_nll(mu, torch.zeros_like(mu), targets, eps)
    ref = reconstruction(mu.expand(-1, 4, -1, -1).flatten(0, 1), targets.flatten(0, 1))
    torch.testing.assert_close(got, ref)


def test_l2_penalty():
    assert l2_penalty([torch.tensor([1.0, 2.0]), torch.tensor([[3.0]])]).item() == pytest.approx(14.0)
    assert l2_penalty([]).item() == 0.0


def test_loss_terms_as_dict():
    """Each field by name (not by position) to its own value, as a plain float, also from a tensor in a graph."""
    weight = torch.tensor(3.0, requires_grad=True)
    given = {"supervised": 0.25, "l2": 1e-3, "total": 41.5, "kl_w": 7.0, "recon": 30.0, "kl_z": -2.5}
    terms = LossTerms(**{name: weight * value / 3.0 for name, value in given.items()})
    got = terms.as_dict()
    assert set(got) == set(given) == set(LOSS_KEYS)  # the keys the trainer sums and logs as train/<key>
    assert all(type(v) is float for v in got.values())
    assert got == pytest.approx(given, rel=1e-6)
