"""Agreement between uncertainty maps (docs/architecture.md, Metrics).

NCC between two maps per image (e.g. the predicted aleatoric map and the graders' v_g), NaN where either map is
constant, summarised as the mean over the images where it is defined with the count of excluded images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def ncc(a: Tensor, b: Tensor) -> Tensor:
    """Normalised cross-correlation per image: (1/n) sum (a - mu_a)(b - mu_b) / (sigma_a sigma_b).

    a, b: float [N,H,W] (e.g. predicted and grader variance maps). Population sigma. Returns float64 [N], NaN
    where either map is constant. "Constant" is tested exactly as max == min rather than sigma == 0 or a
    tolerance: a constant float map can give a variance of ~1e-34 instead of 0 through rounding of its mean, and
    any tolerance would also drop genuine maps with tiny variation.
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"ncc expects two [N,H,W] maps of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    a = a.flatten(1).to(torch.float64)
    b = b.flatten(1).to(torch.float64)
    ac = a - a.mean(dim=1, keepdim=True)
    bc = b - b.mean(dim=1, keepdim=True)
    cov = (ac * bc).mean(dim=1)
    den = torch.sqrt((ac * ac).mean(dim=1) * (bc * bc).mean(dim=1))
    defined = (a.amax(dim=1) > a.amin(dim=1)) & (b.amax(dim=1) > b.amin(dim=1))
    value = cov / torch.where(defined, den, torch.ones_like(den))
    # Rounding can put a perfect correlation at 1 + 2e-16; keep the value in its mathematical range.
    value = value.clamp(-1.0, 1.0)
    return torch.where(defined, value, torch.full_like(value, float("nan")))


@dataclass(frozen=True)
class NccSummary:
    """Mean NCC over the images where it is defined, and how many were (not) defined."""

    mean: float
    defined: int
    excluded: int


def summarize_ncc(values: Tensor) -> NccSummary:
    """values: [N] per-image NCC with NaN where undefined. The mean is NaN when no image is defined."""
    values = values.detach().reshape(-1).to(torch.float64)
    ok = ~torch.isnan(values)
    defined = int(ok.sum())
    mean = float(values[ok].mean()) if defined else math.nan
    return NccSummary(mean=mean, defined=defined, excluded=int(values.numel()) - defined)
