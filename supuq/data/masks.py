"""One grader's mask as stored on disk -> uint8 {0,1}, shared by every loader (prostate, QUBIQ, LIDC files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import DataError


def binary_mask(array: np.ndarray, where: str | Path, probabilities: bool = False) -> np.ndarray:
    """uint8 {0,1} of the same shape from a mask stored as {0,1} (or bool) or {0,255}; with `probabilities`, also
    values in [0,1], thresholded at 0.5 (QUBIQ ships soft masks). Anything else is a one-line DataError naming
    `where` and the first values found."""
    values = np.unique(array)
    if np.isin(values, (0, 1)).all():
        return array.astype(np.uint8)
    if np.isin(values, (0, 255)).all():
        return (array == 255).astype(np.uint8)
    if probabilities and values.min() >= 0 and values.max() <= 1:
        return (array > 0.5).astype(np.uint8)
    shown = ", ".join(f"{v:.4g}" for v in values[:6]) + (", ..." if len(values) > 6 else "")
    if probabilities:
        raise DataError(f"{where}: not a mask (values {shown}; expected {{0,1}}, {{0,255}} or probabilities in [0,1])")
    raise DataError(f"{where}: not a binary mask (values {shown}; expected {{0,1}} or {{0,255}})")
