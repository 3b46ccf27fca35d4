"""supuq.models.soft_label: BCE against the graders' mean, one map repeated, Bernoulli binary samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from supuq.models.registry import binary_samples
from supuq.models.soft_label import SoftLabelUNet

from .conftest import B, H, small_cfg


def test_loss_is_bce_against_the_grader_mean(batch):
    torch.manual_seed(0)
    model = SoftLabelUNet(small_cfg("soft_label"))
    x, masks = batch
    terms = model.loss(x, masks, n_train=10)
    logits = model.logits(x)
    p_g = masks.float().mean(dim=1)
    by_hand = -(p_g * F.logsigmoid(logits) + (1 - p_g) * F.logsigmoid(-logits)).sum(dim=(1, 2)).mean()
    torch.testing.assert_close(terms.recon, by_hand)
    torch.testing.assert_close(terms.total, terms.recon + terms.l2)
    assert terms.kl_z.item() == terms.supervised.item() == 0.0


def test_samples_repeat_one_map_and_binary_samples_are_bernoulli(batch):
    torch.manual_seed(0)
    model = SoftLabelUNet(small_cfg("soft_label")).eval()
    x, _ = batch
    with torch.no_grad():
        logits = model.sample(x, latent_samples=4000)
    assert logits.shape == (B, 1, 4000, H, H)
    torch.testing.assert_close(logits[:, :, 0], logits[:, :, -1])
    binary = binary_samples(model.model_cfg, logits)
    freq = binary.float().mean(dim=2)[:, 0]  # foreground frequency over 4000 draws ~ sigmoid(logit)
    assert (freq - torch.sigmoid(logits[:, 0, 0])).abs().max() < 0.04
    assert binary[:, 0].float().var(dim=1).max() > 0  # the draws differ, unlike thresholds of one map
