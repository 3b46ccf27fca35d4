"""U-Net (docs/architecture.md, Model) and its down path, `Encoder`, shared with the prior and posterior nets.

Level i has `num_filters[i]` channels at resolution H / 2^i. Each block is `convs_per_block` 3x3 convs with
ReLU; AvgPool2d(2) goes down, bilinear x2 up plus skip concat comes back. The last 3x3 conv (the "head")
is the weight-noise layer `BayesConv2d` when enabled, a plain conv otherwise; it is kept apart from the
rest (the "trunk") so that several head draws can share one trunk pass.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import WeightNoiseConfig
from ..losses import l2_penalty
from .bayes import BayesConv2d
from .pieces import in_pieces, piece_size


def conv_weight_l2(module: nn.Module) -> Tensor:
    """Sum of squared weights (not biases) of every `nn.Conv2d` in `module`, the L2 term of every method (0-dim).
    The Bayesian layer (`BayesConv2d`) is no `nn.Conv2d`: its prior regularises it instead."""
    return l2_penalty(m.weight for m in module.modules() if isinstance(m, nn.Conv2d))


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    """'Same' 3x3 conv, He-normal weights (a ReLU follows), zero bias."""
    conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    nn.init.zeros_(conv.bias)
    return conv


def conv_block(in_channels: int, out_channels: int, n_convs: int) -> nn.Sequential:
    """n_convs x (3x3 conv + ReLU); the first maps in -> out channels."""
    layers: list[nn.Module] = []
    for i in range(n_convs):
        layers += [conv3x3(in_channels if i == 0 else out_channels, out_channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class MCDropout(nn.Module):
    """Elementwise dropout that can be kept on in eval mode (Monte-Carlo dropout at sampling time)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.always_on = False

    def forward(self, x: Tensor) -> Tensor:
        return F.dropout(x, self.p, training=self.training or self.always_on)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def _dropout(p: float, active: bool) -> nn.Module:
    return MCDropout(p) if active and p > 0 else nn.Identity()


def dropout_levels(n_levels: int) -> set[int]:
    """Levels that get MC dropout: the two deepest (the bottleneck and the one above it), as Bayesian
    SegNet puts dropout only in the central units, where it regularises most and costs least detail."""
    return {n_levels - 1, max(n_levels - 2, 0)}


class Encoder(nn.Module):
    """U-Net down path. x [N, in, H, W] -> list of per-level features, level i [N, f_i, H/2^i, W/2^i].

    `dropout` > 0 adds MC dropout after the blocks at `dropout_levels` (Kendall-Gal only).
    """

    def __init__(self, in_channels: int, num_filters: Sequence[int], convs_per_block: int, dropout: float = 0.0):
        super().__init__()
        drop_at = dropout_levels(len(num_filters))
        chans = [in_channels, *num_filters]
        self.blocks = nn.ModuleList(
            conv_block(chans[i], chans[i + 1], convs_per_block) for i in range(len(num_filters))
        )
        self.drops = nn.ModuleList(_dropout(dropout, i in drop_at) for i in range(len(num_filters)))

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for i, (block, drop) in enumerate(zip(self.blocks, self.drops)):
            if i > 0:
                x = F.avg_pool2d(x, 2)
            x = drop(block(x))
            feats.append(x)
        return feats


class UNet(nn.Module):
    """x [B, in, H, W] -> features [B, num_filters[0], H, W] (ReLU'd), see `forward` for head draws.

    Attributes: `encoder`, `up_blocks` (deepest first; the shallowest omits its last conv), `head`
    (the last 3x3 conv: `BayesConv2d` or `nn.Conv2d`).
    """

    def __init__(
        self,
        in_channels: int,
        num_filters: Sequence[int],
        convs_per_block: int,
        weight_noise: WeightNoiseConfig | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        f = list(num_filters)
        n = len(f)
        drop_at = dropout_levels(n)
        self.encoder = Encoder(in_channels, f, convs_per_block, dropout)
        # Decoder level i (n-2 .. 0): upsampled level i+1 concat skip i -> f[i].
        up, drops = [], []
        for i in range(n - 2, -1, -1):
            convs = convs_per_block - 1 if i == 0 else convs_per_block
            up.append(conv_block(f[i + 1] + f[i], f[i], convs) if convs > 0 else nn.Identity())
            drops.append(_dropout(dropout, i in drop_at))
        self.up_blocks = nn.ModuleList(up)
        self.up_drops = nn.ModuleList(drops)
        head_in = f[0] if convs_per_block > 1 else f[1] + f[0]
        if weight_noise is not None and weight_noise.enabled:
            self.head: nn.Module = BayesConv2d(
                head_in, f[0], 3, weight_noise.prior, weight_noise.prior_std, weight_noise.init_log_sigma
            )
        else:
            self.head = conv3x3(head_in, f[0])

    @property
    def bayesian(self) -> bool:
        return isinstance(self.head, BayesConv2d)

    @property
    def out_channels(self) -> int:
        return self.head.bias.shape[0]

    def trunk(self, x: Tensor) -> Tensor:
        """Everything before the head: x [B, in, H, W] -> [B, head_in, H, W]."""
        skips = self.encoder(x)
        h = skips[-1]
        for block, drop, skip in zip(self.up_blocks, self.up_drops, reversed(skips[:-1])):
            # Upsample to the skip's size (not x2 blindly) so odd sizes still line up.
            h = F.interpolate(h, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            h = torch.cat([h, skip], dim=1)
            h = block(h)
            if block is not self.up_blocks[-1]:
                h = drop(h)
        return h

    def forward(self, x: Tensor, draws: int | None = None, shared_weights: bool = False) -> Tensor:
        """Run the trunk once and the head once or `draws` times.

        - `draws=None`: [B, C, H, W]; a Bayesian head uses local reparameterisation (noise per activation).
        - `draws=n`, `shared_weights=False`: [B, n, C, H, W], n independent local-reparameterisation draws
          (the training-time p_m average). A plain head gives n identical views (no copy).
        - `draws=n`, `shared_weights=True`: [B, n, C, H, W], n explicit weight samples w_m ~ q(w), each
          held fixed over the batch and all pixels (the evaluation grid). A plain head allows only n=1.
        """
        if draws is not None and shared_weights and draws != 1 and not self.bayesian:
            raise ValueError(f"{draws} weight samples requested but the U-Net has no weight noise")
        # Explicit weight samples are drawn once here, so that every piece of the batch uses the same ones.
        weights = self.head.sample_weights(draws) if draws is not None and shared_weights and self.bayesian else None
        noise_draws = draws if self.bayesian and weights is None else None
        # Pieces sized by level 0's features (also counting the head's draws made pieces too small: slower).
        size = piece_size(x, self.out_channels)
        out = in_pieces(lambda part: self._features(part, noise_draws, weights), x, size)
        if draws is not None and not self.bayesian:
            return out.unsqueeze(1).expand(-1, draws, -1, -1, -1)  # n identical views, no copy
        return out

    def _features(self, x: Tensor, draws: int | None, weights: Tensor | None) -> Tensor:
        """Trunk + head on one piece: [B, C, H, W] (plain head, or no draws) or [B, n, C, H, W] (n noise draws, or
        the n explicit weight samples `weights`)."""
        h = self.trunk(x)
        # The dropout of level 0 (only when the U-Net has two levels) sits after the head.
        finish = self.up_drops[-1]
        if weights is not None:
            return finish(F.relu(self.head.forward_weights(h, weights)))
        if draws is not None:
            return finish(F.relu(self.head(h, draws=draws)))
        return finish(F.relu(self.head(h)))

    @contextmanager
    def mc_dropout(self) -> Iterator[None]:
        """Keep MC dropout active inside the block even in eval mode (sampling M dropout masks)."""
        drops = [m for m in self.modules() if isinstance(m, MCDropout)]
        for m in drops:
            m.always_on = True
        try:
            yield
        finally:
            for m in drops:
                m.always_on = False
