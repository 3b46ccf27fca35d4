"""supuq.data.preprocessing: the rule that tells HU volumes from others."""

from __future__ import annotations

import numpy as np
import pytest

from supuq.data.preprocessing import check_hu
from supuq.errors import SupuqError

from ..predict.test_run import SHAPE, ct_volume


def test_check_hu_rule():
    hu = ct_volume().astype(np.float32)
    check_hu(hu)
    padded = hu.copy()
    padded[:, :2] = -3024  # scanner padding outside the field of view is ignored
    check_hu(padded)
    for bad in (np.random.default_rng(0).uniform(0, 1000, SHAPE),  # MR-like
                hu + 1024,  # stored values without the rescale
                np.random.default_rng(0).uniform(0, 1, SHAPE)):  # already scaled
        with pytest.raises(SupuqError, match="do not look like Hounsfield units"):
            check_hu(bad)
