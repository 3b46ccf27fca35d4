"""Networks: the Probabilistic U-Net with weight noise (supervised, Kohl) and the Kendall-Gal baseline.

Both expose `loss(x, masks, n_train) -> LossTerms` and `sample(x, weight_samples, latent_samples)
-> logits [B, M, K, H, W]`, so training and evaluation never branch on the method.
"""

from ..losses import LossTerms
from .kendall_gal import KendallGalUNet
from .prob_unet import ProbUNet
from .registry import build_model

__all__ = ["KendallGalUNet", "LossTerms", "ProbUNet", "build_model"]
