"""Tests for supuq.sampling: binarisation and the uncertainty decomposition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supuq.sampling import binarize, decompose, decompose_probabilities, grader_mean, grader_variance


def test_binarize_is_sigmoid_above_half():
    logits = torch.tensor([-3.0, -1e-6, 0.0, 1e-6, 4.0])
    assert binarize(logits).tolist() == [False, False, False, True, True]
    assert torch.equal(binarize(logits), torch.sigmoid(logits) > 0.5)


def test_total_is_aleatoric_plus_epistemic():
    g = torch.Generator().manual_seed(0)
    # Per-(image, weight sample) foreground rates so that both parts are non-trivial.
    rate = torch.rand(3, 5, 1, 6, 7, generator=g)
    samples = torch.rand(3, 5, 10, 6, 7, generator=g) < rate
    dec = decompose(samples)
    assert dec.total.shape == dec.aleatoric.shape == dec.epistemic.shape == (3, 6, 7)
    assert torch.allclose(dec.total, dec.aleatoric + dec.epistemic, atol=1e-6)
    assert dec.aleatoric.max() > 0.05 and dec.epistemic.max() > 0.01
    assert (dec.epistemic >= 0).all() and (dec.aleatoric >= 0).all()


def test_single_weight_sample_has_no_epistemic():
    g = torch.Generator().manual_seed(1)
    samples = torch.rand(2, 1, 8, 5, 5, generator=g) > 0.5
    dec = decompose(samples)
    assert (dec.epistemic == 0).all()
    assert torch.allclose(dec.total, dec.aleatoric, atol=1e-7)


def test_equal_latent_samples_have_no_aleatoric():
    g = torch.Generator().manual_seed(2)
    one = torch.rand(2, 4, 1, 5, 5, generator=g) > 0.5
    dec = decompose(one.expand(2, 4, 6, 5, 5))
    assert (dec.aleatoric == 0).all()
    # Then all variance is epistemic: q_m in {0,1}, qbar(1-qbar) = var_m q_m.
    assert torch.allclose(dec.total, dec.epistemic, atol=1e-7)


def test_decompose_known_pixel():
    # One pixel, M=2, K=2: q = (1/2, 1) -> aleatoric = (1/4 + 0)/2 = 1/8, epistemic = var(1/2, 1) = 1/16,
    # qbar = 3/4, total = 3/16 = 1/8 + 1/16.
    samples = torch.tensor([[[1, 0], [1, 1]]], dtype=torch.bool).reshape(1, 2, 2, 1, 1)
    dec = decompose(samples)
    assert dec.aleatoric.item() == 0.125 and dec.epistemic.item() == 0.0625 and dec.total.item() == 0.1875


def test_grader_variance_known_values():
    masks = torch.zeros(1, 4, 1, 4, dtype=torch.uint8)
    masks[0, :1, 0, 1] = 1  # 1 of 4 graders
    masks[0, :2, 0, 2] = 1  # 2 of 4
    masks[0, :, 0, 3] = 1  # all 4
    assert grader_mean(masks).flatten().tolist() == [0.0, 0.25, 0.5, 1.0]
    assert grader_variance(masks).flatten().tolist() == [0.0, 0.1875, 0.25, 0.0]
    assert grader_variance(masks.bool()).dtype == torch.float32


def _random_probs(generator: torch.Generator, shape, dtype=torch.float32) -> torch.Tensor:
    """Probabilities whose level varies per (image, weight sample), so both parts of the variance are non-trivial;
    some exactly 0 and 1 as sigmoids saturate."""
    level = torch.rand(*shape[:2], 1, *shape[3:], generator=generator, dtype=torch.float64)
    probs = (level + 0.3 * torch.randn(*shape, generator=generator, dtype=torch.float64)).clamp(0, 1)
    return probs.to(dtype)


def test_probabilities_total_is_aleatoric_plus_epistemic():
    g = torch.Generator().manual_seed(3)
    probs = _random_probs(g, (3, 5, 6, 7, 8))
    assert (probs == 0).any() and (probs == 1).any()
    dec = decompose_probabilities(probs)
    assert dec.total.shape == dec.aleatoric.shape == dec.epistemic.shape == (3, 7, 8)
    assert dec.total.dtype == torch.float32
    assert torch.allclose(dec.total, dec.aleatoric + dec.epistemic, atol=1e-6)
    assert dec.aleatoric.max() > 0.05 and dec.epistemic.max() > 0.01
    assert (dec.epistemic >= 0).all() and (dec.aleatoric >= 0).all()
    double = decompose_probabilities(probs.double())
    assert double.total.dtype == torch.float64
    assert torch.allclose(double.total, double.aleatoric + double.epistemic, atol=1e-15, rtol=0)


def test_probabilities_single_weight_sample_has_no_epistemic():
    g = torch.Generator().manual_seed(4)
    dec = decompose_probabilities(_random_probs(g, (2, 1, 8, 5, 5)))
    assert (dec.epistemic == 0).all()
    assert torch.allclose(dec.total, dec.aleatoric, atol=1e-7)


def test_probabilities_known_pixel():
    # One pixel, M=2, K=2: p = [[0.2, 0.4], [0.9, 0.7]] -> pbar_m = (0.3, 0.8), pbar = 0.55;
    # aleatoric = (0.3 * 0.7 + 0.8 * 0.2) / 2 = 0.185, epistemic = (0.25^2 + 0.25^2) / 2 = 0.0625,
    # total = 0.55 * 0.45 = 0.2475 = 0.185 + 0.0625.
    probs = torch.tensor([[0.2, 0.4], [0.9, 0.7]], dtype=torch.float64).reshape(1, 2, 2, 1, 1)
    dec = decompose_probabilities(probs)
    assert dec.aleatoric.item() == pytest.approx(0.185, abs=1e-15)
    assert dec.epistemic.item() == pytest.approx(0.0625, abs=1e-15)
    assert dec.total.item() == pytest.approx(0.2475, abs=1e-15)


def test_probabilities_of_binary_samples_equal_decompose():
    g = torch.Generator().manual_seed(5)
    rate = torch.rand(3, 4, 1, 6, 5, generator=g)
    samples = torch.rand(3, 4, 7, 6, 5, generator=g) < rate
    binary, probs = decompose(samples), decompose_probabilities(samples.float())
    for name in ("total", "aleatoric", "epistemic"):
        assert torch.equal(getattr(probs, name), getattr(binary, name)), name


def test_probabilities_match_a_numpy_reimplementation():
    g = torch.Generator().manual_seed(6)
    probs = _random_probs(g, (4, 3, 5, 6, 7), dtype=torch.float64)
    p = probs.numpy()
    per_weight = p.mean(axis=2)  # [N,M,H,W]
    mean = per_weight.mean(axis=1)
    dec = decompose_probabilities(probs)
    np.testing.assert_allclose(dec.aleatoric.numpy(), (per_weight * (1 - per_weight)).mean(axis=1), atol=1e-14)
    np.testing.assert_allclose(dec.epistemic.numpy(), np.var(per_weight, axis=1, ddof=0), atol=1e-14)
    np.testing.assert_allclose(dec.total.numpy(), mean * (1 - mean), atol=1e-14)


@pytest.mark.parametrize("bad", [
    torch.rand(2, 3, 4, 4),  # [N,M,H,W]: no K axis
    torch.full((1, 2, 2, 3, 3), 1.5),
    torch.full((1, 2, 2, 3, 3), -0.25),
    torch.full((1, 2, 2, 3, 3), float("nan")),
    torch.ones(1, 2, 2, 3, 3, dtype=torch.uint8),
])
def test_probabilities_reject_bad_shapes_values_and_dtypes(bad):
    with pytest.raises(ValueError):
        decompose_probabilities(bad)
