"""supuq.models.prob_unet: the Probabilistic U-Net's loss (every parameter group, the weighted sum, known values,
bf16 autocast), its efficient decoding and its samples' sources of variation."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from supuq.config import LossConfig
from supuq.models import LossTerms, ProbUNet, build_model
from supuq.models.bayes import BayesConv2d

from .conftest import B, D, H, count_calls, small_cfg


def test_prob_unet_loss_backward_reaches_every_parameter_group(batch):
    torch.manual_seed(0)
    model = ProbUNet(small_cfg(), LossConfig(gamma=10.0))
    x, masks = batch
    terms = model.loss(x, masks, n_train=100)
    assert isinstance(terms, LossTerms)
    assert all(t.dim() == 0 and torch.isfinite(t) for t in vars(terms).values())
    terms.total.backward()
    for name, module in [("unet", model.unet), ("prior", model.prior), ("posterior", model.posterior),
                         ("fcomb", model.fcomb)]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None for g in grads), name
        assert sum(g.abs().sum().item() for g in grads) > 0, name
    head = model.unet.head
    assert isinstance(head, BayesConv2d)
    assert head.weight_log_sigma.grad is not None and head.weight_log_sigma.grad.abs().sum() > 0
    # Both encoders' first convs get a gradient (through the KL and, for the prior, the supervised term).
    assert model.prior.encoder.blocks[0][0].weight.grad.abs().sum() > 0
    assert model.posterior.encoder.blocks[0][0].weight.grad.abs().sum() > 0


def test_prob_unet_total_is_the_weighted_sum(batch):
    cfg = LossConfig(beta=3.0, gamma=5.0, l2=1e-3)
    terms = ProbUNet(small_cfg(), cfg).loss(*batch, n_train=10)
    expected = terms.recon + 3.0 * terms.kl_z + terms.kl_w + terms.supervised + terms.l2
    torch.testing.assert_close(terms.total, expected)


def test_prob_unet_known_values_with_zero_logits(batch):
    """A zeroed last fcomb conv gives logit 0 everywhere: recon = H*W*log 2, supervised = gamma*log 2
    (p_m = 1/2, and BCE(p_g, 1/2) = log 2 whatever p_g). KL_w is the closed form over the head."""
    model = ProbUNet(small_cfg(weight_noise={"prior_std": 2.0}), LossConfig(gamma=7.0))
    with torch.no_grad():
        model.fcomb.convs[-1].weight.zero_()
        model.fcomb.convs[-1].bias.zero_()
    terms = model.loss(*batch, n_train=50)
    torch.testing.assert_close(terms.recon, torch.tensor(H * H * math.log(2)))
    torch.testing.assert_close(terms.supervised, torch.tensor(7.0 * math.log(2)))
    head = model.unet.head
    mu, sigma = head.weight_mu.detach(), head.weight_log_sigma.detach().exp()
    kl = (torch.log(2.0 / sigma) + (sigma**2 + mu**2) / 8.0 - 0.5).sum() / 50
    torch.testing.assert_close(terms.kl_w, kl)
    conv_weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(w is not head.weight_mu for w in conv_weights)
    torch.testing.assert_close(terms.l2, 1e-5 * sum((w.detach() ** 2).sum() for w in conv_weights))


def test_prob_unet_efficiency_contract(batch):
    model = ProbUNet(small_cfg(), LossConfig(gamma=10.0, supervision_samples=3))
    unet_calls, prior_calls = count_calls(model.unet), count_calls(model.prior)
    post_calls, fcomb_calls = count_calls(model.posterior), count_calls(model.fcomb)
    model.loss(*batch, n_train=100)
    assert unet_calls == [(B, 1, H, H)]  # once per image, not per grader
    assert prior_calls == [(B, 1, H, H)]
    assert post_calls == [(B * D, 2, H, H)]  # once per (image, grader) pair: concat(x, y - 0.5)
    assert fcomb_calls == [(B, 4, H, H), (B, 3, 4, H, H)]  # recon features, then one per p_m draw


def test_kohl_gamma_zero_skips_supervision(batch):
    model = build_model(small_cfg("kohl"), LossConfig(gamma=0.0))
    assert isinstance(model, ProbUNet) and not model.has_weight_noise
    fcomb_calls = count_calls(model.fcomb)
    terms = model.loss(*batch, n_train=100)
    assert terms.supervised.item() == 0.0 and terms.kl_w.item() == 0.0
    assert len(fcomb_calls) == 1  # reconstruction only: no p_m computed
    terms.total.backward()


def test_prob_unet_sample_shapes_and_sources_of_variation(batch):
    torch.manual_seed(0)
    model = ProbUNet(small_cfg(weight_noise={"init_log_sigma": -1.0})).eval()
    x, _ = batch
    unet_calls, prior_calls = count_calls(model.unet), count_calls(model.prior)
    with torch.no_grad():
        logits = model.sample(x, weight_samples=3, latent_samples=5)
    assert logits.shape == (B, 3, 5, H, H)
    assert len(unet_calls) == 1 and len(prior_calls) == 1
    # Under one weight sample the K latents differ; across weight samples (same latents) the maps differ.
    assert not torch.allclose(logits[:, 0, 0], logits[:, 0, 1])
    assert not torch.allclose(logits[:, 0, 0], logits[:, 1, 0])


def test_prob_unet_sample_without_weight_noise():
    model = ProbUNet(small_cfg("kohl"))
    x = torch.rand(1, 1, 16, 16)
    assert model.sample(x, weight_samples=1, latent_samples=4).shape == (1, 1, 4, 16, 16)
    with pytest.raises(ValueError, match="weight noise"):
        model.sample(x, weight_samples=2, latent_samples=4)


@pytest.mark.parametrize("shared_features", [True, False])
def test_fcomb_efficient_equals_tiled(shared_features):
    torch.manual_seed(0)
    fcomb = ProbUNet(small_cfg()).fcomb
    n, k = 2, 5
    feats = torch.randn(n, 4, 8, 8) if shared_features else torch.randn(n, k, 4, 8, 8)
    z = torch.randn(n, k, 3)
    fast, slow = fcomb(feats, z), fcomb.forward_tiled(feats, z)
    assert fast.shape == slow.shape == (n, k, 8, 8)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["supervised", "kendall_gal"])
def test_loss_is_float32_and_finite_under_bf16_autocast(method):
    """bf16 autocast (train.amp) must not saturate p_m's clamp or the pixel sums."""
    torch.manual_seed(0)
    model = build_model(small_cfg(method), LossConfig(gamma=10.0, kg_samples=4))
    x = torch.rand(2, 1, 16, 16)
    masks = (torch.rand(2, 3, 16, 16) > 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = model.loss(x, masks, n_train=10)
    assert terms.total.dtype == torch.float32 and torch.isfinite(terms.total)
    terms.total.backward()


def test_loss_rejects_nonpositive_n_train(batch):
    with pytest.raises(ValueError, match="n_train"):
        ProbUNet(small_cfg()).loss(*batch, n_train=0)
