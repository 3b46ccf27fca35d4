"""Known-answer and reference tests for supuq.metrics (GED, NCC, calibration)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from supuq.metrics import (
    brier,
    diversity,
    ece,
    expected_distance,
    ged,
    ged_terms,
    ncc,
    pairwise_distance,
    reliability,
    summarize_ncc,
)


def _d(a: torch.Tensor, b: torch.Tensor) -> float:
    """Reference d = 1 - IoU for two boolean masks, with d(empty, empty) = 0."""
    inter = int((a & b).sum())
    union = int((a | b).sum())
    return 0.0 if union == 0 else 1.0 - inter / union


def _ged_loop(samples: torch.Tensor, annotations: torch.Tensor) -> tuple[float, float, float, float]:
    """Straightforward double loops over pairs for one image: (ged, cross, div_s, div_y), V-statistic."""
    s, y = list(samples), list(annotations)
    cross = sum(_d(a, b) for a in s for b in y) / (len(s) * len(y))
    div_s = sum(_d(a, b) for a in s for b in s) / len(s) ** 2
    div_y = sum(_d(a, b) for a in y for b in y) / len(y) ** 2
    return 2 * cross - div_s - div_y, cross, div_s, div_y


def _random_masks(generator: torch.Generator, n: int, s: int, h: int = 6, w: int = 7) -> torch.Tensor:
    """Random masks with varied density, about a quarter of them empty."""
    density = torch.rand(n, s, 1, 1, generator=generator)
    masks = torch.rand(n, s, h, w, generator=generator) < density * 0.6
    empty = torch.rand(n, s, 1, 1, generator=generator) < 0.25
    return masks & ~empty


def test_ged_identical_sets_is_zero():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 5, 8, 8, generator=g) > 0.5  # distinct masks within each set
    assert (ged(masks, masks.clone()) == 0).all()


def test_ged_all_empty_is_zero():
    empty = torch.zeros(2, 4, 8, 8, dtype=torch.bool)
    assert ged(empty, torch.zeros(2, 3, 8, 8, dtype=torch.bool)).tolist() == [0.0, 0.0]


def test_ged_disjoint_single_masks_is_two():
    s = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    y = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    s[0, 0, 0, :2] = True
    y[0, 0, 3, 2:] = True
    # 2 * d(S,Y) - d(S,S) - d(Y,Y) = 2 * 1 - 0 - 0
    assert ged(s, y).item() == 2.0
    # One empty against a non-empty mask is also at distance 1.
    assert ged(torch.zeros_like(s), y).item() == 2.0


def test_ged_hand_computed_with_an_empty_sample():
    # A = pixels {0, 1}, B = pixels {1, 2} on a 1x4 image; samples {A, empty}, annotations {B}.
    # d(A,B) = 1 - 1/3 = 2/3, d(empty,B) = 1, d(A,A) = d(empty,empty) = 0, d(A,empty) = 1.
    # E d(S,Y)  = (2/3 + 1) / 2 = 5/6
    # E d(S,S') = (0 + 1 + 1 + 0) / 4 = 1/2   (ordered pairs, i == j included)
    # E d(Y,Y') = 0
    # GED = 2 * 5/6 - 1/2 - 0 = 7/6
    samples = torch.tensor([[[[1, 1, 0, 0]], [[0, 0, 0, 0]]]], dtype=torch.bool)
    annotations = torch.tensor([[[[0, 1, 1, 0]]]], dtype=torch.bool)
    terms = ged_terms(samples, annotations)
    assert terms.cross.item() == pytest.approx(5 / 6, abs=1e-12)
    assert terms.sample_diversity.item() == pytest.approx(0.5, abs=1e-12)
    assert terms.annotation_diversity.item() == 0.0
    assert terms.ged.item() == pytest.approx(7 / 6, abs=1e-12)


def test_ged_matches_double_loop_on_random_masks():
    g = torch.Generator().manual_seed(1)
    samples = _random_masks(g, 6, 7)
    annotations = _random_masks(g, 6, 4)
    assert not samples.flatten(2).any(-1).all() and not annotations.flatten(2).any(-1).all()  # empties present
    terms = ged_terms(samples, annotations, chunk=4)
    div = diversity(samples)
    cross = expected_distance(samples, annotations)
    for i in range(samples.shape[0]):
        ref = _ged_loop(samples[i], annotations[i])
        assert terms.ged[i].item() == pytest.approx(ref[0], abs=1e-6)
        assert terms.cross[i].item() == pytest.approx(ref[1], abs=1e-6)
        assert terms.sample_diversity[i].item() == pytest.approx(ref[2], abs=1e-6)
        assert terms.annotation_diversity[i].item() == pytest.approx(ref[3], abs=1e-6)
        assert cross[i].item() == pytest.approx(ref[1], abs=1e-6)
        assert div[i].item() == pytest.approx(ref[2], abs=1e-6)


@pytest.mark.parametrize("int8_counts", [True, False])
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (8, 8), (17, 9)])
def test_ged_int8_and_float_counts_match_the_loop_on_any_image_size(monkeypatch, int8_counts, size):
    """Both ways of counting intersections (int8 matmul on the CPU, float elsewhere) on sizes that are and are not
    multiples of 8 pixels, so the byte/word units and the column padding of the int8 kernel are all exercised."""
    import supuq.metrics as metrics

    if int8_counts and not metrics._INT8_GRAM_ON_CPU:
        pytest.skip("torch._int_mm is not available on this CPU build")
    monkeypatch.setattr(metrics, "_INT8_GRAM_ON_CPU", int8_counts)
    g = torch.Generator().manual_seed(5)
    samples = torch.rand(5, 6, *size, generator=g) < 0.4
    annotations = torch.rand(5, 3, *size, generator=g) < 0.4
    got = ged(samples, annotations, chunk=2)
    for i in range(5):
        assert got[i].item() == pytest.approx(_ged_loop(samples[i], annotations[i])[0], abs=1e-12)


def test_ged_chunked_equals_unchunked():
    g = torch.Generator().manual_seed(2)
    samples = _random_masks(g, 7, 5)
    annotations = _random_masks(g, 7, 3)
    whole = ged(samples, annotations, chunk=100)
    assert torch.equal(ged(samples, annotations, chunk=1), whole)
    assert torch.equal(ged(samples, annotations, chunk=3), whole)
    assert whole.shape == (7,) and whole.dtype == torch.float64


def test_ged_accepts_uint8_masks_and_rejects_bad_shapes():
    g = torch.Generator().manual_seed(3)
    samples = _random_masks(g, 2, 3)
    annotations = _random_masks(g, 2, 2)
    assert torch.equal(ged(samples.to(torch.uint8), annotations.float()), ged(samples, annotations))
    with pytest.raises(ValueError):
        ged(samples, annotations[:, :, :3])
    assert ged(samples[:0], annotations[:0]).shape == (0,)


def test_pairwise_distance_shape_and_values():
    a = torch.tensor([[[1, 1, 0], [0, 0, 0]]], dtype=torch.bool)
    b = torch.tensor([[[1, 0, 0], [0, 0, 0], [0, 1, 1]]], dtype=torch.bool)
    d = pairwise_distance(a, b)
    assert d.shape == (1, 2, 3)
    expected = torch.tensor([[[0.5, 1.0, 1 - 1 / 3], [1.0, 0.0, 1.0]]], dtype=torch.float64)
    assert torch.allclose(d, expected, atol=1e-12)


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
