"""QUBIQ (Quantification of Uncertainties in Biomedical Image Quantification) -> axial-slice `MultiGraderSet`.

Layout under `root` (as the challenge distributes it)::

    <task>/Training/<case>/image.nii.gz           2-D image, or a 3-D volume (axial slices are used)
    <task>/Training/<case>/task0T_seg0R.nii.gz    rater R's mask for sub-task T (any number of raters)

A task name may carry its sub-task as ``NAME:T`` (``brain-tumor:2``); without it sub-task 1 is used, so the
single-sub-task tasks (brain-growth, kidney) need nothing extra. Only ``Training/`` is read (the released
validation/test folders have no masks in every edition). Image extensions as in `prostate.EXTENSIONS`.

Masks: {0,1} and {0,255} are taken as they are; masks stored as probabilities (values in [0, 1]) are
binarised at 0.5 (p > 0.5 is foreground, as the consensus rule of `supuq predict`). Each mask must have the
image's size; a different spacing/origin/direction is only warned about, because QUBIQ masks are drawn on the
image's pixel grid and some releases carry inconsistent headers. Images: per-case 0.5/99.5 percentile scaling
and a central crop, the same helpers as the MICCAI2012 loader (`prostate.normalise`, `prostate.center_crop`).
A case with fewer raters than the task's most gets empty masks for the missing ones (counted in meta).
Multi-channel images (e.g. brain-tumor's four MR sequences stored as components) are refused.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from ..errors import DataError
from .preprocessing import PERCENTILES, normalise, percentile_record
from .prostate import EXTENSIONS, GEOMETRY_TOL, center_crop
from .prostate import _read as read_volume
from .masks import binary_mask
from .types import MultiGraderSet

_SEG = re.compile(r"^task(\d+)_seg(\d+)(\.nii\.gz|\.mhd|\.mha|\.nii|\.nrrd)$", re.IGNORECASE)
_IMAGE_NAMES = {"image" + ext for ext in EXTENSIONS}


def parse_task(task: str) -> tuple[str, int]:
    """``"NAME"`` -> (NAME, 1); ``"NAME:T"`` -> (NAME, T). DataError for an empty name or a bad sub-task."""
    name, _, sub = str(task).partition(":")
    name = name.strip()
    if not name or "/" in name or "\\" in name:
        raise DataError(f"QUBIQ task {task!r}: expected a task folder name, e.g. brain-growth or brain-tumor:2")
    if not sub:
        return name, 1
    if not sub.strip().isdigit() or int(sub) < 1:
        raise DataError(f"QUBIQ task {task!r}: the sub-task after ':' must be a positive number")
    return name, int(sub)


def canonical_task(task: str) -> str:
    """``NAME`` for sub-task 1 (``NAME:1`` included), else ``NAME:T``: the form recorded in the cache meta."""
    name, sub = parse_task(task)
    return name if sub == 1 else f"{name}:{sub}"


def task_slug(task: str) -> str:
    """A folder-safe name: ``brain-growth`` for sub-task 1, ``brain-tumor-2`` for ``brain-tumor:2``."""
    name, sub = parse_task(task)
    return name if sub == 1 else f"{name}-{sub}"


def _case_files(folder: Path, subtask: int) -> tuple[Path | None, dict[int, Path], set[int]]:
    """(image path, {rater: mask path} of `subtask`, all sub-tasks seen) of one case folder."""
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower() in _IMAGE_NAMES)
    if len(images) > 1:
        raise DataError(f"{folder}: several image files ({', '.join(p.name for p in images)}); keep one")
    raters: dict[int, Path] = {}
    subtasks: set[int] = set()
    for path in folder.iterdir():
        if (m := _SEG.match(path.name)) is None:
            continue
        subtasks.add(int(m.group(1)))
        if int(m.group(1)) == subtask:
            raters[int(m.group(2))] = path
    return (images[0] if images else None), raters, subtasks


def _geometry_differs(image, mask) -> str | None:
    for name, want, got in (("spacing", image.GetSpacing(), mask.GetSpacing()),
                            ("origin", image.GetOrigin(), mask.GetOrigin()),
                            ("direction", image.GetDirection(), mask.GetDirection())):
        if len(want) != len(got) or not np.allclose(want, got, rtol=0, atol=GEOMETRY_TOL):
            return name
    return None


def load_qubiq(root: str | Path, task: str, crop: int = 128, keep_empty: bool = False) -> MultiGraderSet:
    """Every case of ``<root>/<task>/Training`` as axial slices with one mask per rater.

    Returns images float32 [N,1,crop,crop] in [0,1], masks uint8 [N,D,crop,crop] (D = the most raters of any
    case; rater R in slot R-1 after sorting the rater numbers), groups = case folder name. Slices whose masks
    are all empty are dropped unless `keep_empty` (a 2-D case is one slice). DataError for a missing task or
    Training folder, no case with an image and masks of the sub-task, an unreadable file or a size mismatch.
    """
    name, subtask = parse_task(task)
    root = Path(root)
    training = root / name / "Training"
    if not (root / name).is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        hint = f" (tasks here: {', '.join(found)})" if found else ""
        raise DataError(f"{root / name}: no such QUBIQ task folder{hint}")
    if not training.is_dir():
        raise DataError(f"{training}: missing (QUBIQ layout: <task>/Training/<case>/image.nii.gz)")
    if crop < 1:
        raise DataError(f"crop must be positive, got {crop}")
    images, masks, groups = [], [], []
    raters_per_case: dict[str, int] = {}
    counts = Counter()
    subtasks_seen: set[int] = set()
    for folder in sorted(p for p in training.iterdir() if p.is_dir() and not p.name.startswith(".")):
        image_path, raters, subtasks = _case_files(folder, subtask)
        subtasks_seen |= subtasks
        if image_path is None or not raters:
            what = "no image.<ext>" if image_path is None else f"no task{subtask:02d}_seg*.<ext> masks"
            warnings.warn(f"{folder}: {what}; case skipped", stacklevel=2)
            counts["skipped_cases"] += 1
            continue
        image, volume = read_volume(image_path)
        case_masks = []
        for rater in sorted(raters):
            path = raters[rater]
            mask_image, array = read_volume(path)
            if mask_image.GetSize() != image.GetSize():
                raise DataError(f"{path}: size {mask_image.GetSize()} differs from {image_path.name} {image.GetSize()}")
            if (which := _geometry_differs(image, mask_image)) is not None:
                warnings.warn(f"{path}: {which} differs from {image_path.name}; using the image's grid", stacklevel=2)
                counts["header_mismatches"] += 1
            case_masks.append(center_crop(binary_mask(array, path, probabilities=True), crop))
        stack = np.stack(case_masks, axis=1)  # [Z, R, crop, crop]
        keep = np.ones(len(stack), bool) if keep_empty else stack.reshape(len(stack), -1).any(axis=1)
        counts["slices_total"] += len(stack)
        if not keep.any():
            warnings.warn(f"{folder}: every slice is empty for every rater; case skipped", stacklevel=2)
            counts["skipped_cases"] += 1
            continue
        images.append(center_crop(normalise(volume), crop)[keep])
        masks.append(stack[keep])
        groups.extend([folder.name] * int(keep.sum()))
        raters_per_case[folder.name] = len(raters)
    if not images:
        seen = f" (sub-tasks present: {', '.join(map(str, sorted(subtasks_seen)))})" if subtasks_seen else ""
        raise DataError(f"{training}: no case with an image and task{subtask:02d}_seg* masks{seen}")
    graders = max(m.shape[1] for m in masks)
    counts["padded_cases"] = sum(1 for m in masks if m.shape[1] < graders)
    padded = [np.pad(m, ((0, 0), (0, graders - m.shape[1]), (0, 0), (0, 0))) for m in masks]
    meta = {
        "dataset": "qubiq",
        "source": str(root.resolve()),
        "task": canonical_task(task),
        "task_name": name,
        "subtask": subtask,
        "crop": crop,
        "keep_empty": keep_empty,
        "percentiles": list(PERCENTILES),
        # What `supuq predict` must repeat on a new image: per-volume percentile scaling, central crop.
        "preprocessing": percentile_record(crop),
        "cases": len(raters_per_case),
        "raters_per_case": raters_per_case,
        "subtasks_present": sorted(subtasks_seen),
        "counts": dict(counts, slices_kept=len(groups)),
    }
    return MultiGraderSet(images=np.concatenate(images)[:, None], masks=np.concatenate(padded),
                          groups=np.array(groups), meta=meta)
