"""Known-answer and reference tests for supuq.metrics.maps (NCC and its summary)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from supuq.metrics import ncc, summarize_ncc


def test_ncc_known_pairs():
    g = torch.Generator().manual_seed(4)
    a = torch.rand(3, 9, 9, generator=g)
    assert torch.allclose(ncc(a, a), torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(ncc(a, -a), -torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(ncc(a, 3.5 * a + 0.2), torch.ones(3, dtype=torch.float64), atol=1e-6)
    b = torch.rand(3, 9, 9, generator=g)
    assert (ncc(a, b).abs() < 1).all()


def test_ncc_constant_map_is_nan_and_excluded():
    g = torch.Generator().manual_seed(5)
    a = torch.rand(4, 8, 8, generator=g)
    b = a.clone()
    b[1] = 0.1  # a constant map whose float mean is not exactly 0.1: still excluded
    b[3] = 0.0
    values = ncc(a, b)
    assert torch.isnan(values[1]) and torch.isnan(values[3])
    assert values[0].item() == pytest.approx(1.0) and values[2].item() == pytest.approx(1.0)
    assert torch.isnan(ncc(b, a)[1])  # constant on either side
    summary = summarize_ncc(values)
    assert (summary.defined, summary.excluded) == (2, 2)
    assert summary.mean == pytest.approx(1.0)
    none = summarize_ncc(torch.full((3,), float("nan")))
    assert math.isnan(none.mean) and none.excluded == 3 and none.defined == 0


def test_ncc_equals_numpy_corrcoef_on_random_pairs():
    """Against an independent reference: Pearson's r from numpy on each image's flattened pair, on correlated,
    anti-correlated and unrelated random maps; also the population-sigma formula written out (ddof=0)."""
    rng = np.random.default_rng(7)
    n, h, w = 6, 11, 13
    a = rng.random((n, h, w))
    mix = np.array([1.0, 0.5, 0.0, -0.3, -1.0, 0.9])[:, None, None]  # how much of `a` each `b` carries
    b = mix * a + (1 - np.abs(mix)) * rng.random((n, h, w)) + rng.normal(0, 0.05, (n, h, w))
    got = ncc(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    expected = np.array([np.corrcoef(a[i].ravel(), b[i].ravel())[0, 1] for i in range(n)])
    np.testing.assert_allclose(got, expected, atol=1e-12)
    population = [((a[i] - a[i].mean()) * (b[i] - b[i].mean())).mean() / (a[i].std(ddof=0) * b[i].std(ddof=0))
                  for i in range(n)]
    np.testing.assert_allclose(got, population, atol=1e-12)
    assert got[0] > 0.9 and got[4] < -0.9 and abs(got[2]) < 0.3  # the pairs span the range
