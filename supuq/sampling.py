"""Binary samples and the uncertainty decomposition (docs/architecture.md, Sampling and the uncertainty decomposition).

Evaluation draws a grid of M weight samples (outer) x K latent samples (inner) per image. With s_mk the binary
samples of one pixel:

    q_m       = mean_k s_mk                      (foreground frequency under weight sample m)
    aleatoric = mean_m q_m (1 - q_m)             (expected data variance)
    epistemic = var_m q_m   (population, 1/M)   (variance of the data model across weight samples)
    total     = qbar (1 - qbar), qbar = mean_m q_m

and total == aleatoric + epistemic exactly (law of total variance for a Bernoulli mixture). The ground-truth data
uncertainty is v_g = p_g (1 - p_g) with p_g the mean over the D graders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def binarize(logits: Tensor) -> Tensor:
    """Binary sample from logits: sigmoid(logit) > 0.5, computed as logit > 0 (same set, no sigmoid needed).

    logits: any shape, float. Returns a bool tensor of the same shape.
    """
    return logits > 0


@dataclass(frozen=True)
class Decomposition:
    """Per-pixel uncertainty maps, each float [N,H,W]; `total == aleatoric + epistemic` (to float rounding)."""

    total: Tensor
    aleatoric: Tensor
    epistemic: Tensor


def decompose(samples: Tensor, dtype: torch.dtype = torch.float32) -> Decomposition:
    """Split the variance of binary samples into aleatoric and epistemic parts.

    samples: bool (or {0,1}) [N,M,K,H,W]: M weight samples (outer) x K latent samples (inner) per image.
    Returns a `Decomposition` of [N,H,W] maps in `dtype`. With M == 1 the epistemic map is exactly 0; when all
    K samples of every weight sample agree the aleatoric map is exactly 0.
    """
    if samples.ndim != 5:
        raise ValueError(f"decompose expects samples [N,M,K,H,W], got shape {tuple(samples.shape)}")
    q = samples.to(dtype).mean(dim=2)  # [N,M,H,W]
    qbar = q.mean(dim=1)
    aleatoric = (q * (1 - q)).mean(dim=1)
    # Population variance (1/M), computed around the mean rather than as E[q^2] - qbar^2: it is exactly 0 when
    # all q_m agree (M == 1 included) and never negative.
    epistemic = ((q - qbar.unsqueeze(1)) ** 2).mean(dim=1)
    total = qbar * (1 - qbar)
    return Decomposition(total=total, aleatoric=aleatoric, epistemic=epistemic)


def grader_mean(masks: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """p_g: the mean over graders. masks: {0,1} [N,D,H,W] (bool, uint8 or float) -> [N,H,W] in `dtype`."""
    if masks.ndim != 4:
        raise ValueError(f"grader_mean expects masks [N,D,H,W], got shape {tuple(masks.shape)}")
    return masks.to(dtype).mean(dim=1)


def grader_variance(masks: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """v_g = p_g (1 - p_g), the population variance of the D grader masks per pixel.

    masks: {0,1} [N,D,H,W] -> [N,H,W] in `dtype`; e.g. 1 of 4 graders -> 0.25 * 0.75 = 0.1875.
    """
    p_g = grader_mean(masks, dtype)
    return p_g * (1 - p_g)
