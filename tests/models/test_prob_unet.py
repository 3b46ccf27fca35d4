"""Tests for supuq.models: weight-noise layer, U-Net, Probabilistic U-Net and the Kendall-Gal baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from supuq.config import LossConfig, ModelConfig, WeightNoiseConfig
from supuq.models import KendallGalUNet, LossTerms, ProbUNet, build_model
from supuq.models.bayes import BayesConv2d
from supuq.models.registry import METHODS
from supuq.models.unet import UNet

B, D, H = 2, 4, 32
FILTERS = (4, 8, 16)


def small_cfg(method: str = "supervised", **kw) -> ModelConfig:
    wn = WeightNoiseConfig(enabled=method != "kohl", **kw.pop("weight_noise", {}))
    base = dict(num_filters=FILTERS, convs_per_block=2, latent_dim=3, fcomb_convs=3, weight_noise=wn)
    return ModelConfig(method=method, **{**base, **kw})


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, 1, H, H, generator=g)
    masks = (torch.rand(B, D, H, H, generator=g) > 0.5).to(torch.uint8)
    return x, masks


def count_calls(module: nn.Module) -> list[tuple]:
    """Record the input shapes of every forward call of `module`."""
    calls: list[tuple] = []
    module.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    return calls


# ---------------------------------------------------------------- BayesConv2d


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


# Molchanov, Ashukha & Vetrov (2017), "Variational dropout sparsifies deep neural networks", eq. 14:
# -KL(q || log-uniform) ~ k1 sigmoid(k2 + k3 log alpha) - 0.5 log(1 + 1/alpha) - k1, alpha = sigma^2 / mu^2.
MOLCHANOV_K1, MOLCHANOV_K2, MOLCHANOV_K3 = 0.63576, 1.87320, 1.48695


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


# ---------------------------------------------------------------- U-Net


@pytest.mark.parametrize("convs", [1, 3])
def test_unet_output_shape_and_odd_size(convs):
    unet = UNet(1, FILTERS, convs, weight_noise=WeightNoiseConfig())
    assert unet(torch.rand(2, 1, 32, 32)).shape == (2, 4, 32, 32)
    assert unet(torch.rand(1, 1, 30, 30)).shape == (1, 4, 30, 30)  # 30 -> 15 -> 7 and back
    assert unet(torch.rand(2, 1, 16, 16), draws=3, shared_weights=True).shape == (2, 3, 4, 16, 16)


def test_unet_plain_head_rejects_weight_samples():
    unet = UNet(1, FILTERS, 2, weight_noise=WeightNoiseConfig(enabled=False))
    assert isinstance(unet.head, nn.Conv2d) and not unet.bayesian
    with pytest.raises(ValueError):
        unet(torch.rand(1, 1, 16, 16), draws=2, shared_weights=True)


# ---------------------------------------------------------------- ProbUNet


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


# ---------------------------------------------------------------- Kendall-Gal


def test_kendall_gal_loss_backward_and_sample(batch):
    torch.manual_seed(0)
    model = KendallGalUNet(small_cfg("kendall_gal"), LossConfig(kg_samples=5))
    assert not hasattr(model, "has_weight_noise")  # its weight samples are dropout masks, not weight noise
    x, masks = batch
    unet_calls = count_calls(model.unet)
    terms = model.loss(x, masks, n_train=100)
    assert unet_calls == [(B, 1, H, H)]  # graders are broadcast targets, not extra passes
    assert terms.kl_z.item() == terms.kl_w.item() == terms.supervised.item() == 0.0
    torch.testing.assert_close(terms.total, terms.recon + terms.l2)
    terms.total.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.log_sigma_head.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        logits = model.sample(x, weight_samples=2, latent_samples=3)
        plain = [model.unet(x) for _ in range(2)]
    assert logits.shape == (B, 2, 3, H, H)
    assert not torch.allclose(logits[:, 0], logits[:, 1])  # dropout masks differ although in eval mode
    torch.testing.assert_close(plain[0], plain[1])  # outside sampling, eval mode means no dropout


# ---------------------------------------------------------------- build_model


@pytest.mark.parametrize(
    "method, cls, samples_weights",
    [("supervised", ProbUNet, True), ("kohl", ProbUNet, False), ("kendall_gal", KendallGalUNet, True)],
)
def test_build_model(method, cls, samples_weights):
    cfg = small_cfg(method)
    model = build_model(cfg, LossConfig())
    assert type(model) is cls and model.model_cfg is cfg
    assert METHODS[method].samples_weights(cfg) is samples_weights
    if cls is ProbUNet:
        assert model.has_weight_noise is samples_weights


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


def test_cpu_pieces_give_the_same_nets_as_one_call(monkeypatch):
    """On the CPU the U-Net, the latent nets and the fcomb decoding of samples run large batches in pieces
    (models/pieces.py); the values must be those of one call, including explicit weight samples, which must be
    shared by every piece."""
    from supuq.models import pieces

    torch.manual_seed(0)
    model = ProbUNet(small_cfg()).eval()
    x = torch.rand(5, 1, H, H)
    pairs = torch.rand(7, 2, H, H)
    with torch.no_grad():
        torch.manual_seed(1)
        whole = (model.unet(x), model.unet(x, draws=3, shared_weights=True), model.posterior(pairs))
        torch.manual_seed(2)
        whole_samples = model.sample(x, weight_samples=2, latent_samples=4)
        monkeypatch.setattr(pieces, "CPU_PIECE_ELEMENTS", 2 * FILTERS[0] * H * H)  # 2 images per piece
        assert pieces.piece_size(x, FILTERS[0]) == 2
        torch.manual_seed(1)
        split = (model.unet(x), model.unet(x, draws=3, shared_weights=True), model.posterior(pairs))
        torch.manual_seed(2)
        split_samples = model.sample(x, weight_samples=2, latent_samples=4)  # fcomb decodes one map per piece
    torch.testing.assert_close(split_samples, whole_samples)
    assert split_samples.shape == (5, 2, 4, H, H)
    torch.testing.assert_close(split[0], whole[0])
    torch.testing.assert_close(split[1], whole[1])  # same 3 weight samples in every piece
    for a, b in zip(split[2], whole[2]):
        torch.testing.assert_close(a, b)
    assert split[1].shape == (5, 3, FILTERS[0], H, H)


def test_cpu_pieces_keep_gradients(monkeypatch, batch):
    """A training step in pieces reaches the same gradients as one call (local-reparameterisation noise off)."""
    from supuq.models import pieces

    x, masks = batch
    cfg = small_cfg(weight_noise={"init_log_sigma": -30.0})  # noise ~1e-13: draws do not matter
    grads = []
    for elements in (2**62, FILTERS[0] * H * H):  # one call, then one image per piece
        monkeypatch.setattr(pieces, "CPU_PIECE_ELEMENTS", elements)
        torch.manual_seed(0)
        model = ProbUNet(cfg, LossConfig(gamma=0.0))
        torch.manual_seed(1)
        model.loss(x, masks, n_train=10).total.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)
