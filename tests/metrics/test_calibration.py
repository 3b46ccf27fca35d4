"""Known-answer and reference tests for supuq.metrics.calibration (Brier, reliability, ECE)."""

from __future__ import annotations

import math

import pytest
import torch

from supuq.metrics import brier, ece, reliability


def test_brier_and_ece_zero_when_equal():
    g = torch.Generator().manual_seed(6)
    p = torch.rand(3, 8, 8, generator=g)
    assert (brier(p, p) == 0).all()
    assert ece(p, p) == pytest.approx(0.0, abs=1e-12)


def test_brier_ece_reliability_known_case():
    # One image: p_m = 0.25 everywhere; p_g = 0 on the left half, 1 on the right half.
    # Brier = 0.5 * 0.25^2 + 0.5 * 0.75^2 = 0.3125. Every pixel falls in bin [0.2, 0.3): mean_pred 0.25,
    # mean_obs 0.5, so ECE = |0.25 - 0.5| = 0.25.
    p_m = torch.full((1, 4, 4), 0.25)
    p_g = torch.zeros(1, 4, 4)
    p_g[..., 2:] = 1.0
    assert brier(p_m, p_g).item() == pytest.approx(0.3125)
    rel = reliability(p_m, p_g, bins=10)
    assert rel.counts.tolist() == [0, 0, 16, 0, 0, 0, 0, 0, 0, 0]
    assert rel.mean_pred[2].item() == pytest.approx(0.25) and rel.mean_obs[2].item() == pytest.approx(0.5)
    assert torch.isnan(rel.mean_pred[0]) and rel.bin_edges.shape == (11,)
    assert ece(p_m, p_g) == pytest.approx(0.25)


def test_reliability_puts_one_in_last_bin():
    p = torch.tensor([[[0.0, 1.0, 0.999, 0.5]]])
    rel = reliability(p, p, bins=4)
    assert rel.counts.tolist() == [1, 0, 1, 2]


def _numpy_ece(p_m, p_g, bins: int = 10) -> float:
    """ECE written out independently: per bin of p_m, (n_b / N) * |mean p_m - mean p_g|, empty bins skipped."""
    import numpy as np

    pred, obs = np.asarray(p_m, dtype=np.float64).ravel(), np.asarray(p_g, dtype=np.float64).ravel()
    which = np.minimum((pred * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() / len(pred) * abs(pred[inside].mean() - obs[inside].mean())
    return total


def test_ece_pooled_from_accumulated_bins_equals_ece_of_all_pixels():
    """Three "seeds" of different sizes, each accumulated batch by batch (as evaluate does), their tables
    pooled (as the report does): the pooled ECE is the ECE of the concatenated pixels, and each seed's
    accumulator gives that seed's ECE."""
    from supuq.evaluate import ReliabilityAccumulator, pool_reliability
    from supuq.metrics import ece_from_bins

    g = torch.Generator().manual_seed(11)
    seeds_pm, seeds_pg, tables = [], [], []
    for n in (5, 9, 3):
        p_m = torch.rand(n, 6, 7, generator=g) ** 2  # skewed to low p_m, like segmentation maps
        p_g = (p_m + 0.2 * torch.rand(n, 6, 7, generator=g)).clamp(0, 1)
        acc = ReliabilityAccumulator()
        for start in range(0, n, 2):
            acc.add(p_m[start:start + 2], p_g[start:start + 2])
        assert acc.ece() == pytest.approx(ece(p_m, p_g), abs=1e-12)
        assert acc.ece() == pytest.approx(_numpy_ece(p_m, p_g), abs=1e-12)
        seeds_pm.append(p_m.flatten())
        seeds_pg.append(p_g.flatten())
        tables.append(acc.table())
    all_pm, all_pg = torch.cat(seeds_pm), torch.cat(seeds_pg)
    pooled = pool_reliability(tables)
    assert pooled.ece() == pytest.approx(ece(all_pm, all_pg), abs=1e-12)
    assert pooled.ece() == pytest.approx(_numpy_ece(all_pm, all_pg), abs=1e-12)
    assert sum(pooled.table()["count"]) == all_pm.numel()
    assert ece_from_bins([1.0, 2.0], [1.5, 1.0], [2, 3]) == pytest.approx((0.5 + 1.0) / 5)
    assert math.isnan(ece_from_bins([0.0], [0.0], [0]))
