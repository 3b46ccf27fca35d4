"""supuq.data.crops: centred crops padded at the border, and the bounding-box centre (with the HU window it is used
with)."""

from __future__ import annotations

import numpy as np

from supuq.data.crops import bbox_center, crop_centered
from supuq.data.preprocessing import hu_window


def test_crop_centered_pads_at_the_border():
    image = np.arange(2 * 5 * 5).reshape(2, 5, 5)  # [C, H, W]: leading axes are kept
    out = crop_centered(image, (0, 4), 4, fill=-1)
    assert out.shape == (2, 4, 4) and out.dtype == image.dtype
    np.testing.assert_array_equal(out[:, 2:, :3], image[:, :2, 2:])
    assert (out[:, :2] == -1).all() and (out[:, :, 3] == -1).all()
    assert (crop_centered(image, (50, 50), 4) == 0).all()  # window entirely outside: all fill


def test_hu_window_and_bbox_center():
    np.testing.assert_allclose(hu_window(np.array([-2000, -1000, -300, 400, 1000])), [0, 0, 0.5, 1, 1])
    mask = np.zeros((9, 9), bool)
    mask[2:5, 3:7] = True  # rows 2..4 (centre 3), cols 3..6 (centre 4.5)
    assert bbox_center(mask) == (3, 5)
