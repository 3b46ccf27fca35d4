"""On-device augmentation with kornia: one random elastic field (and flip) per sample, shared by its image and all
D masks.

`Augmenter` is kornia's own `AugmentationSequential(RandomElasticTransform, RandomHorizontalFlip,
data_keys=["input", "mask"])`: kornia draws one noise field [2,H,W] per sample (uniform in [-1, 1]; channel 0 x,
channel 1 y), smooths it with a Gaussian (`kernel_size`, `sigma`, zero padding), scales it by `alpha` and adds it
to the identity sampling grid (align_corners=False, edge values outside the image: `padding_mode="border"`). The
"mask" key reuses the same drawn parameters, so the image (resampled bilinear) and every one of the D graders'
masks (the [B,D,H,W] stack as one multi-channel mask, resampled nearest so it stays exactly binary) move with the
same field; the flip, drawn after the elastic noise, is one decision per sample for the image and its masks.

The config's scalar `kernel_size`, `sigma` and `alpha` are used for both axes (kornia orders kernel_size and sigma
(y, x) but alpha (x, y); with equal values the order does not matter). `alpha` scales displacements in normalised
coordinates ([-1,1] across the image), so the pixel displacement grows with the image size. Measured with the
config defaults (kernel 31, sigma 6, alpha 1): at 128x128 the mean displacement length is ~2.1 px (~1.4 px mean
|dx| per axis, ~8 px at most); at 64x64 it is ~1.1 px. kornia's own defaults (kernel 63, sigma 32) move pixels
under 1 px, which is hardly an augmentation. What it costs per training step: bench/augment.py.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from kornia.constants import DataKey, Resample
from torch import Tensor, nn

from .config import AugmentConfig


class Augmenter(nn.Module):
    """Random elastic deformation and horizontal flip for a batch of images with several graders' masks.

    Call with images float [B,1,H,W] and masks float [B,D,H,W] in {0,1} on any device; returns the augmented
    (images, masks) with the same shapes, dtypes and device. The random fields are drawn on the inputs' device
    (kornia's samplers follow the module, which follows the inputs) from torch's global generator of that device
    (seed it with `torch.manual_seed`). When neither elastic nor flip is enabled the inputs are returned unchanged
    (same objects, no copy).
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        steps: list[nn.Module] = []
        if cfg.elastic:
            k, s, a = cfg.kernel_size, float(cfg.sigma), float(cfg.alpha)
            steps.append(K.RandomElasticTransform(kernel_size=(k, k), sigma=(s, s), alpha=(a, a), p=1.0,
                                                  padding_mode="border"))
        if cfg.flip:
            steps.append(K.RandomHorizontalFlip(p=0.5))
        nearest = {DataKey.MASK: {"resample": Resample.NEAREST, "align_corners": False}}
        self.pipeline = K.AugmentationSequential(*steps, data_keys=["input", "mask"], extra_args=nearest) if steps else None
        self._device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        """True when the augmenter changes anything (elastic or flip on)."""
        return self.pipeline is not None

    def forward(self, images: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
        """images [B,1,H,W] float, masks [B,D,H,W] float {0,1} -> the same, deformed with one field per sample."""
        if self.pipeline is None:
            return images, masks
        same_grid = images.shape[0] == masks.shape[0] and images.shape[2:] == masks.shape[2:]
        if images.ndim != 4 or masks.ndim != 4 or not same_grid:
            raise ValueError(
                f"Augmenter expects images [B,C,H,W] and masks [B,D,H,W], got {tuple(images.shape)} and "
                f"{tuple(masks.shape)}"
            )
        if images.device != self._device:  # draw the fields where the data are (no host-to-device copy per step)
            self.pipeline.to(images.device)
            self._device = images.device
        out_images, out_masks = self.pipeline(images, masks)
        return out_images, out_masks.to(masks.dtype)
