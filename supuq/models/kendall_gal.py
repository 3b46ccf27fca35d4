"""Kendall & Gal (2017) baseline: MC-dropout U-Net with a heteroscedastic logit head.

Epistemic: M dropout masks (dropout in the deepest blocks, kept on at sampling time). Aleatoric: Gaussian
noise on the logit, logit = mu + sigma * eps, learned through the logsumexp sigmoid likelihood.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..config import LossConfig, ModelConfig
from ..losses import LossTerms, kendall_gal_nll
from .unet import UNet, conv_weight_l2

LOG_SIGMA_MIN, LOG_SIGMA_MAX = -10.0, 5.0  # keeps exp(log_sigma) finite and the noise non-degenerate


class KendallGalUNet(nn.Module):
    """U-Net (plain last conv, MC dropout at `model_cfg.dropout`) + 1x1 heads for logit mean and log sigma.

    Attributes: `unet`, `mean_head`, `log_sigma_head`, `model_cfg`, `loss_cfg`. Its epistemic source is MC
    dropout, not weight noise: `sample`'s M "weight samples" are M dropout masks.
    """

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig | None = None):
        super().__init__()
        f = model_cfg.num_filters
        self.model_cfg = model_cfg
        self.loss_cfg = loss_cfg if loss_cfg is not None else LossConfig()
        self.unet = UNet(model_cfg.in_channels, f, model_cfg.convs_per_block, dropout=model_cfg.dropout)
        self.mean_head = nn.Conv2d(f[0], 1, 1)
        self.log_sigma_head = nn.Conv2d(f[0], 1, 1)

    def heads(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        """feats [N, C, H, W] -> (mu, log_sigma) [N, 1, H, W], log_sigma clamped to its range."""
        return self.mean_head(feats), self.log_sigma_head(feats).clamp(LOG_SIGMA_MIN, LOG_SIGMA_MAX)

    def loss(self, x: Tensor, masks: Tensor, n_train: int) -> LossTerms:
        """x [B, in, H, W], masks [B, D, H, W] in {0, 1}: Kendall-Gal NLL (T = `loss_cfg.kg_samples`
        logit draws, every grader a target) + L2. Dropout follows the module's train/eval mode.
        `n_train` is accepted for a common interface; there is no KL term to scale."""
        del n_train
        mu, log_sigma = self.heads(self.unet(x))  # one U-Net pass per image; graders broadcast in the NLL
        eps = torch.randn((self.loss_cfg.kg_samples, *mu.shape), dtype=mu.dtype, device=mu.device)
        recon = kendall_gal_nll(mu, log_sigma, masks, eps)
        return LossTerms.without_weight_terms(recon, self.loss_cfg.l2 * conv_weight_l2(self))

    def sample(self, x: Tensor, weight_samples: int = 1, latent_samples: int = 1) -> Tensor:
        """Logits [B, M, K, H, W]: M dropout masks (on even in eval mode) x K logit-noise draws.

        The M masks come from one U-Net pass over the batch repeated M times (dropout draws independent
        masks per batch element). Wrap in `torch.no_grad()` for evaluation.
        """
        b, m, k = x.shape[0], weight_samples, latent_samples
        with self.unet.mc_dropout():
            mu, log_sigma = self.heads(self.unet(x.repeat_interleave(m, dim=0)))  # [B*M, 1, H, W]
        mu = mu.reshape(b, m, 1, *mu.shape[-2:])
        sigma = torch.exp(log_sigma).reshape(b, m, 1, *mu.shape[-2:])
        return mu + sigma * torch.randn((b, m, k, *mu.shape[-2:]), dtype=mu.dtype, device=mu.device)
