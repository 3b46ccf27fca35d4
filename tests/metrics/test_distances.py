"""Known-answer and reference tests for supuq.metrics.distances (pairwise IoU distances, GED)."""

from __future__ import annotations

import pytest
import torch

from supuq.metrics import diversity, expected_distance, ged, ged_terms, pairwise_distance


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
    import supuq.metrics.distances as metrics

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
