"""MICCAI2012-style prostate loader: both layouts, geometry and binary checks, skipping, crop/pad."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from supuq.data.prostate import center_crop, load_prostate
from supuq.errors import DataError

SHAPE = (5, 40, 36)  # [z,y,x]
SPACING, ORIGIN = (0.5, 0.6, 3.0), (10.0, -4.0, 2.5)


def volume(array: np.ndarray, spacing=SPACING, origin=ORIGIN) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def write(path: Path, array: np.ndarray, **geometry) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume(array, **geometry), str(path))
    return path


def lesion(shift: int, z_slices=(1, 2, 3), value: int = 1) -> np.ndarray:
    """A grader's uint8 [z,y,x] mask: a box on `z_slices`, its right edge moved by `shift` (grader variation)."""
    mask = np.zeros(SHAPE, np.uint8)
    for z in z_slices:
        mask[z, 15:25, 14 : 22 + shift] = value
    return mask


def image_array(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(100, 20, SHAPE).astype(np.float32)


def folder_case(root: Path, case: str, graders: int, ext: str, seed: int = 0) -> None:
    write(root / case / f"image{ext}", image_array(seed))
    for k in range(1, graders + 1):
        write(root / case / f"annotation_{k}{ext}", lesion(k))


def test_folder_layout_mhd_and_nii_gz(tmp_path):
    folder_case(tmp_path, "case01", 3, ".mhd")
    folder_case(tmp_path, "case02", 4, ".nii.gz", seed=1)
    ds = load_prostate(tmp_path, crop=32)
    # 3 marked slices per case; D = max graders (4), case01 padded with an empty 4th mask
    assert ds.images.shape == (6, 1, 32, 32) and ds.masks.shape == (6, 4, 32, 32)
    assert ds.images.dtype == np.float32 and ds.masks.dtype == np.uint8
    assert 0 <= ds.images.min() and ds.images.max() <= 1
    assert list(ds.groups) == ["case01"] * 3 + ["case02"] * 3
    assert not ds.masks[:3, 3].any() and ds.masks[3:, 3].any()
    assert ds.meta["dataset"] == "miccai2012" and ds.meta["crop"] == 32
    assert ds.meta["graders_per_case"] == {"case01": 3, "case02": 4}
    assert ds.meta["slices_total"] == 10 and ds.meta["slices_kept"] == 6


def test_crop_keeps_the_annotation_geometry(tmp_path):
    folder_case(tmp_path, "c", 3, ".nrrd")
    ds = load_prostate(tmp_path, crop=32)
    # 40x36 -> central 32x32 starts at y=4, x=2: the box y 15:25, x 14:23 (grader 1) lands at y 11:21, x 12:21
    want = np.zeros((32, 32), np.uint8)
    want[11:21, 12:21] = 1
    np.testing.assert_array_equal(ds.masks[0, 0], want)


def test_manifest_layout_keep_empty_and_blank_cells(tmp_path):
    write(tmp_path / "img" / "a.nii", image_array())
    for k in (1, 2, 3):
        write(tmp_path / "seg" / f"a_{k}.mha", lesion(k, value=255))  # {0,255} masks are accepted
    (tmp_path / "manifest.csv").write_text(
        "case_id,image,annotation_1,annotation_2,annotation_3,annotation_4\n"
        "A,img/a.nii,seg/a_1.mha,seg/a_2.mha,,seg/a_3.mha\n"
    )
    ds = load_prostate(tmp_path, crop=48, keep_empty=True)
    assert ds.masks.shape == (5, 3, 48, 48)  # every slice kept, 3 graders (blank cell = missing)
    assert set(np.unique(ds.masks)) == {0, 1}
    assert not ds.masks[0].any() and ds.masks[1].any()
    # 48 > 40 and 36: zero padding around the centre (4 rows, 6 columns on each side)
    assert not ds.images[:, 0, :4].any() and not ds.images[:, 0, :, :6].any()
    assert ds.images[:, 0, 4:44, 6:42].any()


def test_case_with_too_few_graders_is_skipped_with_a_warning(tmp_path):
    folder_case(tmp_path, "good", 3, ".nii.gz")
    folder_case(tmp_path, "two", 2, ".nii.gz")
    with pytest.warns(UserWarning, match="case two: 2 grader"):
        ds = load_prostate(tmp_path, crop=32, min_graders=3)
    assert set(ds.groups) == {"good"}
    assert "two" in ds.meta["skipped_cases"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert set(load_prostate(tmp_path, crop=32, min_graders=2).groups) == {"good", "two"}


def test_no_usable_case_is_a_data_error(tmp_path):
    folder_case(tmp_path, "two", 2, ".mha")
    with pytest.warns(UserWarning), pytest.raises(DataError, match="no usable case"):
        load_prostate(tmp_path, crop=32)
    with pytest.raises(DataError, match="no such dataset folder"):
        load_prostate(tmp_path / "missing")


def test_mismatched_spacing_names_the_file(tmp_path):
    folder_case(tmp_path, "c", 3, ".nii.gz")
    bad = write(tmp_path / "c" / "annotation_2.nii.gz", lesion(2), spacing=(0.5, 0.7, 3.0))
    with pytest.raises(DataError, match=r"annotation_2\.nii\.gz: spacing"):
        load_prostate(tmp_path, crop=32)
    assert bad.is_file()


def test_mismatched_origin_names_the_file(tmp_path):
    folder_case(tmp_path, "c", 3, ".mhd")
    write(tmp_path / "c" / "annotation_3.mhd", lesion(3), origin=(10.0, -4.0, 2.6))
    with pytest.raises(DataError, match=r"annotation_3\.mhd: origin"):
        load_prostate(tmp_path, crop=32)


def test_non_binary_mask(tmp_path):
    folder_case(tmp_path, "c", 3, ".nii.gz")
    write(tmp_path / "c" / "annotation_1.nii.gz", lesion(1) * 2)
    with pytest.raises(DataError, match=r"annotation_1\.nii\.gz: not a binary mask"):
        load_prostate(tmp_path, crop=32)


@pytest.mark.parametrize("ext, data_file", [(".nii.gz", "image.nii.gz"), (".nii", "image.nii"), (".mhd", "image.raw")])
def test_truncated_file_names_it(tmp_path, ext, data_file):
    folder_case(tmp_path, "c", 3, ext)
    target = tmp_path / "c" / data_file
    target.write_bytes(target.read_bytes()[:-64])
    with pytest.raises(DataError, match=rf"image{ext.replace('.', chr(92) + '.')}: (unreadable or )?truncated"):
        load_prostate(tmp_path, crop=32)


def test_center_crop_and_pad():
    vol = np.arange(2 * 5 * 7).reshape(2, 5, 7)
    cropped = center_crop(vol, 3)
    np.testing.assert_array_equal(cropped, vol[:, 1:4, 2:5])
    padded = center_crop(vol, 9)
    assert padded.shape == (2, 9, 9)
    np.testing.assert_array_equal(padded[:, 2:7, 1:8], vol)
    assert padded.sum() == vol.sum()


def test_case_without_graders_or_image_is_skipped_with_a_warning(tmp_path):
    folder_case(tmp_path, "good", 3, ".nii.gz")
    write(tmp_path / "bare" / "image.nii.gz", image_array())
    (tmp_path / "empty_dir").mkdir()
    with pytest.warns(UserWarning) as record:
        ds = load_prostate(tmp_path, crop=32)
    messages = " | ".join(str(w.message) for w in record)
    assert "case bare: 0 grader(s)" in messages and "empty_dir: no image" in messages
    assert set(ds.groups) == {"good"}
