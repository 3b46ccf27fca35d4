"""Tests for supuq.augment: kornia's elastic transform, one field per sample, shared by the image and all masks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kornia.augmentation import RandomElasticTransform
from kornia.geometry.transform import elastic_transform2d

from supuq.augment import Augmenter
from supuq.config import AugmentConfig

ELASTIC = AugmentConfig(elastic=True, kernel_size=31, sigma=6.0, alpha=1.0)


def _blobs(batch: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """Smooth random blobs thresholded to binary masks, [B,1,H,W] float in {0,1}."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(batch, 1, size // 8, size // 8, generator=g)
    smooth = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False)
    return (smooth > 0.6).float()


def _coordinates(batch: int, size: int) -> torch.Tensor:
    """[B,2,H,W] images holding each pixel's own x and y: after a warp they hold the source position."""
    axis = torch.arange(size, dtype=torch.float32)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    return torch.stack((xs, ys)).expand(batch, 2, size, size).contiguous()


def test_identity_when_disabled():
    aug = Augmenter(AugmentConfig())
    images, masks = torch.rand(2, 1, 8, 8), torch.ones(2, 4, 8, 8)
    out_images, out_masks = aug(images, masks)
    assert not aug.enabled
    assert out_images is images and out_masks is masks


def test_image_and_masks_share_one_field():
    torch.manual_seed(0)
    mask = _blobs(6)
    masks = mask.expand(6, 4, 64, 64).contiguous()
    images, out_masks = Augmenter(ELASTIC)(mask.clone(), masks)
    assert Augmenter(ELASTIC).enabled
    # All D graders of a sample got the same field.
    assert all(torch.equal(out_masks[:, 0], out_masks[:, j]) for j in range(1, 4))
    # The image (bilinear) deformed with the same field as its masks (nearest). Bilinear output below 0.25 means
    # the nearest of the four source pixels (weight >= 0.25) is 0, above 0.75 that it is 1, so wherever the image
    # is clearly in or out the mask must agree exactly; 0.2 / 0.8 leave room for float rounding.
    image, mask_out = images[:, 0], out_masks[:, 0]
    outside, inside = image < 0.2, image > 0.8
    assert (outside | inside).float().mean() > 0.9
    assert (mask_out[outside] == 0).all() and (mask_out[inside] == 1).all()
    assert (mask_out != mask[:, 0]).float().mean() > 0.01  # and the deformation really moved the boundaries
    # Paired with another sample's field, thousands of pixels disagree.
    other = out_masks.roll(1, dims=0)[:, 0]
    assert (other[outside] != 0).sum() + (other[inside] != 1).sum() > 1000


def test_it_is_kornias_elastic_transform_with_one_noise_field_for_image_and_masks():
    """The output is kornia's `elastic_transform2d` of the noise kornia drew (the module keeps it): bilinear for the
    image, nearest for the whole mask stack, with the config's kernel, sigma and alpha on both axes."""
    torch.manual_seed(4)
    images, masks = torch.rand(3, 1, 32, 32), torch.cat([_blobs(3, 32, seed=s) for s in range(4)], dim=1)
    aug = Augmenter(ELASTIC)
    out_images, out_masks = aug(images, masks)
    elastic = next(m for m in aug.modules() if isinstance(m, RandomElasticTransform))
    noise = elastic._params["noise"]
    assert noise.shape == (3, 2, 32, 32) and noise.abs().max() <= 1  # one [2,H,W] field per sample
    args = dict(kernel_size=(31, 31), sigma=(6.0, 6.0), alpha=(1.0, 1.0), align_corners=False, padding_mode="border")
    torch.testing.assert_close(out_images, elastic_transform2d(images, noise, mode="bilinear", **args))
    assert torch.equal(out_masks, elastic_transform2d(masks, noise, mode="nearest", **args))


def test_seeded_reproducibility():
    images, masks = torch.rand(4, 1, 32, 32), torch.cat([_blobs(4, 32, seed=s) for s in range(2)], dim=1)
    aug = Augmenter(AugmentConfig(elastic=True, flip=True))
    runs = []
    for seed in (5, 5, 6):
        torch.manual_seed(seed)
        runs.append(aug(images, masks))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.allclose(runs[0][0], runs[2][0])


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="masks"):
        Augmenter(ELASTIC)(torch.rand(2, 1, 8, 8), torch.rand(3, 4, 8, 8))


def test_masks_stay_binary_and_shapes_dtypes_kept():
    torch.manual_seed(1)
    masks = torch.cat([_blobs(4, seed=s) for s in range(3)], dim=1)  # [4,3,64,64], graders differ
    images = torch.rand(4, 1, 64, 64)
    out_images, out_masks = Augmenter(AugmentConfig(elastic=True, flip=True))(images, masks)
    assert out_images.shape == images.shape and out_masks.shape == masks.shape
    assert out_images.dtype == torch.float32 and out_masks.dtype == torch.float32
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}


def test_each_sample_gets_its_own_field_and_deformation_is_visible():
    torch.manual_seed(2)
    coords = _coordinates(4, 64)
    warped, _ = Augmenter(ELASTIC)(coords, torch.zeros(4, 1, 64, 64))
    shift = (warped - coords).pow(2).sum(dim=1).sqrt()  # [B,H,W] displacement in pixels
    # Measured: ~1.1 px mean, ~4 px max at 64x64 with kernel 31, sigma 6, alpha 1 (it scales with the size).
    mean = shift.mean(dim=(1, 2))
    assert (mean > 0.5).all() and (mean < 3.0).all()
    assert not torch.allclose(warped[0], warped[1], atol=0.1)


def test_flip_moves_image_and_masks_together():
    torch.manual_seed(3)
    images = torch.rand(16, 1, 8, 8)
    masks = (images > 0.5).float().expand(16, 2, 8, 8).contiguous()
    out_images, out_masks = Augmenter(AugmentConfig(flip=True))(images, masks)
    flipped = 0
    for i in range(16):
        same = torch.equal(out_images[i], images[i])
        mirrored = torch.equal(out_images[i], images[i].flip(-1))
        assert same or mirrored
        assert torch.equal(out_masks[i], (out_images[i] > 0.5).float().expand(2, 8, 8))
        flipped += mirrored
    assert 0 < flipped < 16
