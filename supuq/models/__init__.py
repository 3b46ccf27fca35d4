"""Networks: the Probabilistic U-Net with weight noise (supervised, Kohl) and the Kendall-Gal baseline.

Both expose `loss(x, masks, n_train) -> LossTerms` and `sample(x, weight_samples, latent_samples)
-> logits [B, M, K, H, W]`, so training and evaluation never branch on the method.
"""

from __future__ import annotations

from torch import nn

from ..config import LossConfig, ModelConfig
from ..losses import LossTerms
from .kendall_gal import KendallGalUNet
from .prob_unet import ProbUNet

__all__ = ["KendallGalUNet", "LossTerms", "ProbUNet", "build_model"]


def build_model(model_cfg: ModelConfig, loss_cfg: LossConfig | None = None) -> nn.Module:
    """The network for `model_cfg.method`: ProbUNet (supervised, kohl) or KendallGalUNet (kendall_gal)."""
    if model_cfg.method == "kendall_gal":
        return KendallGalUNet(model_cfg, loss_cfg)
    if model_cfg.method in ("supervised", "kohl"):
        return ProbUNet(model_cfg, loss_cfg)
    raise ValueError(f"unknown model.method {model_cfg.method!r}")
