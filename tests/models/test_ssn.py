"""supuq.models.ssn: the Stochastic Segmentation Network's distribution, loss and samples."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import LowRankMultivariateNormal, Normal

from supuq.config import LossConfig
from supuq.losses import reconstruction, ssn_nll
from supuq.models.ssn import StochasticSegNet

from .conftest import B, D, H, small_cfg


def test_ssn_nll_with_one_sample_is_the_pixelwise_bce():
    """Rank 0 and one Monte-Carlo sample: the loss is the pixel-summed BCE of that sample against each grader."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 3, 5, 5, generator=g)  # [M=1, N, H, W]
    masks = (torch.rand(3, 4, 5, 5, generator=g) > 0.5).float()
    expected = reconstruction(logits[0].unsqueeze(1).expand(-1, 4, -1, -1).flatten(0, 1), masks.flatten(0, 1))
    torch.testing.assert_close(ssn_nll(logits, masks), expected)


def test_ssn_nll_is_minus_log_of_the_mean_likelihood():
    """Two samples, one 2-pixel image, one grader, by hand: -log((L1 + L2) / 2) with L_m = prod_pixels p(y | l_m)."""
    logits = torch.tensor([[[[2.0, -1.0]]], [[[0.5, 0.0]]]])  # [M=2, N=1, H=1, W=2]
    masks = torch.tensor([[[[1.0, 0.0]]]])  # [N=1, D=1, 1, 2]
    s = torch.sigmoid
    lik = [float(s(l[0, 0, 0]) * (1 - s(l[0, 0, 1]))) for l in logits]
    expected = -torch.log(torch.tensor(sum(lik) / 2))
    torch.testing.assert_close(ssn_nll(logits, masks), expected)


def test_distribution_is_low_rank_and_samples_follow_it(batch):
    torch.manual_seed(0)
    model = StochasticSegNet(small_cfg("ssn", ssn_rank=3))
    x, masks = batch
    dist = model.distribution(x)
    assert isinstance(dist, LowRankMultivariateNormal)
    assert dist.loc.shape == (B, H * H) and dist.cov_factor.shape == (B, H * H, 3)
    with torch.no_grad():
        draws = model.logit_samples(x, 4000)  # [S, B, H, W]
    flat = draws.flatten(2)[:, 0, :6]  # six pixels of image 0: their empirical covariance matches P P^T + D
    empirical = torch.cov(flat.T)
    expected = dist.covariance_matrix[0, :6, :6].detach().float()
    torch.testing.assert_close(empirical, expected, atol=0.15 * float(expected.abs().max()) + 1e-3, rtol=0)
    torch.testing.assert_close(flat.mean(0), dist.loc[0, :6].detach().float(), atol=0.1, rtol=0)
    assert isinstance(StochasticSegNet(small_cfg("ssn", ssn_rank=0)).distribution(x), Normal)


def test_loss_backward_and_sample_grid(batch):
    torch.manual_seed(0)
    model = StochasticSegNet(small_cfg("ssn", ssn_rank=2), LossConfig(ssn_samples=5))
    x, masks = batch
    terms = model.loss(x, masks, n_train=10)
    assert terms.kl_z.item() == terms.kl_w.item() == terms.supervised.item() == 0.0
    torch.testing.assert_close(terms.total, terms.recon + terms.l2)
    terms.total.backward()
    for head in (model.mean_head, model.log_diag_head, model.factor_head):
        assert head.weight.grad.abs().sum() > 0
    with torch.no_grad():
        logits = model.sample(x, weight_samples=1, latent_samples=3)
    assert logits.shape == (B, 1, 3, H, H) and not torch.allclose(logits[:, 0, 0], logits[:, 0, 1])
    try:
        model.sample(x, weight_samples=2)
    except ValueError as err:
        assert "no weight samples" in str(err)
    else:
        raise AssertionError("SSN drew weight samples it does not have")


def test_training_lowers_the_loss(batch):
    torch.manual_seed(0)
    model = StochasticSegNet(small_cfg("ssn", ssn_rank=2), LossConfig(ssn_samples=4))
    x, _ = batch
    masks = (x > 0.5).expand(-1, D, -1, -1)  # learnable from the image, unlike the batch's random masks
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = float(model.loss(x, masks, 10).total)
    for _ in range(60):
        opt.zero_grad()
        model.loss(x, masks, 10).total.backward()
        opt.step()
    assert float(model.loss(x, masks, 10).total) < 0.5 * first


def test_samples_and_loss_stay_finite_when_the_covariance_is_ill_conditioned(batch):
    """What training reaches (the 2026-12 study's SSN trials failed there): a tiny diagonal D (log D clamped at
    its minimum) under a large factor P makes I + P^T D^-1 P too ill-conditioned for a float32 Cholesky factor,
    which torch's float32 LowRankMultivariateNormal computes on construction. Sampling does not need it."""
    torch.manual_seed(0)
    model = StochasticSegNet(small_cfg("ssn", ssn_rank=10), LossConfig(ssn_samples=4))
    torch.nn.init.constant_(model.log_diag_head.bias, -50.0)
    torch.nn.init.zeros_(model.log_diag_head.weight)
    torch.nn.init.normal_(model.factor_head.weight, std=30.0)
    x, masks = batch
    mu, factor, diag = model.logit_gaussian(x)
    with pytest.raises(torch.linalg.LinAlgError):  # the float32 factorisation the model no longer computes
        LowRankMultivariateNormal(mu, factor, diag)
    assert torch.isfinite(model.loss(x, masks, 10).total)
    assert torch.isfinite(model.logit_samples(x, 3)).all()
    assert torch.isfinite(model.distribution(x).covariance_matrix).all()  # float64 copes
