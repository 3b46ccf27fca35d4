"""Stochastic Segmentation Networks (Monteiro et al., NeurIPS 2020), for one foreground class.

The logit map of an image is one multivariate Gaussian over its H*W pixels, N(mu, P P^T + diag(D)), from three
1x1 heads on the U-Net's features: mean mu, log-diagonal (D = exp(.) + eps) and a rank-R factor P (R =
`model.ssn_rank`; R = 0 leaves a diagonal Gaussian, i.e. independent pixels). A sample is mu + P z1 + sqrt(D) z2
(the reparameterisation of torch's `LowRankMultivariateNormal`, which `distribution` returns).

Likelihood: a **sigmoid** per pixel on the sampled logit (the paper uses a K-class softmax; with one foreground
class a 2-class softmax over (0, l) is exactly sigmoid(l), so the two are the same model with half the heads).
Loss: `losses.ssn_nll` over M = `loss.ssn_samples` logit samples, every grader's mask a target. SSN has no weight
noise or dropout: it has no epistemic source, so it samples on a 1 x S grid and its epistemic map is 0.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import LowRankMultivariateNormal, Normal

from ..config import LossConfig, ModelConfig
from ..losses import LossTerms, ssn_nll
from .unet import UNet, conv_weight_l2

DIAG_EPS = 1e-5  # keeps D positive, as in the paper's code
LOG_DIAG_MIN, LOG_DIAG_MAX = -10.0, 10.0  # exp() stays finite whatever the head outputs


class StochasticSegNet(nn.Module):
    """U-Net (plain last conv) + 1x1 heads for mu, log D and P.

    Attributes: `unet`, `mean_head`, `log_diag_head`, `factor_head` (None when R = 0), `model_cfg`, `loss_cfg`.
    """

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig | None = None):
        super().__init__()
        f = model_cfg.num_filters
        self.model_cfg = model_cfg
        self.loss_cfg = loss_cfg if loss_cfg is not None else LossConfig()
        self.unet = UNet(model_cfg.in_channels, f, model_cfg.convs_per_block)
        self.mean_head = nn.Conv2d(f[0], 1, 1)
        self.log_diag_head = nn.Conv2d(f[0], 1, 1)
        rank = model_cfg.ssn_rank
        self.factor_head = nn.Conv2d(f[0], rank, 1) if rank > 0 else None

    def logit_gaussian(self, x: Tensor) -> tuple[Tensor, Tensor | None, Tensor]:
        """(mu [B, H*W], P [B, H*W, R] or None when R = 0, D [B, H*W]) of x [B, in, H, W], in float32."""
        feats = self.unet(x)
        mu = self.mean_head(feats).float().flatten(1)
        diag = torch.exp(self.log_diag_head(feats).float().flatten(1).clamp(LOG_DIAG_MIN, LOG_DIAG_MAX)) + DIAG_EPS
        factor = None if self.factor_head is None else self.factor_head(feats).float().flatten(2).transpose(1, 2)
        return mu, factor, diag

    def distribution(self, x: Tensor) -> LowRankMultivariateNormal | Normal:
        """The logit distribution of x [B, in, H, W] as a torch distribution, event [B, H*W] (a `Normal` of batch
        shape [B, H*W] when R = 0), for densities and covariances. In float64: its constructor factors
        I + P^T D^-1 P (Cholesky), which fails in float32 once training makes D small and P large."""
        mu, factor, diag = (None if t is None else t.double() for t in self.logit_gaussian(x))
        if factor is None:
            return Normal(mu, diag.sqrt())
        return LowRankMultivariateNormal(mu, factor, diag)

    def logit_samples(self, x: Tensor, count: int) -> Tensor:
        """`count` reparameterised logit maps [count, B, H, W] of x [B, in, H, W]: mu + P z1 + sqrt(D) z2, the
        reparameterisation of `LowRankMultivariateNormal.rsample`, computed directly because sampling needs no
        Cholesky factor (the distribution's constructor would compute one, and it can fail; see `distribution`)."""
        mu, factor, diag = self.logit_gaussian(x)
        noise = torch.randn((count, *mu.shape), dtype=mu.dtype, device=mu.device)
        logits = mu + diag.sqrt() * noise  # [count, B, H*W]
        if factor is not None:
            z = torch.randn((count, mu.shape[0], factor.shape[-1], 1), dtype=mu.dtype, device=mu.device)
            logits = logits + (factor @ z).squeeze(-1)  # [B, H*W, R] @ [count, B, R, 1] -> [count, B, H*W, 1]
        return logits.view(count, x.shape[0], *x.shape[-2:])

    def loss(self, x: Tensor, masks: Tensor, n_train: int) -> LossTerms:
        """x [B, in, H, W], masks [B, D, H, W] in {0, 1}: `ssn_nll` over `loss_cfg.ssn_samples` logit samples + L2.
        `n_train` is accepted for a common interface; there is no KL term to scale."""
        del n_train
        recon = ssn_nll(self.logit_samples(x, self.loss_cfg.ssn_samples), masks)
        return LossTerms.without_weight_terms(recon, self.loss_cfg.l2 * conv_weight_l2(self))

    def sample(self, x: Tensor, weight_samples: int = 1, latent_samples: int = 1) -> Tensor:
        """Logits [B, 1, K, H, W]: K draws of the logit Gaussian (M must be 1: SSN has no weight samples)."""
        if weight_samples != 1:
            raise ValueError(f"weight_samples={weight_samples}: SSN has no weight samples (use M=1)")
        return self.logit_samples(x, latent_samples).transpose(0, 1).unsqueeze(1)
