"""Binary samples and the uncertainty decomposition (docs/architecture.md, Sampling and the uncertainty decomposition).

Evaluation draws a grid of M weight samples (outer) x K latent samples (inner) per image. With r_mk the foreground
rate of one pixel in the sample (m, k):

    rbar_m    = mean_k r_mk                      (foreground probability under weight sample m)
    aleatoric = mean_m rbar_m (1 - rbar_m)       (expected data variance)
    epistemic = var_m rbar_m   (population, 1/M) (variance of the data model across weight samples)
    total     = rbar (1 - rbar), rbar = mean_m rbar_m

and total == aleatoric + epistemic exactly (law of total variance: a pixel's label drawn from the M x K grid is a
Bernoulli mixture, Bernoulli(rbar_m) given m). The formulas exist once (`_decompose_rates`); two inputs give r_mk:

- `decompose_probabilities(probs)`: r_mk = p_mk, the sample's sigmoid probabilities. These are the default for
  the maps: the paper's supervised term matches p_m, the mean of the probabilities, to p_g, so the predicted data
  variance is p (1 - p) of those probabilities, the quantity compared with v_g. Thresholding first throws that
  away: a pixel at p = 0.4 in every sample has a binary rate of 0 and no aleatoric variance at all.
- `decompose(samples)`: r_mk = s_mk, the binary samples sigmoid(logit) > 0.5 (`binarize`) as {0,1} floats, so
  rbar_m = q_m is the foreground frequency under weight sample m: the maps of the binary segmentations a user
  sees, whose spread across samples is also what the GED scores.

The ground-truth data uncertainty is v_g = p_g (1 - p_g) with p_g the mean over the D graders.
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


def _decompose_rates(rates: Tensor) -> Decomposition:
    """The decomposition of foreground rates r_mk (module docstring). rates: float [N,M,K,H,W] in [0,1]; returns
    [N,H,W] maps in rates' dtype."""
    rbar_m = rates.mean(dim=2)  # [N,M,H,W]
    rbar = rbar_m.mean(dim=1)
    aleatoric = (rbar_m * (1 - rbar_m)).mean(dim=1)
    # Population variance (1/M), computed around the mean rather than as E[r^2] - rbar^2: it is exactly 0 when
    # all rbar_m agree (M == 1 included) and never negative.
    epistemic = ((rbar_m - rbar.unsqueeze(1)) ** 2).mean(dim=1)
    total = rbar * (1 - rbar)
    return Decomposition(total=total, aleatoric=aleatoric, epistemic=epistemic)


def decompose(samples: Tensor, dtype: torch.dtype = torch.float32) -> Decomposition:
    """Split the variance of binary samples into aleatoric and epistemic parts.

    samples: bool (or {0,1}) [N,M,K,H,W]: M weight samples (outer) x K latent samples (inner) per image.
    Returns a `Decomposition` of [N,H,W] maps in `dtype`. With M == 1 the epistemic map is exactly 0; when all
    K samples of every weight sample agree the aleatoric map is exactly 0.
    """
    if samples.ndim != 5:
        raise ValueError(f"decompose expects samples [N,M,K,H,W], got shape {tuple(samples.shape)}")
    return _decompose_rates(samples.to(dtype))


def decompose_probabilities(probs: Tensor) -> Decomposition:
    """Split the variance of the samples' foreground probabilities into aleatoric and epistemic parts.

    probs: float [N,M,K,H,W] in [0,1], sigmoid(logit) of M weight samples (outer) x K latent samples (inner) per
    image. Returns a `Decomposition` of [N,H,W] maps in probs' dtype; with M == 1 the epistemic map is exactly 0.
    On {0,1} probabilities it equals `decompose` of the same samples.
    """
    if probs.ndim != 5:
        raise ValueError(f"decompose_probabilities expects probs [N,M,K,H,W], got shape {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"decompose_probabilities expects float probabilities, got {probs.dtype}")
    # One reduction and one host sync; NaN fails both comparisons and is rejected too.
    if probs.numel() and not bool(((probs >= 0) & (probs <= 1)).all()):
        raise ValueError("decompose_probabilities expects probabilities in [0, 1] (got values outside, or NaN)")
    return _decompose_rates(probs)


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
