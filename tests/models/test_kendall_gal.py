"""supuq.models.kendall_gal: the Kendall & Gal U-Net's loss reaches its parameters, and its samples."""

from __future__ import annotations

import torch

from supuq.config import LossConfig
from supuq.models import KendallGalUNet

from .conftest import B, H, small_cfg
from .conftest import count_calls


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
