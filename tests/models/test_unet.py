"""supuq.models.unet: output shapes, odd sizes, and a plain head refusing weight samples."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from supuq.config import WeightNoiseConfig
from supuq.models.unet import UNet

from .conftest import FILTERS


@pytest.mark.parametrize("convs", [1, 3])
def test_unet_output_shape_and_odd_size(convs):
    unet = UNet(1, FILTERS, convs, weight_noise=WeightNoiseConfig())
    assert unet(torch.rand(2, 1, 32, 32)).shape == (2, 4, 32, 32)
    assert unet(torch.rand(1, 1, 30, 30)).shape == (1, 4, 30, 30)  # 30 -> 15 -> 7 and back
    assert unet(torch.rand(2, 1, 16, 16), draws=3, shared_weights=True).shape == (2, 3, 4, 16, 16)


def test_unet_plain_head_rejects_weight_samples():
    unet = UNet(1, FILTERS, 2, weight_noise=WeightNoiseConfig(enabled=False))
    assert isinstance(unet.head, nn.Conv2d) and not unet.bayesian
    with pytest.raises(ValueError):
        unet(torch.rand(1, 1, 16, 16), draws=2, shared_weights=True)
