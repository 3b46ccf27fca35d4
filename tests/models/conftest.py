"""Shared by the supuq.models tests: a small model config and a batch of images with 4 graders' masks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from supuq.config import ModelConfig, WeightNoiseConfig

B, D, H = 2, 4, 32
FILTERS = (4, 8, 16)


def small_cfg(method: str = "supervised", **kw) -> ModelConfig:
    wn = WeightNoiseConfig(enabled=method != "kohl", **kw.pop("weight_noise", {}))
    base = dict(num_filters=FILTERS, convs_per_block=2, latent_dim=3, fcomb_convs=3, weight_noise=wn)
    return ModelConfig(method=method, **{**base, **kw})


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(B, 1, H, H, generator=g)
    masks = (torch.rand(B, D, H, H, generator=g) > 0.5).to(torch.uint8)
    return x, masks


def count_calls(module: nn.Module) -> list[tuple]:
    """Record the input shapes of every forward call of `module`."""
    calls: list[tuple] = []
    module.register_forward_hook(lambda m, args, out: calls.append(tuple(args[0].shape)))
    return calls
