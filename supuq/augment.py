"""On-device augmentation: one random elastic field (and flip) per sample, shared by its image and all D masks.

The elastic deformation is kornia 0.9's `RandomElasticTransform` computed directly: uniform noise [B,2,H,W] in
[-1,1] per sample (drawn exactly as kornia draws it: `torch.rand(B,2,H,W) * 2 - 1`), smoothed by a Gaussian
(`kernel_size`, `sigma`, zero padding) and scaled by `alpha`, added to the identity sampling grid; the image is
resampled bilinear and the [B,D,H,W] mask stack nearest (so masks stay exactly binary), edge values outside the
image (`padding_mode="border"`), align_corners=False. The same field serves the image and every mask.

Two things differ from running kornia's `AugmentationSequential(elastic, data_keys=["input", "mask"])`, neither
in the result: the smoothing is two matrix products with banded Gaussian matrices instead of two 1-D
convolutions (kornia's single-channel (1 x 31) convolutions run at ~2 GFLOP/s on the CPU), and the field is
smoothed once rather than once per data key. That made the augmentation ~10x cheaper on 2 CPU cores
(bench/augment.py); outputs equal kornia's to float rounding (bench/augment.py checks it). The optional flip is
kornia's `RandomHorizontalFlip`, drawn after the elastic noise as in the pipeline.

`alpha` scales displacements in normalised coordinates ([-1,1] across the image), so the pixel displacement grows
with the image size. Measured with the config defaults (kernel 31, sigma 6, alpha 1): at 128x128 the mean
displacement length is ~2.1 px (~1.4 px mean |dx| per axis, ~8 px at most); at 64x64 it is ~1.1 px. kornia's own
defaults (kernel 63, sigma 32) move pixels under 1 px, which is hardly an augmentation.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import AugmentConfig


def gaussian_taps(kernel_size: int, sigma: float) -> Tensor:
    """kornia's `get_gaussian_kernel1d`: exp(-x^2 / 2 sigma^2) at x = -(k//2) .. k//2, normalised to sum 1 (float64)."""
    x = torch.arange(kernel_size, dtype=torch.float64) - kernel_size // 2
    taps = torch.exp(-(x**2) / (2.0 * sigma**2))
    return taps / taps.sum()


def smoothing_matrix(size: int, taps: Tensor) -> Tensor:
    """[size, size] matrix G with (G v)[i] = sum_t taps[t] v[i + t - r], zero outside (a 'same' zero-padded
    correlation with the symmetric `taps` as one matrix product)."""
    r = taps.numel() // 2
    offset = torch.arange(size)[None, :] - torch.arange(size)[:, None] + r  # j - i + r
    inside = (offset >= 0) & (offset < taps.numel())
    return torch.where(inside, taps[offset.clamp(0, taps.numel() - 1)], torch.zeros((), dtype=taps.dtype))


class Augmenter(nn.Module):
    """Random elastic deformation and horizontal flip for a batch of images with several graders' masks.

    Call with images float [B,1,H,W] and masks float [B,D,H,W] in {0,1} on any device; returns the augmented
    (images, masks) with the same shapes, dtypes and device. Randomness comes from torch's global generator of
    that device (seed it with `torch.manual_seed`). When neither elastic nor flip is enabled the inputs are
    returned unchanged (same objects, no copy).
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.flip = K.RandomHorizontalFlip(p=0.5) if cfg.flip else None
        self._taps = gaussian_taps(cfg.kernel_size, float(cfg.sigma))
        self._cache: dict[tuple, tuple[Tensor, Tensor, Tensor]] = {}

    @property
    def enabled(self) -> bool:
        """True when the augmenter changes anything (elastic or flip on)."""
        return self.cfg.elastic or self.cfg.flip

    def _operators(self, h: int, w: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Smoothing matrices G_H [H,H], G_W^T [W,W] and the identity grid [1,H,W,2], cached per size/device/dtype."""
        key = (h, w, device, dtype)
        if key not in self._cache:
            g_h = smoothing_matrix(h, self._taps).to(device=device, dtype=dtype)
            g_wt = smoothing_matrix(w, self._taps).T.contiguous().to(device=device, dtype=dtype)
            identity = torch.eye(2, 3, dtype=torch.float32, device=device).unsqueeze(0)
            grid = F.affine_grid(identity, [1, 1, h, w], align_corners=False).to(dtype)
            self._cache[key] = (g_h, g_wt, grid)
        return self._cache[key]

    def elastic_grid(self, b: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """A fresh sampling grid [B,H,W,2] (x, y in normalised coordinates), one random field per sample."""
        g_h, g_wt, identity = self._operators(h, w, device, dtype)
        noise = torch.rand(b, 2, h, w, device=device, dtype=dtype) * 2 - 1  # channel 0: x, 1: y (kornia's draw)
        disp = torch.matmul(torch.matmul(g_h, noise), g_wt) * self.cfg.alpha  # smoothed along H, then W
        return identity + disp.permute(0, 2, 3, 1)

    def forward(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """images [B,1,H,W] float, masks [B,D,H,W] float {0,1} -> the same, deformed with one field per sample."""
        if not self.enabled:
            return images, masks
        same_grid = images.shape[0] == masks.shape[0] and images.shape[2:] == masks.shape[2:]
        if images.ndim != 4 or masks.ndim != 4 or not same_grid:
            raise ValueError(
                f"Augmenter expects images [B,C,H,W] and masks [B,D,H,W], got {tuple(images.shape)} and "
                f"{tuple(masks.shape)}"
            )
        if self.cfg.elastic:
            b, _, h, w = images.shape
            grid = self.elastic_grid(b, h, w, images.device, images.dtype)
            images = F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)
            masks = F.grid_sample(masks, grid.to(masks.dtype), mode="nearest", padding_mode="border",
                                  align_corners=False)
        if self.flip is not None:
            # One flip decision per sample for the image and all its masks (a flip is exact, no resampling).
            both = self.flip(torch.cat([images, masks.to(images.dtype)], dim=1))
            images, masks = both[:, : images.shape[1]], both[:, images.shape[1] :].to(masks.dtype)
        return images, masks
