"""Intensity preprocessing, recorded once and applied twice: by the readers when they build a cache, and by
`supuq predict` on new inputs, so that training and prediction cannot drift.

A reader calls one of the `*_record` functions and stores the dict in the cache meta under ``"preprocessing"``
(training copies it into the checkpoint's ``data_meta``); `apply` takes such a record and a volume and maps it
to [0, 1] exactly as the reader did. The kinds:

- ``unit``: the images are already in [0, 1] (synthetic, Knegt's pickle); an 8-bit input is divided by 255.
- ``scale``: divided by a fixed maximum (Kohl's PNG crops, max 255).
- ``hu_window``: Hounsfield units clipped to [lo, hi] and scaled to [0, 1] (both LIDC routes); the input must
  look like HU (`check_hu`).
- ``percentile``: per-volume lo/hi percentiles to 0/1, clipped (MICCAI2012, QUBIQ).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SupuqError

KINDS = ("unit", "scale", "hu_window", "percentile")

# Lung window used for both LIDC routes, in Hounsfield units. [-1000, 400] is the range most LIDC/LUNA16
# nodule pipelines clip to: air (-1000) maps to 0, and soft tissue / nodules (~ -100..100 HU) land mid-range,
# while bone and contrast (> 400 HU) saturate at 1. The paper used the LIDC Toolbox's images rescaled to
# [0, 1]; it does not state a window, so this one is our choice (configurable through `hu_window`).
LUNG_WINDOW_HU: tuple[float, float] = (-1000.0, 400.0)

# Most LIDC-IDRI CT series store unsigned values with RescaleSlope 1 and RescaleIntercept -1024. The LIDC
# Toolbox writes the stored values without applying them, so the toolbox route applies this intercept.
TOOLBOX_RESCALE_INTERCEPT: float = -1024.0
TOOLBOX_RESCALE_SLOPE: float = 1.0

PERCENTILES = (0.5, 99.5)
"""Robust per-volume scaling of MR (MICCAI2012, QUBIQ): these percentiles go to 0 and 1."""

# check_hu: a CT in Hounsfield units shows air (about -1000 HU) or lung (-900 to -500 HU) somewhere -- around
# the body, in the lungs or airways -- while MR, PET, [0, 1]-scaled images or CT stored values without the DICOM
# rescale (0..4095) have nothing that low. Values below HU_PADDING are no tissue (scanners pad the field of
# view with -1024, -2048, -3024 or -32768) and are left out of the statistics.
HU_AIR = -500.0
HU_AIR_FRACTION = 1e-3  # at least 0.1% of the (non-padding) voxels must be air/lung
HU_PADDING = -1200.0
HU_MAX_P99 = 3072.0  # 99th percentile above the 12-bit HU ceiling: not HU (or mostly metal)
UNIT_TOLERANCE = 1e-3  # float rounding around [0, 1] is clipped, anything beyond is refused


# --- the records readers store ------------------------------------------------------------------------------


def _size(size: int | tuple[int, ...]) -> list[int]:
    """[H, W] of the cached images (a square side or a shape), which predict crops new slices to."""
    return [int(size), int(size)] if isinstance(size, int) else [int(s) for s in size]


def unit_record(size: int | tuple[int, ...]) -> dict[str, Any]:
    return {"kind": "unit", "size": _size(size)}


def scale_record(top: float, size: int | tuple[int, ...]) -> dict[str, Any]:
    return {"kind": "scale", "max": top, "size": _size(size)}


def hu_window_record(window: tuple[float, float], size: int | tuple[int, ...], rescale: Any) -> dict[str, Any]:
    """`rescale`: how the reader got HU ("dicom": each file's own slope/intercept, or {slope, intercept})."""
    return {"kind": "hu_window", "lo": float(window[0]), "hi": float(window[1]), "rescale": rescale,
            "size": _size(size)}


def percentile_record(size: int | tuple[int, ...]) -> dict[str, Any]:
    return {"kind": "percentile", "lo": PERCENTILES[0], "hi": PERCENTILES[1], "per": "volume", "size": _size(size)}


# --- the transforms, shared by the readers and `apply` --------------------------------------------------------


def hu_window(hu: np.ndarray, lo: float = LUNG_WINDOW_HU[0], hi: float = LUNG_WINDOW_HU[1]) -> np.ndarray:
    """Clip Hounsfield units to ``[lo, hi]`` and scale linearly to float32 ``[0, 1]`` (any shape)."""
    if not hi > lo:
        raise ValueError(f"HU window needs lo < hi, got [{lo}, {hi}]")
    out = (np.asarray(hu, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def stored_to_hu(
    stored: np.ndarray, slope: float = TOOLBOX_RESCALE_SLOPE, intercept: float = TOOLBOX_RESCALE_INTERCEPT
) -> np.ndarray:
    """DICOM stored values to Hounsfield units: ``stored * slope + intercept`` as float32 (any shape)."""
    return np.asarray(stored, dtype=np.float32) * np.float32(slope) + np.float32(intercept)


def normalise(volume: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Per-volume robust scaling: float32 [Z,Y,X] mapped so the lo/hi percentiles go to 0/1, then clipped."""
    lo, hi = np.percentile(volume, percentiles)
    if hi <= lo:  # a constant volume carries no contrast: keep it at 0 instead of dividing by zero
        return np.zeros(volume.shape, np.float32)
    scaled = (np.asarray(volume, dtype=np.float64) - lo) / (hi - lo)
    return np.clip(scaled, 0, 1).astype(np.float32)


def check_hu(volume: np.ndarray, where: str = "input") -> None:
    """Refuse a volume that is clearly not in Hounsfield units (one-line SupuqError); see the HU_* constants.

    Rule: among voxels >= HU_PADDING (-1200; lower values are scanner padding), at least HU_AIR_FRACTION (0.1%)
    must be <= HU_AIR (-500, air or lung) and the 99th percentile must be <= HU_MAX_P99 (3072). An MR volume in
    [0, 1000], a [0, 1]-scaled image or CT stored values (0..4095, rescale not applied) all fail the first test.
    """
    values = np.asarray(volume, dtype=np.float32).ravel()
    physical = values[values >= HU_PADDING]
    lo, hi = float(values.min()), float(values.max())
    if physical.size == 0:
        raise SupuqError(f"{where}: every voxel is below {HU_PADDING:g} (range [{lo:g}, {hi:g}]): not a CT in HU")
    air = float((physical <= HU_AIR).mean())
    p99 = float(np.percentile(physical, 99))
    if air < HU_AIR_FRACTION or p99 > HU_MAX_P99:
        why = (f"only {air:.2%} of voxels at or below {HU_AIR:g} HU (air/lung)" if air < HU_AIR_FRACTION
               else f"99th percentile {p99:g} above {HU_MAX_P99:g}")
        raise SupuqError(
            f"{where}: intensities [{lo:g}, {hi:g}] do not look like Hounsfield units ({why}); this model was "
            "trained on CT in HU: give a CT volume or DICOM series (stored values need HU = stored * slope + "
            "intercept first)"
        )


def apply(volume: np.ndarray, preprocessing: dict[str, Any] | None, where: str = "input",
          uint8_input: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Input intensities [Z,Y,X] -> float32 [Z,Y,X] in [0, 1] as the training data; also what was applied.

    `uint8_input`: the file stores 8-bit values (a ``unit`` model then divides by 255). SupuqError when the
    record is missing or unknown, or the input cannot be made to match (see the module docstring).
    """
    if not preprocessing:
        raise SupuqError("the checkpoint records no input preprocessing (its training data predates the "
                         "'preprocessing' meta key): prepare the data again and retrain, or pass preprocessing= "
                         "to predict_volume")
    kind = preprocessing.get("kind")
    values = np.asarray(volume, dtype=np.float64)
    if not np.isfinite(values).all():
        raise SupuqError(f"{where}: contains NaN or infinite values")
    lo, hi = float(values.min()), float(values.max())
    applied: dict[str, Any] = {"kind": kind, "input_range": [lo, hi]}
    if kind == "unit":
        if uint8_input:
            values = values / 255.0
            applied["divided_by"] = 255
        elif lo < -UNIT_TOLERANCE or hi > 1 + UNIT_TOLERANCE:
            raise SupuqError(f"{where}: intensities [{lo:g}, {hi:g}] are not in [0, 1], but this model was trained "
                             "on images already scaled to [0, 1]; scale the input the same way first")
        out = np.clip(values, 0, 1)
    elif kind == "scale":
        top = float(preprocessing["max"])
        if lo < 0 or hi > top:
            raise SupuqError(f"{where}: intensities [{lo:g}, {hi:g}] are outside [0, {top:g}], the range of this "
                             f"model's training images (divided by {top:g})")
        out = values / top
        applied["divided_by"] = top
    elif kind == "hu_window":
        check_hu(values, where)
        wlo, whi = float(preprocessing["lo"]), float(preprocessing["hi"])
        out = hu_window(values, wlo, whi)
        applied["window_hu"] = [wlo, whi]
    elif kind == "percentile":
        percentiles = (float(preprocessing["lo"]), float(preprocessing["hi"]))
        plo, phi = np.percentile(values, percentiles)
        applied.update(percentiles=list(percentiles), values=[float(plo), float(phi)])
        if phi <= plo:  # constant input: no contrast, the training loader maps it to 0 as well
            applied["constant"] = True
        out = normalise(values, percentiles)
    else:
        raise SupuqError(f"the checkpoint's preprocessing kind {kind!r} is unknown (known: {', '.join(KINDS)})")
    return out.astype(np.float32), applied
