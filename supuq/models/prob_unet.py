"""Probabilistic U-Net with weight noise (Hu et al. 2019; Kohl et al. 2018 when weight noise is off).

`ProbUNet.loss` is docs/architecture.md, Objective and keeps its efficiency contract: for B images with D graders,
the U-Net trunk and the prior run once per image, the posterior once per (image, grader) pair, and the
D reconstructions reuse the image's features through `Fcomb`'s broadcast instead of rerunning the U-Net.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import LossConfig, ModelConfig
from ..losses import LossTerms, kl_gaussians, reconstruction, supervised_aleatoric
from .bayes import BayesConv2d
from .pieces import in_pieces, piece_size
from .unet import Encoder, UNet, conv_weight_l2


class LatentNet(nn.Module):
    """Prior p(z|x) or posterior q(z|x,y): encoder -> global mean pool -> 1x1 conv -> (mu, log_sigma).

    x [N, in, H, W] -> (mu [N, L], log_sigma [N, L]) of an axis-aligned Gaussian.
    """

    def __init__(self, in_channels: int, num_filters: Sequence[int], convs_per_block: int, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = Encoder(in_channels, num_filters, convs_per_block)
        self.head = nn.Conv2d(num_filters[-1], 2 * latent_dim, 1)
        # Near-zero start: prior and posterior begin as ~N(0, I), so the initial KL is ~0 and the first
        # steps are not dominated by a random KL between two arbitrary Gaussians.
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.normal_(self.head.bias, std=1e-3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # On the CPU in cache-sized pieces: the posterior sees B*D pairs per step (see models/pieces.py).
        return in_pieces(self._stats, x, piece_size(x, self.encoder.blocks[0][0].out_channels))

    def _stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pooled = self.encoder(x)[-1].mean(dim=(2, 3), keepdim=True)  # [N, C, 1, 1]
        stats = self.head(pooled).flatten(1)  # [N, 2L]
        return stats[:, : self.latent_dim], stats[:, self.latent_dim :]


class Fcomb(nn.Module):
    """Combine U-Net features with latent samples: `n_convs` 1x1 convs (ReLU between) -> 1 logit channel.

    Mathematically: z tiled over H x W, concatenated after the features, then the convs. `forward` splits
    the first conv's weight into a feature part (applied once per feature map) and a latent part (a
    [N, K, C] vector per sample, broadcast over H x W); `forward_tiled` is the literal tile + concat,
    kept for checking and benchmarking.
    """

    def __init__(self, feature_channels: int, latent_dim: int, n_convs: int):
        super().__init__()
        self.feature_channels = feature_channels
        chans = [feature_channels + latent_dim] + [feature_channels] * (n_convs - 1) + [1]
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 1) for i in range(n_convs))
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, features: Tensor, z: Tensor) -> Tensor:
        """features [N, C, H, W] (shared by the K samples) or [N, K, C, H, W] (one per sample);
        z [N, K, L]. Returns logits [N, K, H, W].

        Computed channel-first: activations are held as [C, N*K*H*W], so each 1x1 conv is one matrix product
        over every pixel of every sample (a 1x1 `conv2d` with few channels is several times slower on CPU,
        forward and backward; see bench/step.py). The weights are the convs' own, so state dicts and
        `forward_tiled` are unchanged.
        """
        n, k = z.shape[:2]
        height, width = features.shape[-2:]
        c = self.feature_channels
        first = self.convs[0]
        w_feat = first.weight[:, :c].flatten(1)  # [C1, C]
        w_lat = first.weight[:, c:].flatten(1)  # [C1, L]
        if features.dim() == 4:
            flat = features.transpose(0, 1).reshape(c, -1)  # [C, N*H*W]
            a = (w_feat @ flat).view(-1, n, 1, height * width)  # [C1, N, 1, H*W], once per feature map
        else:
            flat = features.permute(2, 0, 1, 3, 4).reshape(c, -1)  # [C, N*K*H*W]
            a = (w_feat @ flat).view(-1, n, k, height * width)
        b = (z @ w_lat.T + first.bias).permute(2, 0, 1).contiguous()  # [C1, N, K]: constant over H x W
        h = (a + b.unsqueeze(-1)).reshape(a.shape[0], -1)  # [C1, N*K*H*W]
        for conv in self.convs[1:]:
            # In place is safe: neither the add nor addmm needs its own output for the backward pass.
            h = torch.addmm(conv.bias.unsqueeze(1), conv.weight.flatten(1), F.relu(h, inplace=True))
        return h.reshape(n, k, height, width)  # the last conv has a single output channel

    def forward_tiled(self, features: Tensor, z: Tensor) -> Tensor:
        """Same contract as `forward`, computed naively: features expanded to every sample, z tiled
        over H x W, concatenated, all convs applied to N*K full maps."""
        n, k, latent = z.shape
        if features.dim() == 4:
            features = features.unsqueeze(1).expand(-1, k, -1, -1, -1)
        height, width = features.shape[-2:]
        tiled = z[..., None, None].expand(n, k, latent, height, width)
        h = torch.cat([features, tiled], dim=2).flatten(0, 1)  # [N*K, C+L, H, W]
        h = self.convs[0](h)
        for conv in self.convs[1:]:
            h = conv(F.relu(h))
        return h.reshape(n, k, height, width)


def _rsample(mu: Tensor, log_sigma: Tensor, shape: Sequence[int] = ()) -> Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I); `shape` inserts sample dims after the batch dim."""
    expand = (mu.shape[0], *shape, mu.shape[-1])
    view = (mu.shape[0],) + (1,) * len(shape) + (mu.shape[-1],)
    eps = torch.randn(expand, dtype=mu.dtype, device=mu.device)
    return mu.view(view) + torch.exp(log_sigma).view(view) * eps


class ProbUNet(nn.Module):
    """U-Net (optionally with a Bayesian last conv) + prior/posterior latent nets + fcomb.

    Attributes: `unet`, `prior`, `posterior`, `fcomb`, `model_cfg`, `loss_cfg`.
    """

    def __init__(self, model_cfg: ModelConfig, loss_cfg: LossConfig | None = None):
        super().__init__()
        f, c = model_cfg.num_filters, model_cfg.convs_per_block
        self.model_cfg = model_cfg
        self.loss_cfg = loss_cfg if loss_cfg is not None else LossConfig()
        self.unet = UNet(model_cfg.in_channels, f, c, weight_noise=model_cfg.weight_noise)
        self.prior = LatentNet(model_cfg.in_channels, f, c, model_cfg.latent_dim)
        self.posterior = LatentNet(model_cfg.in_channels + 1, f, c, model_cfg.latent_dim)
        self.fcomb = Fcomb(f[0], model_cfg.latent_dim, model_cfg.fcomb_convs)

    @property
    def has_weight_noise(self) -> bool:
        """Whether the U-Net's last conv is Bayesian (`model.weight_noise.enabled`)."""
        return self.unet.bayesian

    def kl_weights(self) -> Tensor:
        """KL(q(w) || p(w)) of the Bayesian last conv, 0 without weight noise (0-dim)."""
        if isinstance(self.unet.head, BayesConv2d):
            return self.unet.head.kl()
        return self.unet.head.weight.new_zeros(())

    def l2(self) -> Tensor:
        """Sum of squared conv weights (not biases); the Bayesian layer has its own prior instead."""
        return conv_weight_l2(self)

    def loss(self, x: Tensor, masks: Tensor, n_train: int) -> LossTerms:
        """Objective for x [B, in, H, W] and masks [B, D, H, W] (float or uint8 in {0, 1}).

        `n_train` is the training-set size N_train that KL_w is divided by. See `LossTerms` for which
        fields are weighted.
        """
        if n_train < 1:
            raise ValueError(f"n_train must be the (positive) training-set size, got {n_train}")
        cfg = self.loss_cfg
        b, d = masks.shape[:2]
        y = masks.to(x.dtype)
        supervise = cfg.gamma > 0
        # One trunk pass per image; with supervision the head also gives S extra noise draws for p_m.
        draws = 1 + cfg.supervision_samples if supervise and self.has_weight_noise else None
        feats = self.unet(x, draws=draws)  # [B, C, H, W] or [B, 1+S, C, H, W]
        recon_feats = feats if draws is None else feats[:, 0]

        mu_p, ls_p = self.prior(x)  # [B, L], once per image
        post_in = torch.cat([x.repeat_interleave(d, dim=0), y.flatten(0, 1).unsqueeze(1) - 0.5], dim=1)
        mu_q, ls_q = self.posterior(post_in)  # [B*D, L], once per (image, grader)

        z_q = _rsample(mu_q, ls_q).view(b, d, -1)  # [B, D, L]
        logits_q = self.fcomb(recon_feats, z_q)  # [B, D, H, W]: features broadcast over graders
        recon = reconstruction(logits_q.flatten(0, 1), y.flatten(0, 1))
        kl_z = kl_gaussians(mu_q, ls_q, mu_p.repeat_interleave(d, dim=0), ls_p.repeat_interleave(d, dim=0)).mean()

        if supervise:
            z_p = _rsample(mu_p, ls_p, (cfg.supervision_samples,))  # [B, S, L]
            sup_feats = feats if draws is None else feats[:, 1:]  # shared, or one noise draw per sample
            p_m = torch.sigmoid(self.fcomb(sup_feats, z_p).float()).mean(dim=1)  # [B, H, W]
            supervised = cfg.gamma * supervised_aleatoric(p_m, y.mean(dim=1))
        else:
            supervised = x.new_zeros(())  # Kohl: no p_m at all

        kl_w = self.kl_weights() / n_train
        l2 = cfg.l2 * self.l2()
        total = recon + cfg.beta * kl_z + kl_w + supervised + l2
        return LossTerms(total=total, recon=recon, kl_z=kl_z, kl_w=kl_w, supervised=supervised, l2=l2)

    def sample(self, x: Tensor, weight_samples: int = 1, latent_samples: int = 1) -> Tensor:
        """Logits [B, M, K, H, W] for x [B, in, H, W]: M explicit weight samples (outer) x K prior latents.

        The trunk and prior run once; only the Bayesian head runs per weight sample (all M in one conv).
        The same K latents are used under every weight sample (common random numbers): then the spread
        over m reflects the weights alone rather than also K-sample noise in each q_m.
        Gradients are not disabled here; wrap in `torch.no_grad()` for evaluation.
        """
        if weight_samples != 1 and not self.has_weight_noise:
            raise ValueError(f"weight_samples={weight_samples} needs weight noise; this model has none (use M=1)")
        b, m, k = x.shape[0], weight_samples, latent_samples
        feats = self.unet(x, draws=m, shared_weights=True).flatten(0, 1)  # [B*M, C, H, W]
        mu_p, ls_p = self.prior(x)
        z = _rsample(mu_p, ls_p, (k,)).repeat_interleave(m, dim=0)  # [B*M, K, L]
        # On the CPU, decode a few feature maps at a time: fcomb's activations for all B*M*K samples at once are
        # hundreds of MB, which the CPU allocator takes fresh from the OS (page faults) on every call, while
        # pieces of ~8 MB are reused from the heap: 3x faster at 64x64 (bench/sample.py), same numbers.
        # The CUDA caching allocator reuses memory anyway, so there all maps go in one call.
        logits = in_pieces(self.fcomb, feats, piece_size(feats, feats.shape[1] * k), z)  # [B*M, K, H, W]
        return logits.reshape(b, m, k, *logits.shape[-2:])
