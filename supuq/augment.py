"""On-device augmentation: one random elastic field (and flip) per sample, shared by its image and all D masks.

kornia 0.9's `RandomElasticTransform` draws uniform noise [B,2,H,W] per sample, smooths it with a Gaussian
(`kernel_size`, `sigma`, ordered (y, x)) and scales it by `alpha` (ordered (x, y)); we pass equal values on
both axes so the order does not matter. Wrapped in `AugmentationSequential(data_keys=["input", "mask"])`, the
same parameters are applied to the image and to the [B,D,H,W] mask stack (the D graders are channels of one
mask key), and masks are resampled nearest, so they stay exactly binary.

`alpha` scales displacements in normalised coordinates ([-1,1] across the image), so the pixel displacement grows
with the image size. Measured with the config defaults (kernel 31, sigma 6, alpha 1): at 128x128 the mean
displacement length is ~2.1 px (~1.4 px mean |dx| per axis, ~8 px at most); at 64x64 it is ~1.1 px. kornia's own
defaults (kernel 63, sigma 32) move pixels under 1 px, which is hardly an augmentation.
"""

from __future__ import annotations

import kornia.augmentation as K
from kornia.constants import DataKey, Resample
from torch import Tensor, nn

from .config import AugmentConfig


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
        steps: list[nn.Module] = []
        if cfg.elastic:
            k, s, a = cfg.kernel_size, float(cfg.sigma), float(cfg.alpha)
            # padding_mode="border": pixels pulled from outside the crop repeat the edge instead of turning black
            # (an image) or empty (a mask) along the border.
            steps.append(
                K.RandomElasticTransform(kernel_size=(k, k), sigma=(s, s), alpha=(a, a), p=1.0, padding_mode="border")
            )
        if cfg.flip:
            steps.append(K.RandomHorizontalFlip(p=0.5))
        # Masks are resampled nearest so they stay exactly binary. This is kornia's default for "mask" keys, but its
        # default align_corners=None reaches grid_sample as a warning; pass the image's setting (False) explicitly
        # so image and masks are sampled on the same grid.
        extra = {DataKey.MASK: {"resample": Resample.NEAREST, "align_corners": False}}
        self.pipeline = (
            K.AugmentationSequential(*steps, data_keys=["input", "mask"], extra_args=extra) if steps else None
        )

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
        out_images, out_masks = self.pipeline(images, masks)
        return out_images, out_masks

