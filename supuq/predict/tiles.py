"""Where the model looks in a slice for `supuq predict`: the centre crop, or overlapping tiles blended into one map.

A tile's border pixels see little context (zero padding beyond the tile), so with `--crop full` neighbouring
tiles overlap (by half a tile by default) and each pixel's maps are the weighted mean over the tiles that cover
it, with a Gaussian weight centred on each tile (sigma = tile / 8, as nnU-Net's sliding-window inference): no
seams where tiles meet, and the centre of some tile decides each pixel. The maps are per-pixel means (pm) and
variances of samples (aleatoric, epistemic, total), so a weighted mean keeps total = aleatoric + epistemic. Binary
samples cannot be averaged: each pixel keeps the samples of the tile whose weight there is largest.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import SupuqError

BLEND_SIGMA = 1 / 8  # of the tile side
BLEND_FLOOR = 1e-3  # lowest weight, so that an image corner covered by one tile edge still gets its value


@dataclass(frozen=True)
class Window:
    """One model input of side `size`: slice rows/cols src_* of the image go to rows/cols dst_* of the input."""

    src_y: slice
    src_x: slice
    dst_y: slice
    dst_x: slice


def centre_window(h: int, w: int, size: int) -> Window:
    """The central size x size window of an h x w slice (the slice zero-padded around it when smaller), as
    `prostate.center_crop` cuts training slices."""
    spans = []
    for extent in (h, w):
        if extent >= size:
            start = (extent - size) // 2
            spans.append((slice(start, start + size), slice(0, size)))
        else:
            start = (size - extent) // 2
            spans.append((slice(0, extent), slice(start, start + extent)))
    return Window(spans[0][0], spans[1][0], spans[0][1], spans[1][1])


def _tile_starts(extent: int, size: int, step: int) -> list[int]:
    """Tile origins along one axis: every `step` pixels, plus one flush with the far edge; [0] when the slice is
    no larger than a tile (it is then zero-padded at the far side)."""
    if extent <= size:
        return [0]
    starts = list(range(0, extent - size + 1, step))
    if starts[-1] != extent - size:
        starts.append(extent - size)
    return starts


def tile_windows(h: int, w: int, size: int, overlap: float = 0.5) -> list[Window]:
    """size x size tiles covering an h x w slice, row by row, neighbours overlapping by `overlap` of a tile
    (0 <= overlap < 1; the last row and column of tiles sit flush with the slice's far edges, so they may overlap
    more). A side smaller than a tile is zero-padded bottom/right."""
    if not 0 <= overlap < 1:
        raise SupuqError(f"--overlap must be in [0, 1), got {overlap:g}")
    step = max(1, int(round(size * (1 - overlap))))
    out = []
    for y in _tile_starts(h, size, step):
        for x in _tile_starts(w, size, step):
            dy, dx = min(size, h - y), min(size, w - x)
            out.append(Window(slice(y, y + dy), slice(x, x + dx), slice(0, dy), slice(0, dx)))
    return out


def blend_weights(size: int) -> np.ndarray:
    """Gaussian weights [size, size] centred on the tile, sigma = size * BLEND_SIGMA, from BLEND_FLOOR to 1. The
    floor is added rather than clipped to, so weights still fall strictly towards the tile's corners and the most
    central tile of a pixel is never a tie."""
    axis = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-0.5 * (axis / (size * BLEND_SIGMA)) ** 2)
    return (BLEND_FLOOR + (1 - BLEND_FLOOR) * np.outer(g, g)).astype(np.float32)


class MapBlender:
    """Accumulates per-tile maps into whole-slice maps of a [Z, H, W] volume.

    `weights` [size, size]: the per-pixel weight of a tile (ones for a single centre crop or non-overlapping
    tiles: then every pixel takes its one tile's value exactly). `samples`: with S > 0, also keep S binary
    samples per pixel ([S, Z, H, W] uint8) from the tile with the largest weight there.
    """

    def __init__(self, names: tuple[str, ...], shape: tuple[int, int, int], weights: np.ndarray, samples: int = 0):
        self.weights = weights
        self.sums = {name: np.zeros(shape, np.float32) for name in names}
        self.total_weight = np.zeros(shape, np.float32)
        self.kept = np.zeros((samples, *shape), np.uint8) if samples else None
        self.best = np.zeros(shape, np.float32) if samples else None

    def add(self, z: int, win: Window, maps: dict[str, np.ndarray], samples: np.ndarray | None = None) -> None:
        """maps: name -> [size, size] for the tile at (z, win); samples: [S, size, size] binary."""
        w = self.weights[win.dst_y, win.dst_x]
        for name, value in maps.items():
            self.sums[name][z, win.src_y, win.src_x] += w * value[win.dst_y, win.dst_x]
        self.total_weight[z, win.src_y, win.src_x] += w
        if self.kept is not None and samples is not None:
            best = self.best[z, win.src_y, win.src_x]  # views: writing them writes the blender's arrays
            wins = w > best  # where this tile is the most central so far
            self.kept[:, z, win.src_y, win.src_x][:, wins] = samples[:, win.dst_y, win.dst_x][:, wins]
            best[wins] = w[wins]

    def maps(self) -> dict[str, np.ndarray]:
        """Weighted means [Z, H, W]; 0 where no tile looked."""
        covered = self.total_weight > 0
        out = {}
        for name, total in self.sums.items():
            value = np.zeros_like(total)
            np.divide(total, self.total_weight, out=value, where=covered)
            out[name] = value
        return out
