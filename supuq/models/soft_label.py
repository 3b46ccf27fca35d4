"""The soft-label reference: a plain U-Net trained with BCE against the graders' mean mask p_g.

No latent, no weight noise, no dropout: one deterministic probability map p per image, which is its whole model of
the graders (aleatoric = p (1 - p), epistemic 0). The simplest calibrated baseline: a method that claims calibrated
aleatoric uncertainty has to beat it. Its binary samples are independent Bernoulli(p) draws per pixel (the
registry's "bernoulli" rule), so that binary-sample metrics (GED, `ncc_binary`) see its spread; thresholding p would
give S identical samples.
"""

from __future__ import annotations

from torch import Tensor, nn

from ..config import LossConfig, ModelConfig
from ..losses import LossTerms, reconstruction
from .unet import UNet, conv_weight_l2


class SoftLabelUNet(nn.Module):
    """U-Net (plain last conv) + a 1x1 logit head. Attributes: `unet`, `head`, `model_cfg`, `loss_cfg`."""

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig | None = None):
        super().__init__()
        self.model_cfg = model_cfg
        self.loss_cfg = loss_cfg if loss_cfg is not None else LossConfig()
        self.unet = UNet(model_cfg.in_channels, model_cfg.num_filters, model_cfg.convs_per_block)
        self.head = nn.Conv2d(model_cfg.num_filters[0], 1, 1)

    def logits(self, x: Tensor) -> Tensor:
        """x [B, in, H, W] -> logit of p [B, H, W]."""
        return self.head(self.unet(x))[:, 0]

    def loss(self, x: Tensor, masks: Tensor, n_train: int) -> LossTerms:
        """BCE(p_g, p) summed over pixels, averaged over images, + L2; masks [B, D, H, W] in {0, 1}."""
        del n_train
        recon = reconstruction(self.logits(x), masks.float().mean(dim=1))
        return LossTerms.without_weight_terms(recon, self.loss_cfg.l2 * conv_weight_l2(self))

    def sample(self, x: Tensor, weight_samples: int = 1, latent_samples: int = 1) -> Tensor:
        """Logits [B, 1, K, H, W]: the one map repeated K times (a view; binary samples come from the Bernoulli rule)."""
        if weight_samples != 1:
            raise ValueError(f"weight_samples={weight_samples}: the soft-label U-Net has no weight samples (use M=1)")
        logits = self.logits(x)
        return logits[:, None, None].expand(-1, 1, latent_samples, -1, -1)
