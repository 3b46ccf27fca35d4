"""supuq.models.phiseg: PHiSeg's loss terms and samples (shapes, known values, the prior conditioned on the
posterior's samples), its config check and training on tiny data (`supuq train --method phiseg`: tests/cli/test_main.py)."""

from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

from supuq.config import LossConfig, ModelConfig, load_config
from supuq.errors import ConfigError
from supuq.losses import kl_spatial_gaussians, reconstruction
from supuq.models import build_model
from supuq.models.phiseg import PHiSeg

from .conftest import B, D, FILTERS, H, count_calls, small_cfg

Z = 2  # latent channels per level in these tests


@pytest.fixture(autouse=True)
def _grad_mode():
    yield
    torch.set_grad_enabled(True)


def phiseg(levels: int = 3, **loss) -> PHiSeg:
    return PHiSeg(small_cfg("phiseg", phiseg_levels=levels, phiseg_latent_dim=Z), LossConfig(**loss))


def pair_input(x: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """The posterior's input of every (image, grader) pair, image-major: [B*D, in+1, H, W]."""
    y = masks.float()
    return torch.cat([x.repeat_interleave(D, dim=0), y.flatten(0, 1).unsqueeze(1) - 0.5], dim=1)


def pin_posterior_sigma(model: PHiSeg, log_sigma: float = -30.0) -> None:
    """Make every posterior level's log sigma the constant `log_sigma`: z ~ q is then its mean (to ~1e-13)."""
    with torch.no_grad():
        for head in model.posterior.heads:
            head.weight[Z:].zero_()
            head.bias[Z:].fill_(log_sigma)


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_phiseg_loss_terms_latent_shapes_and_samples(batch, levels):
    torch.manual_seed(0)
    model = build_model(small_cfg("phiseg", phiseg_levels=levels, phiseg_latent_dim=Z), LossConfig(beta=2.0))
    assert isinstance(model, PHiSeg)
    x, masks = batch
    terms = model.loss(x, masks, n_train=100)
    assert all(t.dim() == 0 and torch.isfinite(t) for t in vars(terms).values())
    assert terms.kl_w == 0 and terms.supervised == 0 and terms.kl_z >= 0
    torch.testing.assert_close(terms.total, terms.recon + 2.0 * terms.kl_z + terms.l2)
    # Latent l at resolution R - L + l: the L coarsest of the R = 3 levels, finest first.
    q = model.posterior(pair_input(x, masks))
    r0 = len(FILTERS) - levels
    assert [tuple(z.shape) for z in q.z] == [(B * D, Z, H >> (r0 + i), H >> (r0 + i)) for i in range(levels)]
    with torch.no_grad():
        samples = model.sample(x, weight_samples=1, latent_samples=5)
    assert samples.shape == (B, 1, 5, H, H) and torch.isfinite(samples).all()
    assert (samples[:, 0, 0] - samples[:, 0, 1]).abs().max() > 0  # K prior samples differ
    with pytest.raises(ValueError, match="no weight samples"):
        model.sample(x, weight_samples=2, latent_samples=2)


def test_phiseg_runs_the_prior_encoder_once_per_image(batch):
    model = phiseg()
    prior_calls, post_calls = count_calls(model.prior.encoder), count_calls(model.posterior.encoder)
    model.loss(*batch, n_train=10)
    assert prior_calls == [(B, 1, H, H)]  # its top-down part runs per pair, on repeated features
    assert post_calls == [(B * D, 2, H, H)]  # concat(x, y - 0.5) per (image, grader) pair


def test_config_refuses_more_latent_levels_than_resolutions():
    with pytest.raises(ValidationError, match=r"model.phiseg_levels \(4\) exceeds the 3 .*model.num_filters"):
        ModelConfig(method="phiseg", num_filters=(8, 16, 32), phiseg_levels=4)
    with pytest.raises(ConfigError, match=r"model.phiseg_levels \(3\) exceeds the 2 resolution levels"):
        load_config(None, ["model.method=phiseg", "model.num_filters=[4,8]", "model.phiseg_levels=3"])
    # unset: a latent level at every resolution but the finest, whatever the U-Net depth
    assert load_config(None, ["model.method=phiseg", "model.num_filters=[4,8]"]).model.latent_levels == 1
    assert ModelConfig(method="phiseg", num_filters=(8, 16, 32, 64)).latent_levels == 3
    ModelConfig(method="phiseg", num_filters=(8, 16, 32), phiseg_levels=3)
    ModelConfig(method="kohl", num_filters=(8, 16), phiseg_levels=3)  # other methods do not read the key
    with pytest.raises(ValidationError):
        ModelConfig(method="phiseg", phiseg_latent_dim=0)


def test_kl_spatial_gaussians_hand_values():
    # Unit shift of the mean at sigma 1: 1/2 per element; [2, 3, 4, 5] maps -> 60 elements -> 30 per map.
    mu_q, zero = torch.ones(2, 3, 4, 5), torch.zeros(2, 3, 4, 5)
    torch.testing.assert_close(kl_spatial_gaussians(mu_q, zero, zero, zero), torch.full((2,), 30.0))
    # KL(N(0, e^{2a}) || N(0, 1)) = -a + (e^{2a} - 1) / 2 per element, a = log 2: -log 2 + 3/2.
    ls_q = torch.full((1, 2, 3, 3), math.log(2.0))
    expected = 18 * (-math.log(2.0) + 1.5)
    torch.testing.assert_close(kl_spatial_gaussians(torch.zeros_like(ls_q), ls_q, torch.zeros_like(ls_q),
                                                    torch.zeros_like(ls_q)), torch.tensor([expected]))


def test_kl_is_zero_when_the_posterior_is_the_prior(batch):
    """The posterior gets the prior's weights and ignores y (its first conv's y-channel weights zeroed): given
    the same samples above, every level's q and p are the same Gaussian, so the KL is 0 at every level."""
    torch.manual_seed(0)
    model = phiseg()
    state = {k: v.clone() for k, v in model.prior.state_dict().items()}
    first = "encoder.blocks.0.0.weight"
    state[first] = torch.cat([state[first], torch.zeros_like(state[first][:, :1])], dim=1)  # [C, in+1, 3, 3]
    model.posterior.load_state_dict(state)
    # Non-trivial Gaussians (the heads start near 0): with the heads' default init both are far from N(0, I).
    with torch.no_grad():
        for p_head, q_head in zip(model.prior.heads, model.posterior.heads):
            torch.nn.init.normal_(p_head.weight, std=0.3)
            q_head.weight.copy_(p_head.weight)
    terms = model.loss(*batch, n_train=10)
    torch.testing.assert_close(terms.kl_z, torch.tensor(0.0), atol=1e-5, rtol=0)
    # ... while an unrelated posterior gives a clearly positive KL.
    assert phiseg().loss(*batch, n_train=10).kl_z > 0


def test_recon_and_kl_with_fixed_latents(batch):
    """With the posterior's sigma pinned near 0, z ~ q is q's mean: recon is `reconstruction` of those latents
    decoded against each pair's own grader, and kl_z is computed with the prior conditioned on those same
    (posterior) samples, not on the prior's own."""
    torch.manual_seed(0)
    model = phiseg()
    pin_posterior_sigma(model)
    with torch.no_grad():  # means that respond to their inputs (the heads start near 0), so the choice shows
        for head in model.posterior.heads:
            torch.nn.init.normal_(head.weight[:Z], std=0.5)
        for head in model.prior.heads:
            torch.nn.init.normal_(head.weight, std=0.5)
    x, masks = batch
    terms = model.loss(x, masks, n_train=10)
    torch.set_grad_enabled(False)  # the checks below only read values (restored by the autouse fixture)
    q = model.posterior(pair_input(x, masks))
    logits = model.likelihood(q.mu, (H, H))  # [B*D, H, W]
    expected_recon = reconstruction(logits, masks.float().flatten(0, 1))
    torch.testing.assert_close(terms.recon, expected_recon)
    # A different grader order gives a different number: the pairing is image-major, grader-minor.
    assert abs(float(reconstruction(logits, masks.flip(1).float().flatten(0, 1)) - expected_recon)) > 1e-3

    feats = [f.repeat_interleave(D, dim=0) for f in model.prior.features(x)]
    p = model.prior.top_down(feats, given=q.mu)
    kl = sum(kl_spatial_gaussians(*s) for s in zip(q.mu, q.log_sigma, p.mu, p.log_sigma)).mean()
    torch.testing.assert_close(terms.kl_z, kl)
    own = model.prior.top_down(feats)  # conditioned on its own samples instead
    kl_own = sum(kl_spatial_gaussians(*s) for s in zip(q.mu, q.log_sigma, own.mu, own.log_sigma)).mean()
    assert abs(float(kl_own - kl)) > 1e-3 * float(kl)


def test_adam_steps_lower_the_loss_and_gradients_reach_every_net(batch):
    torch.manual_seed(0)
    model = phiseg(l2=1e-5)
    x = batch[0]
    # Graders who threshold the image at slightly different levels: learnable, unlike independent random pixels.
    masks = (x > torch.tensor([0.4, 0.45, 0.5, 0.55]).view(1, D, 1, 1)).to(torch.uint8)

    def loss_at_fixed_noise() -> float:
        torch.manual_seed(123)  # the same posterior draws every time: differences come from the weights
        with torch.no_grad():
            return float(model.loss(x, masks, n_train=10).total)

    before = loss_at_fixed_noise()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(20):
        opt.zero_grad(set_to_none=True)
        model.loss(x, masks, n_train=10).total.backward()
        if step == 0:
            for name, net in [("prior", model.prior), ("posterior", model.posterior),
                              ("likelihood", model.likelihood)]:
                grads = [p.grad for p in net.parameters()]
                assert all(g is not None for g in grads), name
                assert sum(float(g.abs().sum()) for g in grads) > 0, name
            # The prior's encoder learns through the KL alone; its first conv must see a gradient.
            assert model.prior.encoder.blocks[0][0].weight.grad.abs().sum() > 0
        opt.step()
    assert loss_at_fixed_noise() < before - 2.0  # nats per pair; identical posterior draws, so no noise in it
