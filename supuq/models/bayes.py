"""The weight-noise layer: a 2D convolution with a factorised Gaussian posterior over its weights.

q(w) = prod N(mu, sigma^2) over the kernel entries; the bias is deterministic. Two ways to sample:

- `forward(x)` / `forward(x, draws=n)`: local reparameterisation (Kingma et al. 2015). The pre-activation
  given x is Gaussian with mean conv(x, mu) and variance conv(x^2, sigma^2); noise is drawn per output
  activation. Low-variance gradients, used for training. The n draws share the two convolutions, so
  extra draws cost one elementwise op each.
- `sample_weights(n)` + `forward_weights(x, w)`: explicit weight samples w ~ q(w), each one held fixed
  over the whole batch and every pixel. The evaluation grid needs this: a weight sample m is shared by
  its K latent samples, so that variation over m is epistemic and variation over k aleatoric.

Noise is on in both train and eval mode: it is the model's epistemic source, not a regulariser.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Molchanov et al. (2017), eq. 14: -KL(q || log-uniform) ~ k1 sigmoid(k2 + k3 log alpha) - 0.5 log1p(1/alpha) - k1
_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695


class BayesConv2d(nn.Module):
    """3x3 (or k x k) 'same' conv with weights ~ N(weight_mu, exp(weight_log_sigma)^2).

    Parameters: `weight_mu`, `weight_log_sigma` [out, in, k, k]; `bias` [out] (deterministic).
    Input [B, in, H, W] -> output [B, out, H, W] (or [B, n, out, H, W] for n draws).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        prior: Literal["gaussian", "log_uniform"] = "gaussian",
        prior_std: float = 1.0,
        init_log_sigma: float = -5.0,
    ):
        super().__init__()
        if prior not in ("gaussian", "log_uniform"):
            raise ValueError(f"unknown weight prior {prior!r}; choose gaussian or log_uniform")
        self.padding = kernel_size // 2
        self.prior = prior
        self.prior_std = float(prior_std)
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.weight_mu = nn.Parameter(torch.empty(shape))
        self.weight_log_sigma = nn.Parameter(torch.full(shape, float(init_log_sigma)))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        # Same init as the plain convs of the U-Net (He normal for a following ReLU).
        nn.init.kaiming_normal_(self.weight_mu, nonlinearity="relu")

    def forward(self, x: Tensor, draws: int | None = None) -> Tensor:
        """Local reparameterisation. x [B, in, H, W] -> [B, out, H, W], or [B, draws, out, H, W] when
        `draws` is given (independent noise per draw, mean and variance convolutions shared)."""
        mean = F.conv2d(x, self.weight_mu, self.bias, padding=self.padding)
        var = F.conv2d(x * x, torch.exp(2.0 * self.weight_log_sigma), padding=self.padding)
        std = torch.sqrt(var + 1e-10)  # the epsilon keeps the sqrt's gradient finite where var == 0
        if draws is None:
            return mean + std * torch.randn_like(mean)
        noise = torch.randn((mean.shape[0], draws, *mean.shape[1:]), dtype=mean.dtype, device=mean.device)
        return mean.unsqueeze(1) + std.unsqueeze(1) * noise

    def sample_weights(self, n: int = 1) -> Tensor:
        """n explicit draws w ~ q(w) (reparameterised): [n, out, in, k, k]."""
        noise = torch.randn((n, *self.weight_mu.shape), dtype=self.weight_mu.dtype, device=self.weight_mu.device)
        return self.weight_mu + torch.exp(self.weight_log_sigma) * noise

    def forward_weights(self, x: Tensor, weights: Tensor) -> Tensor:
        """Convolve with n fixed weight samples at once. x [B, in, H, W], weights [n, out, in, k, k]
        -> [B, n, out, H, W]. One convolution with n*out output channels rather than n passes."""
        n, out = weights.shape[:2]
        y = F.conv2d(x, weights.flatten(0, 1), self.bias.repeat(n), padding=self.padding)
        return y.unflatten(1, (n, out))

    def kl(self) -> Tensor:
        """KL(q(w) || p(w)) summed over all kernel entries (0-dim); the bias has no prior."""
        mu, log_sigma = self.weight_mu, self.weight_log_sigma
        if self.prior == "gaussian":
            return gaussian_kl(mu, log_sigma, self.prior_std)
        return log_uniform_kl(mu, log_sigma)

    def extra_repr(self) -> str:
        out, inp, k, _ = self.weight_mu.shape
        return f"{inp}, {out}, kernel_size={k}, prior={self.prior}, prior_std={self.prior_std}"


def gaussian_kl(mu: Tensor, log_sigma: Tensor, prior_std: float) -> Tensor:
    """sum KL(N(mu, sigma^2) || N(0, prior_std^2)) = sum log(s_p / sigma) + (sigma^2 + mu^2) / (2 s_p^2) - 1/2."""
    var_p = prior_std**2
    kl = math.log(prior_std) - log_sigma + (torch.exp(2.0 * log_sigma) + mu * mu) / (2.0 * var_p) - 0.5
    return kl.sum()


def log_uniform_kl(mu: Tensor, log_sigma: Tensor) -> Tensor:
    """sum KL(N(mu, sigma^2) || log-uniform) by Molchanov et al. (2017), alpha = sigma^2 / mu^2.

    Non-negative up to the approximation error (~1e-3 per weight at large alpha) and decreasing in alpha:
    the prior favours noisy (prunable) weights.
    """
    # The 1e-8 keeps log alpha finite for a weight whose mean is exactly 0.
    log_alpha = 2.0 * log_sigma - torch.log(mu * mu + 1e-8)
    neg_kl = _K1 * torch.sigmoid(_K2 + _K3 * log_alpha) - 0.5 * F.softplus(-log_alpha) - _K1
    return -neg_kl.sum()
