"""MICCAI2012 prostate (or any multi-grader volume set readable by SimpleITK) -> axial-slice `MultiGraderSet`.

Two layouts under `root`:

- `manifest.csv` with header `case_id,image,annotation_1,...,annotation_K`; paths relative to `root`, a blank
  cell is a missing annotation.
- one folder per case: `<case>/image.<ext>` and `<case>/annotation_<k>.<ext>`, ext in .mhd/.mha/.nii/.nii.gz/.nrrd.

Each annotation must share the image's size, spacing, origin and direction (tolerance 1e-4) and be binary
({0,1} or {0,255}). Slices are axial (SimpleITK arrays are [z,y,x]), centrally cropped (zero-padded when
smaller) to crop x crop, intensities normalised per case by the 0.5/99.5 percentiles and clipped to [0,1].
"""

from __future__ import annotations

import csv
import gzip
import re
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from .masks import binary_mask
from .preprocessing import PERCENTILES, normalise, percentile_record
from .types import MultiGraderSet

EXTENSIONS = (".nii.gz", ".mhd", ".mha", ".nii", ".nrrd")
GEOMETRY_TOL = 1e-4
_IMAGE_NAMES = {"image" + ext for ext in EXTENSIONS}
_ANNOTATION = re.compile(r"^annotation_(\d+)(\.nii\.gz|\.mhd|\.mha|\.nii|\.nrrd)$", re.IGNORECASE)


@dataclass(frozen=True)
class Case:
    """One case: its image volume and its graders' annotation volumes (in grader order)."""

    case_id: str
    image: Path
    annotations: tuple[Path, ...]


def _ext(path: Path) -> str | None:
    name = path.name.lower()
    return next((ext for ext in EXTENSIONS if name.endswith(ext)), None)


def find_cases(root: Path) -> list[Case]:
    """The cases under `root`, from `manifest.csv` if present, else from per-case folders."""
    manifest = root / "manifest.csv"
    return _cases_from_manifest(manifest) if manifest.is_file() else _cases_from_folders(root)


def _cases_from_manifest(manifest: Path) -> list[Case]:
    root = manifest.parent
    try:
        with manifest.open(newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{manifest}: unreadable ({err.__class__.__name__})") from None
    if not rows or [c.strip() for c in rows[0][:2]] != ["case_id", "image"]:
        raise DataError(f"{manifest}: header must start with case_id,image then annotation_1,...,annotation_K")
    cases = []
    for line, row in enumerate(rows[1:], start=2):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if len(cells) < 2 or not cells[0] or not cells[1]:
            raise DataError(f"{manifest}: line {line} needs a case_id and an image path")
        annotations = tuple(root / c for c in cells[2:] if c)
        for path in (root / cells[1], *annotations):
            if not path.is_file():
                raise DataError(f"{path}: no such file (listed in {manifest}, line {line})")
        cases.append(Case(cells[0], root / cells[1], annotations))
    return cases


def _cases_from_folders(root: Path) -> list[Case]:
    cases = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower() in _IMAGE_NAMES)
        if not images:
            warnings.warn(f"{folder}: no image.<ext> ({', '.join(EXTENSIONS)}); case skipped", stacklevel=3)
            continue
        if len(images) > 1:
            raise DataError(f"{folder}: several image files ({', '.join(p.name for p in images)}); keep one")
        found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _ANNOTATION.match(p.name))]
        cases.append(Case(folder.name, images[0], tuple(p for _, p in sorted(found))))
    return cases


def _read(path: Path):
    """(SimpleITK image, array [Z,Y,X]) from `path`; DataError naming the file when unreadable or truncated."""
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
        array = sitk.GetArrayFromImage(image)
    except RuntimeError as err:
        reason = _itk_reason(err)
        if path.is_file():  # ITK appends a stale errno ("No such file") to MetaImage data errors: drop it
            reason = reason.replace(" Reason: No such file or directory", "")
        raise DataError(f"{path}: unreadable or truncated image ({reason})") from None
    if image.GetDimension() not in (2, 3):
        raise DataError(f"{path}: expected a 2D or 3D image, got {image.GetDimension()}D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(f"{path}: expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components")
    if path.name.lower().endswith((".nii", ".nii.gz")):
        _check_nifti_complete(path)
    return image, (array[None] if array.ndim == 2 else array)


def _itk_reason(err: RuntimeError) -> str:
    """The informative tail of an ITK exception (after 'ERROR:'), without object addresses, on one line."""
    text = str(err)
    text = text[text.find("ERROR:") + len("ERROR:"):] if "ERROR:" in text else text
    return re.sub(r"\(0x[0-9a-f]+\)", "", " ".join(text.split()))[:200] or "read error"


def _check_nifti_complete(path: Path) -> None:
    """What ITK reads silently: a truncated NIfTI (zero-filled) or NaN/infinite voxels (read as 0). Compare the
    data length with the header's, and check a float image's voxels are finite."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            content = handle.read()
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: unreadable or truncated image ({err.__class__.__name__}: {err})") from None
    header = content[:540]
    expected = _nifti_expected_bytes(header)
    if expected is not None and len(content) < expected:
        raise DataError(f"{path}: truncated image ({len(content)} bytes of data and header, header says {expected})")
    floats = _nifti_float_voxels(header, content)
    if floats is not None and not np.isfinite(floats).all():
        bad = int((~np.isfinite(floats)).sum())
        raise DataError(f"{path}: {bad} voxel(s) are NaN or infinite (ITK would read them as 0); fix or mask them first")


def _nifti_float_voxels(header: bytes, content: bytes) -> np.ndarray | None:
    """The voxels of a NIfTI-1 float32/float64 image as a flat array, else None (integers cannot be NaN)."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            datatype = struct.unpack(order + "h", header[70:72])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            dtype = {16: "f4", 64: "f8"}.get(datatype)
            if dtype is None:
                return None
            data = content[offset:]
            size = np.dtype(dtype).itemsize
            return np.frombuffer(data[: len(data) // size * size], dtype=order + dtype)
    return None


def _nifti_expected_bytes(header: bytes) -> int | None:
    """vox_offset + voxel bytes from a NIfTI-1/2 header; None when the header is not recognised."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
        elif len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540:
            dims = struct.unpack(order + "8q", header[16:80])
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            offset = struct.unpack(order + "q", header[168:176])[0]
        else:
            continue
        if not 1 <= dims[0] <= 7:
            return None
        voxels = int(np.prod([max(d, 1) for d in dims[1 : dims[0] + 1]], dtype=np.int64))
        return offset + voxels * bitpix // 8
    return None


def _check_geometry(image, annotation, path: Path, image_path: Path) -> None:
    checks = (("size", image.GetSize(), annotation.GetSize()), ("spacing", image.GetSpacing(), annotation.GetSpacing()),
              ("origin", image.GetOrigin(), annotation.GetOrigin()),
              ("direction", image.GetDirection(), annotation.GetDirection()))
    for name, want, got in checks:
        if len(want) != len(got) or not np.allclose(want, got, rtol=0, atol=GEOMETRY_TOL):
            raise DataError(f"{path}: {name} {tuple(round(v, 6) for v in got)} does not match the image "
                            f"{image_path.name} {tuple(round(v, 6) for v in want)}")


def center_crop(volume: np.ndarray, crop: int) -> np.ndarray:
    """Central crop x crop of every slice of [Z,Y,X]; axes smaller than `crop` are zero-padded around the centre."""
    z, y, x = volume.shape
    out = np.zeros((z, crop, crop), volume.dtype)
    src, dst = [], []
    for size in (y, x):
        if size >= crop:
            start = (size - crop) // 2
            src.append(slice(start, start + crop))
            dst.append(slice(0, crop))
        else:
            start = (crop - size) // 2
            src.append(slice(0, size))
            dst.append(slice(start, start + size))
    out[:, dst[0], dst[1]] = volume[:, src[0], src[1]]
    return out


def _load_case(case: Case, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 [Z,crop,crop], masks uint8 [Z,G,crop,crop]) of one case with its G graders."""
    image, volume = _read(case.image)
    masks = []
    for path in case.annotations:
        annotation, array = _read(path)
        _check_geometry(image, annotation, path, case.image)
        masks.append(center_crop(binary_mask(array, path), crop))
    return center_crop(normalise(volume), crop), np.stack(masks, axis=1)


def load_prostate(root: str | Path, crop: int = 128, min_graders: int = 3, keep_empty: bool = False) -> MultiGraderSet:
    """Axial slices of every usable case under `root` as a `MultiGraderSet`.

    images float32 [N,1,crop,crop] in [0,1]; masks uint8 [N,D,crop,crop] with D = the most graders of any kept
    case (cases with fewer get empty masks appended); groups = case id of each slice. Cases with fewer than
    `min_graders` annotations are skipped with a warning; slices where every grader's (cropped) mask is
    empty are dropped unless `keep_empty`.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder")
    if crop < 1 or min_graders < 1:
        raise DataError(f"crop and min_graders must be positive (got crop={crop}, min_graders={min_graders})")
    images, masks, groups, skipped, used = [], [], [], {}, {}
    total_slices = 0
    for case in find_cases(root):
        if len(case.annotations) < min_graders:
            reason = f"{len(case.annotations)} grader(s) < min_graders={min_graders}"
            warnings.warn(f"case {case.case_id}: {reason}; skipped", stacklevel=2)
            skipped[case.case_id] = reason
            continue
        case_images, case_masks = _load_case(case, crop)
        total_slices += len(case_images)
        keep = np.ones(len(case_images), bool) if keep_empty else case_masks.reshape(len(case_masks), -1).any(axis=1)
        if not keep.any():
            warnings.warn(f"case {case.case_id}: every slice is empty for every grader; skipped", stacklevel=2)
            skipped[case.case_id] = "all slices empty"
            continue
        images.append(case_images[keep])
        masks.append(case_masks[keep])
        groups.extend([case.case_id] * int(keep.sum()))
        used[case.case_id] = len(case.annotations)
    if not images:
        raise DataError(
            f"{root}: no usable case (need an image and >= {min_graders} annotations; skipped {len(skipped)})"
        )
    graders = max(m.shape[1] for m in masks)
    padded = [np.pad(m, ((0, 0), (0, graders - m.shape[1]), (0, 0), (0, 0))) for m in masks]
    meta = {
        "dataset": "miccai2012",
        "source": str(root.resolve()),
        "crop": crop,
        "percentiles": list(PERCENTILES),
        # What `supuq predict` must repeat on a new volume: per-volume percentile scaling, central crop.
        "preprocessing": percentile_record(crop),
        "min_graders": min_graders,
        "keep_empty": keep_empty,
        "cases": len(used),
        "graders_per_case": used,
        "slices_total": total_slices,
        "slices_kept": len(groups),
        "skipped_cases": skipped,
    }
    return MultiGraderSet(images=np.concatenate(images)[:, None], masks=np.concatenate(padded),
                          groups=np.array(groups), meta=meta)
