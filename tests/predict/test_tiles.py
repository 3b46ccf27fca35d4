"""Tiling and blending for `supuq predict --crop full` (supuq.predict.tiles): coverage, exactness without
overlap, and blends that keep the maps' meaning."""

from __future__ import annotations

import numpy as np
import pytest

from supuq.errors import SupuqError
from supuq.predict.tiles import MapBlender, blend_weights, tile_windows


@pytest.mark.parametrize("h, w, size, overlap", [(40, 56, 16, 0.5), (20, 24, 16, 0.5), (10, 12, 16, 0.25),
                                                 (32, 48, 16, 0.0), (33, 17, 8, 0.75)])
def test_tiles_cover_every_pixel_and_overlap_as_asked(h, w, size, overlap):
    windows = tile_windows(h, w, size, overlap)
    seen = np.zeros((h, w), int)
    for win in windows:
        seen[win.src_y, win.src_x] += 1
        assert win.dst_y.stop - win.dst_y.start == win.src_y.stop - win.src_y.start <= size
    assert (seen >= 1).all()
    step = round(size * (1 - overlap))
    ys = sorted({win.src_y.start for win in windows})
    if h > size:
        assert ys[-1] == h - size  # the last row of tiles is flush with the bottom edge: no padding
        assert all(b - a == step for a, b in zip(ys[:-2], ys[1:-1]))
    if overlap == 0 and h % size == 0 and w % size == 0:
        assert seen.max() == 1


def test_bad_overlap_is_refused():
    with pytest.raises(SupuqError, match="overlap"):
        tile_windows(32, 32, 16, 1.0)


def test_without_overlap_each_pixel_takes_its_tiles_values_exactly():
    rng = np.random.default_rng(0)
    windows = tile_windows(32, 32, 16, 0.0)
    blender = MapBlender(("pm",), (1, 32, 32), np.ones((16, 16), np.float32))
    expect = np.zeros((32, 32), np.float32)
    for win in windows:
        tile = rng.random((16, 16), dtype=np.float32)
        blender.add(0, win, {"pm": tile})
        expect[win.src_y, win.src_x] = tile
    np.testing.assert_array_equal(blender.maps()["pm"][0], expect)


def test_blending_keeps_constants_and_the_decomposition():
    """A weighted mean of per-tile maps with total = aleatoric + epistemic keeps that identity, and a map that is
    the same constant in every tile stays that constant, also at the image corners (weight floor)."""
    rng = np.random.default_rng(1)
    windows = tile_windows(40, 56, 16, 0.5)
    blender = MapBlender(("aleatoric", "epistemic", "total", "flat"), (2, 40, 56), blend_weights(16))
    for z in range(2):
        for win in windows:
            a, e = rng.random((16, 16)) * 0.25, rng.random((16, 16)) * 0.1
            blender.add(z, win, {"aleatoric": a, "epistemic": e, "total": a + e, "flat": np.full((16, 16), 0.3)})
    maps = blender.maps()
    np.testing.assert_allclose(maps["total"], maps["aleatoric"] + maps["epistemic"], atol=1e-6)
    np.testing.assert_allclose(maps["flat"], 0.3, atol=1e-6)
    weights = blend_weights(16)
    assert weights[7, 7] == weights.max() > 0.9 and weights[0, 0] == weights.min() >= 1e-3  # centre to corners


def test_samples_come_from_the_most_central_tile():
    windows = tile_windows(16, 24, 16, 0.5)  # two tiles: columns 0-15 and 8-23
    assert [(w.src_x.start, w.src_x.stop) for w in windows] == [(0, 16), (8, 24)]
    blender = MapBlender(("pm",), (1, 16, 24), blend_weights(16), samples=2)
    for value, win in zip((0, 1), windows):
        blender.add(0, win, {"pm": np.full((16, 16), float(value))}, np.full((2, 16, 16), value, np.uint8))
    kept = blender.kept[:, 0]
    assert (kept[:, :, :12] == 0).all() and (kept[:, :, 12:] == 1).all()  # split at the midpoint of the overlap
    pm = blender.maps()["pm"][0]
    assert (pm[:, :8] == 0).all() and (pm[:, 16:] == 1).all() and ((pm[:, 8:16] > 0) & (pm[:, 8:16] < 1)).all()
