"""Tests for supuq.sampling: binarisation and the uncertainty decomposition."""

from __future__ import annotations

import torch

from supuq.sampling import binarize, decompose, grader_mean, grader_variance


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
