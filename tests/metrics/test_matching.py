"""supuq.metrics.matching (HM-IoU) against an independent brute force over all matchings, and known answers."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from supuq.metrics import hm_iou


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two boolean numpy masks, 1 when both are empty."""
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else np.logical_and(a, b).sum() / union


def _hm_iou_brute_force(samples: np.ndarray, annotations: np.ndarray) -> float:
    """One image: IoUs from a double loop, the annotations repeated S/D times, the best of all S! matchings."""
    s, d = len(samples), len(annotations)
    repeated = [annotations[j % d] for j in range(s)]
    iou = [[_iou(samples[i], repeated[j]) for j in range(s)] for i in range(s)]
    return max(sum(iou[i][p[i]] for i in range(s)) / s for p in itertools.permutations(range(s)))


def _random_masks(rng: np.random.Generator, n: int, k: int, h: int = 5, w: int = 6) -> np.ndarray:
    """[n,k,h,w] bool masks of varied density, about a quarter of them empty."""
    density = rng.random((n, k, 1, 1)) * 0.7
    masks = rng.random((n, k, h, w)) < density
    return masks & (rng.random((n, k, 1, 1)) > 0.25)


@pytest.mark.parametrize("s, d", [(1, 1), (2, 1), (3, 3), (4, 2), (5, 1), (6, 2), (6, 3), (6, 6)])
def test_hm_iou_equals_brute_force_over_all_matchings(s, d):
    rng = np.random.default_rng(10 * s + d)
    samples, annotations = _random_masks(rng, 8, s), _random_masks(rng, 8, d)
    got = hm_iou(torch.from_numpy(samples), torch.from_numpy(annotations), chunk=3)
    assert got.shape == (8,) and got.dtype == torch.float64
    expected = [_hm_iou_brute_force(samples[i], annotations[i]) for i in range(8)]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-12)


def test_the_random_cases_have_empty_masks_and_values_inside_zero_one():
    """The brute-force comparison above covers empty masks on both sides and non-trivial values."""
    rng = np.random.default_rng(62)  # the (6, 2) case's draw
    samples, annotations = _random_masks(rng, 8, 6), _random_masks(rng, 8, 2)
    assert not samples.reshape(8, 6, -1).any(-1).all() and not annotations.reshape(8, 2, -1).any(-1).all()
    got = hm_iou(torch.from_numpy(samples), torch.from_numpy(annotations)).numpy()
    assert ((got > 0) & (got < 1)).any()


def test_identical_sets_in_any_order_give_one():
    g = torch.Generator().manual_seed(0)
    annotations = torch.rand(3, 4, 8, 8, generator=g) > 0.5
    assert torch.equal(hm_iou(annotations[:, [2, 0, 3, 1]], annotations), torch.ones(3, dtype=torch.float64))
    # S = 2D: every annotation twice among the samples.
    twice = annotations[:, [1, 3, 0, 2, 2, 1, 0, 3]]
    assert torch.equal(hm_iou(twice, annotations), torch.ones(3, dtype=torch.float64))


def test_empty_against_empty_is_one_and_empty_against_a_mask_is_zero():
    empty = torch.zeros(2, 4, 5, 5, dtype=torch.bool)
    assert hm_iou(empty, empty[:, :2]).tolist() == [1.0, 1.0]
    mask = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    mask[0, 0, 1:3, 1:4] = True
    assert hm_iou(torch.zeros_like(mask), mask).item() == 0.0
    assert hm_iou(mask, torch.zeros_like(mask)).item() == 0.0


def test_twice_as_many_samples_match_each_annotation_twice():
    # Annotations A and B on a 1x6 image: A = {0,1}, B = {3,4,5} (disjoint).
    a = torch.tensor([1, 1, 0, 0, 0, 0], dtype=torch.bool)
    b = torch.tensor([0, 0, 0, 1, 1, 1], dtype=torch.bool)
    annotations = torch.stack([a, b]).reshape(1, 2, 1, 6)

    def score(*masks):
        return hm_iou(torch.stack(masks).reshape(1, len(masks), 1, 6), annotations).item()

    assert score(a, b, a, b) == 1.0
    # All four samples are A: two are matched to A (IoU 1), two to the copies of B (IoU 0).
    assert score(a, a, a, a) == 0.5
    # Three A and one B: one A must take a copy of B.
    assert score(a, a, a, b) == 0.75
    # Samples A' = {0} (IoU 1/2 with A) and B' = {4,5} (IoU 2/3 with B), each twice: (2 * 1/2 + 2 * 2/3) / 4.
    a1 = torch.tensor([1, 0, 0, 0, 0, 0], dtype=torch.bool)
    b1 = torch.tensor([0, 0, 0, 0, 1, 1], dtype=torch.bool)
    assert score(a1, b1, b1, a1) == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-15)


def test_the_matching_is_optimal_where_greedy_is_not():
    # On a 1x10 image, A = {0,1,2,3}, B = {4,5,6,7}, s1 = {1,2,3,4,5}, s2 = {0,1,8}:
    # IoU(s1,A) = 3/6, IoU(s1,B) = 2/7, IoU(s2,A) = 2/5, IoU(s2,B) = 0. Taking the largest IoU first (s1 with A)
    # leaves s2 with B: mean 1/4. The optimal matching is s1-B, s2-A: mean (2/7 + 2/5) / 2 = 12/35.
    def mask(*pixels):
        m = torch.zeros(1, 10, dtype=torch.bool)
        m[0, list(pixels)] = True
        return m

    samples = torch.stack([mask(1, 2, 3, 4, 5), mask(0, 1, 8)])[None]
    annotations = torch.stack([mask(0, 1, 2, 3), mask(4, 5, 6, 7)])[None]
    assert hm_iou(samples, annotations).item() == pytest.approx(12 / 35, abs=1e-15)


def test_bad_shapes_raise_value_error_naming_the_sizes():
    samples = torch.zeros(2, 5, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"S=5.*D=2"):
        hm_iou(samples, torch.zeros(2, 2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"S=2.*D=4"):  # fewer samples than annotations
        hm_iou(samples[:, :2], torch.zeros(2, 4, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="D=0"):
        hm_iou(samples, torch.zeros(2, 0, 4, 4, dtype=torch.bool))
    for annotations in (torch.zeros(3, 1, 4, 4), torch.zeros(2, 1, 4, 5), torch.zeros(2, 1, 16)):
        with pytest.raises(ValueError):
            hm_iou(samples, annotations)
    with pytest.raises(ValueError):
        hm_iou(samples[0], torch.zeros(1, 4, 4))


def test_numeric_masks_chunks_and_no_images():
    rng = np.random.default_rng(3)
    samples, annotations = torch.from_numpy(_random_masks(rng, 7, 4)), torch.from_numpy(_random_masks(rng, 7, 2))
    whole = hm_iou(samples, annotations, chunk=100)
    assert torch.equal(hm_iou(samples, annotations, chunk=1), whole)
    assert torch.equal(hm_iou(samples.to(torch.uint8), annotations.float()), whole)
    assert hm_iou(samples[:0], annotations[:0]).shape == (0,)
