"""Synthetic generator: determinism, layout, exact p* against many redraws, multimodality."""

from __future__ import annotations

import numpy as np
import pytest

from supuq.data.synthetic import SyntheticParams, generate, make_scene, sample_graders
from supuq.errors import DataError


def test_deterministic_for_a_seed():
    a, b = generate(12, size=24, seed=3), generate(12, size=24, seed=3)
    for name in ("images", "masks", "prob"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    np.testing.assert_array_equal(a.groups, b.groups)
    c = generate(12, size=24, seed=4)
    assert not np.array_equal(a.images, c.images)


def test_shapes_dtypes_ranges_and_meta():
    ds = generate(10, size=20, graders=3, seed=0)
    assert ds.images.shape == (10, 1, 20, 20) and ds.images.dtype == np.float32
    assert ds.masks.shape == (10, 3, 20, 20) and ds.masks.dtype == np.uint8
    assert ds.prob.shape == (10, 20, 20) and ds.prob.dtype == np.float32
    assert 0 <= ds.images.min() and ds.images.max() <= 1
    assert set(np.unique(ds.masks)) <= {0, 1}
    assert 0 <= ds.prob.min() and ds.prob.max() <= 1
    assert list(ds.groups[:5]) == ["syn00000"] * 4 + ["syn00001"]
    assert ds.meta["dataset"] == "synthetic" and ds.meta["source"] == "generated"
    assert ds.meta["generator"]["n"] == 10 and ds.meta["generator"]["jitter_std"] == SyntheticParams().jitter_std


def test_masks_are_redraws_of_the_same_scene():
    """generate()'s masks come from the same fields as sample_graders(): no mask outside where p* > 0."""
    ds = generate(16, size=24, seed=1)
    assert not (ds.masks.astype(bool) & (ds.prob[:, None] == 0)).any()
    draws = sample_graders(16, size=24, seed=1, draws=5)
    assert draws.shape == (5, 16, 4, 24, 24) and draws.dtype == np.uint8
    assert not (draws.astype(bool) & (ds.prob[None, :, None] == 0)).any()


def test_empirical_grader_mean_converges_to_prob():
    n, size = 12, 32
    ds = generate(n, size=size, seed=5)
    draws = sample_graders(n, size=size, seed=5, draws=400, draw_seed=11)
    empirical = draws.mean(axis=(0, 2), dtype=np.float64)  # mean over redraws and graders: [N,H,W]
    error = np.abs(empirical - ds.prob)
    assert ((ds.prob > 0.2) & (ds.prob < 0.8)).sum() > 50  # there are genuinely ambiguous pixels to check
    assert error.max() < 0.05 and error.mean() < 0.01


def test_prob_exact_without_jitter_and_misses():
    """s = 0 and no misses: every grader is deterministic, so p* is the plain grader average."""
    knobs = dict(jitter_std=0.0, miss_c50=-10.0, miss_c50_spread=0.0, miss_tau=0.01)
    ds = generate(8, size=24, seed=2, **knobs)
    np.testing.assert_allclose(ds.prob, ds.masks.mean(axis=1), atol=1e-6)


def test_graders_differ_systematically_and_faint_lesions_get_missed():
    ds = generate(300, size=32, seed=0)
    drawn = ds.masks.reshape(len(ds), ds.graders, -1).any(axis=2)  # [N,D]
    lesion_free = ~make_scene(300, size=32, seed=0).active.any(axis=1)
    assert 0.1 < lesion_free.mean() < 0.3  # lesion-free images exist (~20%)
    assert not drawn[lesion_free].any()  # ... and nobody draws anything there
    mixed = drawn.any(axis=1) & ~drawn.all(axis=1)  # some graders empty, some not: multimodal
    assert mixed.mean() > 0.05
    area = ds.masks.mean(axis=(0, 2, 3))
    assert area[0] > area[-1]  # grader 1 is the most generous, grader D the most conservative


def test_default_size_generates():
    """The default benchmark (2000 images of 64 px, 16 chunks of the vectorised generator) holds what the
    generative model promises across every chunk, not only its shape."""
    n, size, graders = 2000, 64, 4
    ds = generate(n, size=size, graders=graders, seed=0)
    assert ds.masks.shape == (n, graders, size, size) and ds.prob.shape == (n, size, size)
    assert ds.images.min() >= 0 and ds.images.max() <= 1 and set(np.unique(ds.masks)) == {0, 1}
    # 4 images per patient: 500 patients, each on 4 consecutive images
    assert len(set(ds.groups)) == n // 4 and list(ds.groups[-4:]) == [f"syn{n // 4 - 1:05d}"] * 4
    # lesion-free images at the P(0 lesions) = 0.2 rate, nobody draws on them and p* is 0 there
    lesion_free = ~make_scene(n, size=size, seed=0).active.any(axis=1)
    assert abs(lesion_free.mean() - SyntheticParams().lesion_count_probs[0]) < 0.03
    assert not ds.masks[lesion_free].any() and not ds.prob[lesion_free].any()
    assert not (ds.masks.astype(bool) & (ds.prob[:, None] == 0)).any()
    # the graders' average agrees with p* over the whole set (each mask is one draw of p*)
    assert ds.masks.mean(dtype=np.float64) == pytest.approx(ds.prob.mean(dtype=np.float64), rel=0.05)
    area = ds.masks.mean(axis=(0, 2, 3))
    assert all(a > b for a, b in zip(area, area[1:]))  # grader 1 most generous ... grader 4 most conservative
    # every chunk of 128 images (the last one partial) has lesions and ambiguous pixels: no chunk came out blank
    for start in range(0, n, 128):
        chunk = ds.prob[start:start + 128]
        assert ((chunk > 0.2) & (chunk < 0.8)).any(), start
        assert ds.images[start:start + 128].std() > 0.01, start


def test_unknown_knob_is_a_data_error():
    with pytest.raises(DataError, match="unknown synthetic generator knob"):
        generate(4, size=16, wobble=3)
    with pytest.raises(DataError, match="lesion_count_probs"):
        generate(4, size=16, lesion_count_probs=(0.5, 0.5))
