"""LIDC-IDRI as the literature distributes it: LIDC Toolbox output, Knegt's pickle, Kohl's PNG crops.

Three routes, three different LIDC versions (crops, counts and splits differ: compare numbers only within one):

- `load_toolbox` (dataset ``lidc-toolbox``, this module): the LIDC Matlab Toolbox (Lampert et al.) output, the
  route the reference paper took; layout below.
- `lidc_release.load_lidc_pickle` (dataset ``lidc-pickle``): Stefan Knegt's ``data_lidc.pickle`` (the PyTorch
  Probabilistic U-Net), read with a restricted unpickler; see its docstring.
- `lidc_release.load_lidc_png` (dataset ``lidc-png``): Kohl et al.'s 180x180 PNG crops (the Probabilistic U-Net
  release), centre-cropped to 128; see its docstring.

Toolbox input layout (``root``)::

    images/<study>/sliceN.tif                 512x512 uint16 stored DICOM values (no rescale applied)
    images/<study>/slice_correspondences.txt  slice N -> z position, SOPInstanceUID, DICOM file name
    gts/<study>/sliceN/GT_id{k}.tif           512x512 uint8 {0,255}: reader k's mask on slice N
                                              (a reader without an outline on that slice has no file)

Intensities: the toolbox writes the stored values without the DICOM rescale. LIDC-IDRI CT series almost all
use RescaleSlope 1 and RescaleIntercept -1024; the real sample confirms it (the air peak sits at stored
~22-28, i.e. ~-1000 HU, soft tissue at ~914-1071, i.e. ~-110..+47 HU). So HU = stored - 1024 (overridable with
`rescale`), then the lung window `preprocessing.LUNG_WINDOW_HU` maps to [0, 1].

Patches: per slice, the union of the readers' masks is split into 8-connected components, one patch per
component (a slice showing two nodules gives two patches). The crop is ``crop x crop`` centred on the
component's bounding box (`crops.bbox_center`), padded with 0 (air) at the image border. The D masks are the
readers' *full* masks on that slice cropped the same way, so a second lesion nearby may appear in a crop.
Reader k goes to mask slot k-1 (reader identity kept within a study); readers with k > `max_graders` are
dropped and counted; absent readers give empty masks. Slices whose masks are all empty give no patch.

Groups are patient ids (``LIDC-IDRI-dddd`` from the correspondence file's data path), falling back to the
study folder name when the file does not name one.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from ..errors import DataError
from .crops import bbox_center, crop_centered
from .preprocessing import (
    LUNG_WINDOW_HU,
    TOOLBOX_RESCALE_INTERCEPT,
    TOOLBOX_RESCALE_SLOPE,
    hu_window,
    hu_window_record,
    stored_to_hu,
)
from .masks import binary_mask
from .types import MultiGraderSet

_SLICE_DIR = re.compile(r"^slice(\d+)$")
_SLICE_TIF = re.compile(r"^slice(\d+)\.tif$")
_GT_FILE = re.compile(r"^GT_id(\d+)\.tif$")
_CORR_LINE = re.compile(r"^\s*slice:\s*(\d+)\s*-\s*z pos:\s*([-+0-9.eE]+)")
_PATIENT = re.compile(r"(LIDC-IDRI-\d+)")
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
_ITEM_KEYS = ("study", "patient", "slice", "z", "component", "center_row", "center_col")


def read_tiff(path: Path, kind: str = "TIFF") -> np.ndarray:
    """A single-page TIFF (or PNG: any Pillow format) as a 2-D array ``[H, W]`` (dtype as stored); DataError
    naming `path` if unreadable.

    Pillow rather than tifffile: the toolbox writes LZW-compressed TIFFs, which tifffile only decodes with the
    optional `imagecodecs` package. Pillow raises on truncated data (its LOAD_TRUNCATED_IMAGES stays False).
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            array = np.array(im)
    except FileNotFoundError:
        raise DataError(f"{path}: missing") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise DataError(f"{path}: unreadable or truncated {kind} ({err})") from None
    if array.ndim != 2:
        raise DataError(f"{path}: expected a single-channel 2-D image, got shape {array.shape}")
    return array


def read_binary_mask(path: Path, kind: str = "TIFF") -> np.ndarray:
    """A reader's mask image as bool ``[H, W]``; values must be {0, 255} (toolbox, Kohl's PNGs) or {0, 1}."""
    return binary_mask(read_tiff(path, kind), path).astype(bool)


def read_correspondences(path: Path) -> tuple[dict[int, float], str | None]:
    """Parse ``slice_correspondences.txt``: ({slice number: z position in mm}, patient id or None)."""
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err.__class__.__name__})") from None
    zpos: dict[int, float] = {}
    patient = None
    for line in text.splitlines():
        if (m := _CORR_LINE.match(line)) is not None:
            zpos[int(m.group(1))] = float(m.group(2))
        elif line.startswith("Original Data Path") and (p := _PATIENT.search(line)) is not None:
            patient = p.group(1)
    if not zpos:
        raise DataError(f"{path}: no 'slice: N - z pos: Z' lines (not a toolbox slice_correspondences.txt)")
    return zpos, patient


def _study_info(root: Path, study: str) -> tuple[dict[int, float], str]:
    """z positions and the patient id of one study; the folder name stands in when no file names a patient."""
    for sub in ("images", "gts"):
        path = root / sub / study / "slice_correspondences.txt"
        if path.is_file():
            zpos, patient = read_correspondences(path)
            return zpos, patient or study
    return {}, study


def _numbered(folder: Path, pattern: re.Pattern[str], dirs: bool) -> list[tuple[int, Path]]:
    """Entries of `folder` matching `pattern` (files or folders), as (number, path) sorted by number."""
    found = []
    for entry in folder.iterdir():
        if (m := pattern.match(entry.name)) is not None and entry.is_dir() == dirs:
            found.append((int(m.group(1)), entry))
    return sorted(found)


def load_toolbox(
    root: str | Path,
    crop: int = 128,
    max_graders: int = 4,
    window: tuple[float, float] = LUNG_WINDOW_HU,
    rescale: tuple[float, float] = (TOOLBOX_RESCALE_SLOPE, TOOLBOX_RESCALE_INTERCEPT),
) -> MultiGraderSet:
    """Read a LIDC Toolbox output folder into patches centred on each lesion component.

    Returns images float32 [N,1,crop,crop] in [0,1] (HU = stored * slope + intercept with
    ``rescale=(slope, intercept)``, then windowed to `window` HU), masks uint8 [N,max_graders,crop,crop] in
    {0,1}, groups [N] patient ids. ``meta["items"]`` holds per-patch columns (study, patient, slice, z,
    component, center_row, center_col). Raises DataError naming the file for a missing folder, an unreadable
    or truncated TIFF, a non-binary mask, or an image/mask shape mismatch.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such LIDC toolbox folder")
    for sub in ("images", "gts"):
        if not (root / sub).is_dir():
            raise DataError(f"{root / sub}: missing (a LIDC toolbox folder has images/ and gts/)")
    if max_graders < 1 or crop < 1:
        raise DataError(f"load_toolbox needs crop >= 1 and max_graders >= 1, got {crop=}, {max_graders=}")
    studies = sorted(p.name for p in (root / "images").iterdir() if p.is_dir())
    if not studies:
        raise DataError(f"{root / 'images'}: no study folders")

    images, masks, groups = [], [], []
    items: dict[str, list[Any]] = {key: [] for key in _ITEM_KEYS}
    counts = dict(studies=len(studies), slices=0, mask_files=0, empty_mask_files=0, dropped_mask_files=0,
                  slices_without_foreground=0, studies_without_gts=0, patches=0)

    for study in studies:
        gts_dir = root / "gts" / study
        if not gts_dir.is_dir():
            counts["studies_without_gts"] += 1  # a study without outlines contributes no lesion patch
            continue
        zpos, patient = _study_info(root, study)
        for number, slice_dir in _numbered(gts_dir, _SLICE_DIR, dirs=True):
            image_path = root / "images" / study / f"slice{number}.tif"
            if not image_path.is_file():
                raise DataError(f"{image_path}: missing (its masks are in {slice_dir})")
            hu = stored_to_hu(read_tiff(image_path), *rescale)
            counts["slices"] += 1
            slots = np.zeros((max_graders, *hu.shape), dtype=bool)  # [D, H, W]
            for reader, gt_path in _numbered(slice_dir, _GT_FILE, dirs=False):
                mask = read_binary_mask(gt_path)
                counts["mask_files"] += 1
                counts["empty_mask_files"] += int(not mask.any())
                if mask.shape != hu.shape:
                    raise DataError(f"{gt_path}: mask shape {mask.shape} differs from image {image_path} {hu.shape}")
                if not 1 <= reader <= max_graders:
                    counts["dropped_mask_files"] += 1
                    continue
                slots[reader - 1] = mask
            labels, n_components = ndimage.label(slots.any(axis=0), structure=_EIGHT_CONNECTED)
            if n_components == 0:
                counts["slices_without_foreground"] += 1
                continue
            windowed = hu_window(hu, *window)  # [H, W]; cropping after windowing so padding 0 = air
            for component in range(1, n_components + 1):
                center = bbox_center(labels == component)
                images.append(crop_centered(windowed, center, crop, fill=0.0)[None])
                masks.append(crop_centered(slots.view(np.uint8), center, crop, fill=0))
                groups.append(patient)
                for key, value in (("study", study), ("patient", patient), ("slice", number),
                                   ("z", zpos.get(number)), ("component", component),
                                   ("center_row", center[0]), ("center_col", center[1])):
                    items[key].append(value)

    counts["patches"] = len(images)
    if counts["dropped_mask_files"]:
        print(f"LIDC toolbox: dropped {counts['dropped_mask_files']} masks of readers numbered above "
              f"{max_graders} (GT_id{max_graders + 1}.tif and up)", file=sys.stderr)
    if not images:
        raise DataError(f"{root}: no lesion pixels in any gts/ mask, nothing to train on")
    meta = dict(
        dataset="lidc",
        source="lidc-toolbox",
        root=str(root),
        crop=crop,
        max_graders=max_graders,
        window=list(window),
        rescale=dict(slope=rescale[0], intercept=rescale[1]),
        # What `supuq predict` must repeat on new inputs: HU (the toolbox's stored values needed this rescale;
        # a DICOM series read by SimpleITK is in HU already), lung window, crop size.
        preprocessing=hu_window_record(window, crop, rescale=dict(slope=rescale[0], intercept=rescale[1])),
        patch_rule="one patch per 8-connected component of the readers' union mask per slice; "
        "crop centred on the component's bounding box; masks are the readers' full masks cropped",
        counts=counts,
        items=items,
    )
    return MultiGraderSet(
        images=np.stack(images).astype(np.float32, copy=False),
        masks=np.stack(masks).astype(np.uint8, copy=False),
        groups=np.asarray(groups).astype(str),
        meta=meta,
    )
