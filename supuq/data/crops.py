"""Crop helpers shared by the LIDC loaders (toolbox files and pylidc).

Conventions: arrays are row-major ``[..., H, W]``; a centre is ``(row, col)`` in integer pixels. A crop of even
``size`` centred at ``c`` covers rows ``c - size//2 .. c + size//2 - 1``, so a lesion whose bounding box centre
is ``c`` (or ``c - 0.5``, see `bbox_center`) sits within half a pixel of the crop's geometric centre
``(size - 1) / 2``.
"""

from __future__ import annotations

import numpy as np

def crop_centered(array: np.ndarray, center_yx: tuple[int, int], size: int, fill: float = 0) -> np.ndarray:
    """Crop a ``size x size`` window centred at ``center_yx`` from the last two axes, padding with `fill`.

    array: ``[..., H, W]`` (any dtype); center_yx: integer ``(row, col)``, may lie anywhere (even outside the
    image); returns ``[..., size, size]`` of the same dtype, a new array. Pixels of the window that fall
    outside the image are `fill` (so a lesion at the border stays centred instead of the window shifting).
    """
    if size <= 0:
        raise ValueError(f"crop size must be positive, got {size}")
    h, w = array.shape[-2:]
    cy, cx = int(center_yx[0]), int(center_yx[1])
    top, left = cy - size // 2, cx - size // 2
    out = np.full(array.shape[:-2] + (size, size), fill, dtype=array.dtype)
    # Intersection of the window [top, top+size) x [left, left+size) with the image.
    y0, y1 = max(top, 0), min(top + size, h)
    x0, x1 = max(left, 0), min(left + size, w)
    if y0 < y1 and x0 < x1:
        out[..., y0 - top : y1 - top, x0 - left : x1 - left] = array[..., y0:y1, x0:x1]
    return out


def bbox_center(mask: np.ndarray) -> tuple[int, int]:
    """Integer centre ``(row, col)`` of the bounding box of a non-empty 2-D boolean mask ``[H, W]``.

    For a box ``[r0, r1]`` the centre is ``(r0 + r1 + 1) // 2``: with `crop_centered` the box's middle then
    lands at crop coordinate ``size/2 - 0.5`` (odd extent difference) or ``size/2`` (even), i.e. within half a
    pixel of the crop's geometric centre. The bounding box, unlike the centroid, keeps the whole lesion as far
    from both crop edges as possible.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("bbox_center of an empty mask")
    return (int(rows[0] + rows[-1] + 1) // 2, int(cols[0] + cols[-1] + 1) // 2)
