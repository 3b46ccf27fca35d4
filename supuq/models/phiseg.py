"""PHiSeg (Baumgartner et al., "PHiSeg: Capturing Uncertainty in Medical Image Segmentation", MICCAI 2019).

A hierarchy of spatial latents z_1 .. z_L (here index 0 finest .. L-1 coarsest; L = `model.phiseg_levels`, each
z_l [N, Z, H_l, W_l] with Z = `model.phiseg_latent_dim`) at the L coarsest of the R = len(`model.num_filters`)
resolution levels: latent l sits at resolution r_l = R - L + l, i.e. H_l = H / 2^(R - L + l).

- Prior p(z_l | z_{l+1}, x) and posterior q(z_l | z_{l+1}, x, y) (`LatentHierarchy`): a U-Net encoder, then
  top-down from the coarsest level, each level's (mu, log sigma) from its encoder features concatenated with the
  bilinearly upsampled sample of the level above (the coarsest from its features alone).
- Likelihood p(y | z_1 .. z_L) (`Likelihood`): a decoder from the latents ALONE, as in the paper (the image
  reaches it only through them): top-down from z_L, upsampling one resolution at a time, concatenating each level's
  latent where there is one, conv blocks, a 1x1 head at full resolution.

Loss per (image, grader) pair: z ~ q (reparameterised, every level), recon = pixel-summed BCE of the decoded logits
against that grader's mask, kl_z = sum over levels of KL(q_l || p_l) summed over the latent's pixels and channels,
the prior conditioned on the POSTERIOR's samples of the levels above (the paper's training mode); both averaged
over the B x D pairs. Differences from the paper's code, on purpose: one full-resolution output and no deep
supervision (the paper also adds the BCE of every level's partial sum of per-level outputs and weights level l's KL
by 4^l); here `recon` is the same pixel-summed BCE of one logit map as every other method's, so the logged terms
compare across methods, and kl_z is the plain ELBO's KL (`loss.beta` is its weight, as for the Prob. U-Net).
No batch norm (supuq's convs have none; the paper's code uses it). PHiSeg has no weight noise or dropout: no
epistemic source, so it samples on a 1 x S grid and its epistemic map is 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import LossConfig, ModelConfig
from ..losses import LossTerms, kl_spatial_gaussians, reconstruction
from .pieces import in_pieces, piece_size
from .unet import Encoder, conv_block, conv_weight_l2


class LevelStats(NamedTuple):
    """Per latent level, finest first (L entries each, level l [N, Z, H_l, W_l]): the Gaussian's mean, log sigma,
    and the sample the levels below were conditioned on."""

    mu: list[Tensor]
    log_sigma: list[Tensor]
    z: list[Tensor]


def resolution_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """(H_r, W_r) of resolution levels 0 .. levels-1, as `Encoder`'s AvgPool2d(2) makes them (floor halving)."""
    sizes = [(height, width)]
    for _ in range(levels - 1):
        sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
    return sizes


class LatentHierarchy(nn.Module):
    """Prior p(z | x) (in_channels = image channels) or posterior q(z | x, y) (image channels + 1 for y - 0.5).

    `features(x)`: x [N, in, H, W] -> the encoder's features at the L latent resolutions, finest first
    (level l [N, f_{r_l}, H_l, W_l]). `top_down(feats, given)`: the Gaussians level by level from the coarsest;
    each level below is conditioned on `given[i]` of the level above when given (the prior in training: the
    posterior's samples), else on this net's own reparameterised sample (generation). `forward` = both.
    """

    def __init__(self, in_channels: int, num_filters: Sequence[int], convs_per_block: int, levels: int,
                 latent_dim: int):
        super().__init__()
        f = list(num_filters)
        self.levels, self.latent_dim = levels, latent_dim
        self.first = len(f) - levels  # resolution index of the finest latent level
        self.encoder = Encoder(in_channels, f, convs_per_block)
        chans = [f[self.first + i] for i in range(levels)]
        # Every level but the coarsest mixes its features with the upsampled latent above before its head.
        self.mixers = nn.ModuleList(
            conv_block(chans[i] + latent_dim, chans[i], convs_per_block) if i < levels - 1 else nn.Identity()
            for i in range(levels)
        )
        self.heads = nn.ModuleList(nn.Conv2d(c, 2 * latent_dim, 1) for c in chans)
        for head in self.heads:
            # Near-zero start, as ProbUNet's LatentNet: prior and posterior begin as ~N(0, I) at every pixel, so the
            # initial KL is ~0 instead of a random KL between arbitrary Gaussians summed over many latent pixels.
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.normal_(head.bias, std=1e-3)

    def features(self, x: Tensor) -> list[Tensor]:
        # On the CPU in cache-sized pieces: the posterior sees B*D pairs per step (see models/pieces.py).
        size = piece_size(x, self.encoder.blocks[0][0].out_channels)
        return list(in_pieces(lambda part: tuple(self.encoder(part)[self.first:]), x, size))

    def top_down(self, feats: Sequence[Tensor], given: Sequence[Tensor] | None = None) -> LevelStats:
        mus, log_sigmas, zs = [None] * self.levels, [None] * self.levels, [None] * self.levels
        above = None
        for i in reversed(range(self.levels)):
            h = feats[i]
            if above is not None:
                up = F.interpolate(above, size=h.shape[-2:], mode="bilinear", align_corners=False)
                h = self.mixers[i](torch.cat([h, up], dim=1))
            stats = self.heads[i](h)  # [N, 2Z, H_l, W_l]
            mus[i], log_sigmas[i] = stats[:, : self.latent_dim], stats[:, self.latent_dim :]
            if given is not None:
                zs[i] = given[i]
            else:
                zs[i] = mus[i] + torch.exp(log_sigmas[i]) * torch.randn_like(mus[i])
            above = zs[i]
        return LevelStats(mus, log_sigmas, zs)

    def forward(self, x: Tensor, given: Sequence[Tensor] | None = None) -> LevelStats:
        return self.top_down(self.features(x), given)


class Likelihood(nn.Module):
    """p(y | z): latents [N, Z, H_l, W_l] (finest first) -> logits [N, H, W] at the full resolution `size`.

    Top-down over all R resolutions: at r = R-1 a conv block on z_{L-1}; each finer r upsamples the result to
    (H_r, W_r), concatenates z at r if there is a latent level there, and applies a conv block to f_r channels;
    a 1x1 conv gives the logit.
    """

    def __init__(self, num_filters: Sequence[int], convs_per_block: int, levels: int, latent_dim: int):
        super().__init__()
        f = list(num_filters)
        self.resolutions, self.first = len(f), len(f) - levels
        blocks = []
        for r in reversed(range(len(f))):  # coarsest first, the order `forward` runs them
            in_ch = (f[r + 1] if r < len(f) - 1 else 0) + (latent_dim if r >= self.first else 0)
            blocks.append(conv_block(in_ch, f[r], convs_per_block))
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(f[0], 1, 1)

    def forward(self, zs: Sequence[Tensor], size: tuple[int, int]) -> Tensor:
        sizes = resolution_sizes(*size, self.resolutions)
        h = None
        for block, r in zip(self.blocks, reversed(range(self.resolutions))):
            parts = [] if h is None else [F.interpolate(h, size=sizes[r], mode="bilinear", align_corners=False)]
            if r >= self.first:
                parts.append(zs[r - self.first])
            h = block(torch.cat(parts, dim=1))
        return self.head(h)[:, 0]


class PHiSeg(nn.Module):
    """Prior and posterior `LatentHierarchy` + `Likelihood`.

    Attributes: `prior`, `posterior`, `likelihood`, `model_cfg`, `loss_cfg`.
    """

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig | None = None):
        super().__init__()
        f, c = model_cfg.num_filters, model_cfg.convs_per_block
        levels, z = model_cfg.latent_levels, model_cfg.phiseg_latent_dim
        if levels > len(f):  # the config refuses this for method phiseg; a hand-built ModelConfig may not be
            raise ValueError(f"phiseg_levels ({levels}) exceeds the {len(f)} resolution levels of num_filters")
        self.model_cfg = model_cfg
        self.loss_cfg = loss_cfg if loss_cfg is not None else LossConfig()
        self.prior = LatentHierarchy(model_cfg.in_channels, f, c, levels, z)
        self.posterior = LatentHierarchy(model_cfg.in_channels + 1, f, c, levels, z)
        self.likelihood = Likelihood(f, c, levels, z)

    def decode(self, zs: Sequence[Tensor], size: tuple[int, int], like: Tensor) -> Tensor:
        """Logits [N, H, W] of latents `zs` (finest first, each [N, Z, H_l, W_l]); on the CPU in pieces of images
        sized for the full-resolution activations (`like`: any [*, *, H, W] tensor on the device)."""
        width = self.likelihood.head.in_channels
        return in_pieces(lambda *part: self.likelihood(part, size), zs[0], piece_size(like, width), *zs[1:])

    def loss(self, x: Tensor, masks: Tensor, n_train: int) -> LossTerms:
        """x [B, in, H, W], masks [B, D, H, W] in {0, 1}: recon + beta * kl_z + L2 over the B x D (image, grader)
        pairs (see the module docstring). The prior's encoder runs once per image; its top-down part, the
        posterior and the likelihood once per pair. `n_train` is accepted for a common interface (no weight KL)."""
        del n_train
        b, d = masks.shape[:2]
        y = masks.to(x.dtype)
        post_in = torch.cat([x.repeat_interleave(d, dim=0), y.flatten(0, 1).unsqueeze(1) - 0.5], dim=1)
        q = self.posterior(post_in)  # z_l [B*D, Z, H_l, W_l] ~ q, reparameterised
        prior_feats = [feat.repeat_interleave(d, dim=0) for feat in self.prior.features(x)]
        p = self.prior.top_down(prior_feats, given=q.z)  # conditioned on the posterior's samples above
        logits = self.decode(q.z, x.shape[-2:], x)  # [B*D, H, W]
        recon = reconstruction(logits, y.flatten(0, 1))
        kl_levels = [kl_spatial_gaussians(*stats) for stats in zip(q.mu, q.log_sigma, p.mu, p.log_sigma)]
        kl_z = torch.stack(kl_levels).sum(0).mean()  # per pair: sum over levels; then mean over pairs
        l2 = self.loss_cfg.l2 * conv_weight_l2(self)
        return LossTerms.without_weight_terms(recon, l2, kl_z=kl_z, beta=self.loss_cfg.beta)

    def sample(self, x: Tensor, weight_samples: int = 1, latent_samples: int = 1) -> Tensor:
        """Logits [B, 1, K, H, W]: K prior samples drawn top-down, decoded (M must be 1: no weight samples).

        The prior's encoder runs once per image; its top-down part and the likelihood per sample. On the CPU a
        few images (K samples each) at a time, so the B*K full-resolution activations are never held at once.
        Gradients are not disabled here; wrap in `torch.no_grad()` for evaluation.
        """
        if weight_samples != 1:
            raise ValueError(f"weight_samples={weight_samples}: PHiSeg has no weight samples (use M=1)")
        b, k = x.shape[0], latent_samples
        size = tuple(x.shape[-2:])

        def piece(part: Tensor) -> Tensor:
            feats = [feat.repeat_interleave(k, dim=0) for feat in self.prior.features(part)]
            return self.likelihood(self.prior.top_down(feats).z, size)  # [n*K, H, W], image-major

        logits = in_pieces(piece, x, piece_size(x, self.likelihood.head.in_channels * k))
        return logits.view(b, 1, k, *size)
