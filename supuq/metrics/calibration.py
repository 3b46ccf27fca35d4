"""Calibration of p_m against p_g (docs/architecture.md, Metrics).

Brier score per image, the reliability diagram over all pixels (pixels binned by p_m) and supuq's one expected
calibration error, computed from per-bin sums (`ece_from_bins`) so that bins add exactly across batches and seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


def brier(p_m: Tensor, p_g: Tensor) -> Tensor:
    """Brier score per image: mean over pixels of (p_m - p_g)^2. p_m, p_g: [N,H,W] in [0,1] -> float64 [N]."""
    if p_m.shape != p_g.shape:
        raise ValueError(f"brier expects maps of one shape, got {tuple(p_m.shape)} and {tuple(p_g.shape)}")
    diff = p_m.to(torch.float64) - p_g.to(torch.float64)
    return (diff * diff).flatten(1).mean(dim=1)


@dataclass(frozen=True)
class Reliability:
    """Reliability diagram over all pixels, float64 CPU tensors.

    bin_edges [bins+1]; mean_pred, mean_obs, counts [bins]. mean_obs is the mean p_g of the pixels whose p_m lies
    in the bin; mean_pred and mean_obs are NaN for empty bins.
    """

    bin_edges: Tensor
    mean_pred: Tensor
    mean_obs: Tensor
    counts: Tensor

    def sums(self) -> tuple[Tensor, Tensor]:
        """Per-bin sums of p_m and of p_g [bins] (0 in empty bins): they add up across batches and seeds."""
        return torch.nan_to_num(self.mean_pred) * self.counts, torch.nan_to_num(self.mean_obs) * self.counts


def reliability(p_m: Tensor, p_g: Tensor, bins: int = 10) -> Reliability:
    """Bin every pixel by p_m into `bins` equal bins of [0,1] (1.0 goes in the last bin) and average p_m and p_g.

    p_m, p_g: [N,H,W] (any matching shape) in [0,1]. Returns a `Reliability` on the CPU.
    """
    if p_m.shape != p_g.shape:
        raise ValueError(f"reliability expects maps of one shape, got {tuple(p_m.shape)} and {tuple(p_g.shape)}")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    pred = p_m.detach().reshape(-1).to(torch.float64)
    obs = p_g.detach().reshape(-1).to(torch.float64)
    idx = (pred * bins).floor().long().clamp(0, bins - 1)
    counts = torch.zeros(bins, dtype=torch.float64, device=pred.device).index_add_(0, idx, torch.ones_like(pred))
    sum_pred = torch.zeros_like(counts).index_add_(0, idx, pred)
    sum_obs = torch.zeros_like(counts).index_add_(0, idx, obs)
    safe = torch.where(counts > 0, counts, torch.ones_like(counts))
    nan = torch.full_like(counts, float("nan"))
    return Reliability(
        bin_edges=torch.linspace(0.0, 1.0, bins + 1, dtype=torch.float64),
        mean_pred=torch.where(counts > 0, sum_pred / safe, nan).cpu(),
        mean_obs=torch.where(counts > 0, sum_obs / safe, nan).cpu(),
        counts=counts.cpu(),
    )


def ece_from_bins(sum_pred, sum_obs, counts) -> float:
    """supuq's one ECE (expected calibration error of p_m against p_g): pixels binned by p_m (`reliability`),
    ECE = sum_b (n_b/N) |mean_b p_m - mean_b p_g| = sum_b |sum_b p_m - sum_b p_g| / N, from per-bin sums of p_m,
    of p_g and pixel counts ([bins] array-likes: bins add up across batches and seeds). NaN with no pixel."""
    sum_pred, sum_obs, counts = (torch.as_tensor(v, dtype=torch.float64) for v in (sum_pred, sum_obs, counts))
    total = float(counts.sum())
    return float((sum_pred - sum_obs).abs().sum() / total) if total else math.nan


def ece(p_m: Tensor, p_g: Tensor, bins: int = 10) -> float:
    """ECE (`ece_from_bins`) of maps p_m, p_g [N,H,W] in [0,1] over all their pixels, `bins` equal bins."""
    rel = reliability(p_m, p_g, bins)
    return ece_from_bins(*rel.sums(), rel.counts)
