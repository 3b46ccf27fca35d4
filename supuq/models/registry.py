"""Which network each `model.method` trains."""

from __future__ import annotations

from torch import nn

from ..config import LossConfig, ModelConfig
from .kendall_gal import KendallGalUNet
from .prob_unet import ProbUNet


def build_model(model_cfg: ModelConfig, loss_cfg: LossConfig | None = None) -> nn.Module:
    """The network for `model_cfg.method`: ProbUNet (supervised, kohl) or KendallGalUNet (kendall_gal)."""
    if model_cfg.method == "kendall_gal":
        return KendallGalUNet(model_cfg, loss_cfg)
    if model_cfg.method in ("supervised", "kohl"):
        return ProbUNet(model_cfg, loss_cfg)
    raise ValueError(f"unknown model.method {model_cfg.method!r}")
