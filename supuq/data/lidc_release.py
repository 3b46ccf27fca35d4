"""LIDC-IDRI as the Probabilistic U-Net releases distribute it, already cropped: Stefan Knegt's
``data_lidc.pickle`` (dataset ``lidc-pickle``, read with a restricted unpickler) and Kohl et al.'s PNG crops
(dataset ``lidc-png``). The LIDC Toolbox reader, and the TIFF/PNG and mask readers both use, are
`supuq.data.lidc_files`.
"""

from __future__ import annotations

import importlib
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from .lidc_files import read_binary_mask, read_tiff
from .masks import binary_mask
from .preprocessing import scale_record, unit_record
from .types import MultiGraderSet


# --- Knegt's pickle ----------------------------------------------------------------------------------------

PICKLE_NAME = "data_lidc.pickle"
# The only globals a pickle of numpy arrays in plain dicts/lists needs: ndarray reconstruction (numpy 1.x names
# under numpy.core, numpy 2.x under numpy._core; protocol 5 uses _frombuffer), numpy scalars, and the few
# builtins that protocols 2-5 reference by name (bytes in protocol 2 arrive as _codecs.encode(str, "latin1")).
# None of them can run arbitrary code; os.system, builtins.eval, subprocess, ... are refused.
_PICKLE_ALLOWED = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "complex"),
})
_NUMPY2 = int(np.__version__.split(".")[0]) >= 2


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `_PICKLE_ALLOWED` globals, so loading never runs code from the file."""

    def __init__(self, handle, path: Path):
        # latin1: Python 2 pickles store numpy buffers as str; latin1 maps those bytes one to one.
        super().__init__(handle, encoding="latin1")
        self.path = path

    def find_class(self, module: str, name: str):
        module = "builtins" if module == "__builtin__" else module  # Python 2 spelling
        if (module, name) not in _PICKLE_ALLOWED:
            raise DataError(f"{self.path}: refusing to load: the pickle asks for {module}.{name}, which a LIDC data "
                            "pickle never needs (pickles can run code; only numpy arrays and containers are allowed)")
        # numpy 2 moved numpy.core to numpy._core (the old name still imports, with a deprecation warning).
        if _NUMPY2 and module.startswith("numpy.core."):
            module = "numpy._core." + module[len("numpy.core."):]
        elif not _NUMPY2 and module.startswith("numpy._core."):
            module = "numpy.core." + module[len("numpy._core."):]
        return getattr(importlib.import_module(module), name)

    def persistent_load(self, pid):  # noqa: D401 - pickle hook
        raise DataError(f"{self.path}: refusing to load: the pickle uses persistent ids (not a LIDC data pickle)")


def _pickle_files(path: Path) -> list[Path]:
    """[`path`] for a file; for a folder its ``data_lidc.pickle``, else all its *.pickle files in name order
    (Knegt's loader merges every pickle of its data folder the same way)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder (expected {PICKLE_NAME})")
    if (path / PICKLE_NAME).is_file():
        return [path / PICKLE_NAME]
    found = sorted(path.glob("*.pickle"))
    if not found:
        raise DataError(f"{path}: no {PICKLE_NAME} (or other *.pickle file) in this folder")
    return found


def _unpickle(file: Path) -> dict:
    """One pickle through the restricted unpickler; DataError for anything but a non-empty dict."""
    try:
        with file.open("rb") as handle:
            raw = _RestrictedUnpickler(handle, file).load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError, OverflowError, MemoryError) as err:
        raise DataError(f"{file}: unreadable or truncated pickle ({err.__class__.__name__}: {err})") from None
    except OSError as err:
        raise DataError(f"{file}: unreadable ({err.__class__.__name__})") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{file}: expected a non-empty dict of slices (Knegt's data_lidc.pickle), "
                        f"got {type(raw).__name__}")
    return raw


def _as_mask(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    """One grader's mask as uint8 {0,1} [H, W]; {0,1}, {0,255} or bool accepted."""
    array = np.asarray(value)
    if array.shape != shape:
        raise DataError(f"{where}: mask shape {array.shape} differs from the image's {shape}")
    return binary_mask(array, where)


def load_lidc_pickle(path: str | Path, max_graders: int = 4) -> MultiGraderSet:
    """Knegt's ``data_lidc.pickle``: {slice name: {"image", "masks", "series_uid"}} -> `MultiGraderSet`.

    path: the pickle file, or a folder holding ``data_lidc.pickle`` (else all its *.pickle files, merged as
    Knegt's loader merges them). Each entry: ``image`` float [H, W] in
    [0, 1] (128x128 in the distributed file, already cropped and scaled by its authors: we cannot redo or
    check their windowing), ``masks`` a list of up to `max_graders` binary [H, W] arrays, ``series_uid`` a str.
    Returns images float32 [N,1,H,W], masks uint8 [N,max_graders,H,W] (missing graders empty), groups = series
    UID (one CT series per patient approximately: LIDC-IDRI has 1018 scans of 1010 patients, so the default
    group split is patient-level up to those 8 patients); ``data.split_by=slice`` reproduces the authors'
    random slice split, which puts slices of one nodule in several splits. Entries are taken in sorted key
    order; ``meta["items"]["key"]`` keeps the names.

    The file is read with a restricted unpickler (`_PICKLE_ALLOWED`): anything but numpy arrays, numpy scalars
    and plain containers is refused with a DataError before it is constructed.
    """
    files = _pickle_files(Path(path))
    raw: dict = {}
    for file in files:
        raw.update(_unpickle(file))
    file = files[0] if len(files) == 1 else Path(path)  # named in error messages
    keys = sorted(raw, key=str)
    first = raw[keys[0]]
    if not isinstance(first, dict) or "image" not in first:
        raise DataError(f"{file}: entry {keys[0]!r} is not a dict with image, masks, series_uid")
    shape = np.asarray(first["image"]).shape
    if len(shape) != 2:
        raise DataError(f"{file}: entry {keys[0]!r}: image must be 2-D, got shape {shape}")
    n = len(keys)
    images = np.empty((n, 1, *shape), np.float32)
    masks = np.zeros((n, max_graders, *shape), np.uint8)
    groups, dropped = [], 0
    for i, key in enumerate(keys):
        entry = raw.pop(key)  # free each entry once copied: peak memory stays near the result's size
        where = f"{file}: entry {key!r}"
        if not isinstance(entry, dict) or not {"image", "masks", "series_uid"} <= set(entry):
            raise DataError(f"{where}: expected a dict with image, masks and series_uid")
        image = np.asarray(entry["image"], dtype=np.float32)
        if image.shape != shape:
            raise DataError(f"{where}: image shape {image.shape} differs from the first entry's {shape}")
        lo, hi = float(image.min()), float(image.max())
        if lo < -1e-3 or hi > 1 + 1e-3 or not np.isfinite(image).all():
            raise DataError(f"{where}: image values span [{lo:.4g}, {hi:.4g}], expected [0, 1]")
        images[i, 0] = np.clip(image, 0, 1)
        graders = entry["masks"]
        graders = list(graders) if isinstance(graders, (list, tuple, np.ndarray)) else None
        if graders is None:
            raise DataError(f"{where}: masks must be a list of 2-D arrays")
        dropped += max(0, len(graders) - max_graders)
        for j, mask in enumerate(graders[:max_graders]):
            masks[i, j] = _as_mask(mask, shape, where)
        uid = entry["series_uid"]
        groups.append(uid.decode() if isinstance(uid, bytes) else str(uid))
    if dropped:
        print(f"LIDC pickle: dropped {dropped} masks beyond {max_graders} per slice", file=sys.stderr)
    meta = dict(
        dataset="lidc-pickle",
        source="knegt-pickle",
        path=str(file),
        files=[str(f) for f in files],
        max_graders=max_graders,
        dropped_masks=dropped,
        # The authors' crops are already in [0, 1]; `supuq predict` can only take inputs scaled the same way.
        preprocessing=unit_record(tuple(shape)),
        groups_are="series_uid",
        split_note="groups are series UIDs (about one per patient); data.split_by=slice reproduces the authors' "
        "random slice split",
        items={"key": [str(k) for k in keys]},
    )
    return MultiGraderSet(images=images, masks=masks, groups=np.asarray(groups).astype(str), meta=meta)


# --- Kohl's PNG crops --------------------------------------------------------------------------------------

PNG_SIZE = 180  # the distributed crops; any size is read and centre-cropped (or zero-padded) to `crop`
_PNG_IMAGE = re.compile(r"^z-(?P<z>[-+0-9.eE]+)_c(?P<c>\d+)\.png$")
_PNG_GT = re.compile(r"^z-(?P<z>[-+0-9.eE]+)_c(?P<c>\d+)_l(?P<l>\d+)\.png$")


def _png_parts(root: Path) -> list[tuple[str, Path]]:
    """(part name, folder holding images/ and gt/): root itself, else its subfolders (train/, val/, test/)."""
    if (root / "images").is_dir() and (root / "gt").is_dir():
        return [("", root)]
    parts = [(p.name, p) for p in sorted(root.iterdir())
             if p.is_dir() and (p / "images").is_dir() and (p / "gt").is_dir()]
    if not parts:
        raise DataError(f"{root}: no images/ and gt/ folders (Kohl's layout: images/<patient>/z-<z>_c<n>.png, "
                        "gt/<patient>/z-<z>_c<n>_l<k>.png; or train/, val/, test/ each holding both)")
    return parts


def load_lidc_png(root: str | Path, crop: int = 128, max_graders: int = 4) -> MultiGraderSet:
    """Kohl et al.'s LIDC PNG crops -> `MultiGraderSet`, each image and mask centre-cropped to crop x crop.

    Layout: ``images/<patient>/z-<z>_c<n>.png`` (8-bit grey, 180x180) with ``gt/<patient>/z-<z>_c<n>_l<k>.png``
    (k = 0..3, {0,255}), under `root` or under each of its subfolders holding both (the release's train/, val/,
    test/; the part is kept in ``meta["items"]["part"]``, the split is still redrawn by patient). Intensities:
    divided by the integer type's maximum (255 for 8-bit), so [0, 1] as the authors' PNGs were already
    windowed. Returns images float32 [N,1,crop,crop], masks uint8 [N,max_graders,crop,crop] (a missing
    ``_l<k>`` file is an empty mask, counted in meta), groups = patient folder name. Every crop is kept, also
    ones whose masks are all empty.
    """
    from .prostate import center_crop

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such LIDC PNG folder")
    if crop < 1 or max_graders < 1:
        raise DataError(f"load_lidc_png needs crop >= 1 and max_graders >= 1, got {crop=}, {max_graders=}")
    images, masks, groups = [], [], []
    items: dict[str, list[Any]] = {key: [] for key in ("part", "patient", "z", "c")}
    counts = dict(images=0, missing_masks=0, dropped_masks=0, empty_masks=0)
    depth: set[int] = set()
    for part, folder in _png_parts(root):
        for patient_dir in sorted(p for p in (folder / "images").iterdir() if p.is_dir()):
            patient = patient_dir.name
            gt_dir = folder / "gt" / patient
            gts: dict[tuple[str, str], dict[int, Path]] = {}
            if gt_dir.is_dir():
                for path in gt_dir.iterdir():
                    if (m := _PNG_GT.match(path.name)) is not None:
                        gts.setdefault((m["z"], m["c"]), {})[int(m["l"])] = path
            for path in sorted(patient_dir.iterdir()):
                if (m := _PNG_IMAGE.match(path.name)) is None:
                    continue
                image = read_tiff(path, "PNG")
                if image.dtype.kind not in "ui":
                    raise DataError(f"{path}: expected an integer grey image, got {image.dtype}")
                depth.add(8 if image.dtype.itemsize == 1 else 16)
                slots = np.zeros((max_graders, *image.shape), np.uint8)  # [D, H, W]
                readers = gts.get((m["z"], m["c"]), {})
                for k in range(max_graders):
                    if k not in readers:
                        counts["missing_masks"] += 1
                        continue
                    mask = read_binary_mask(readers[k], "PNG")
                    if mask.shape != image.shape:
                        raise DataError(f"{readers[k]}: mask shape {mask.shape} differs from image {path} {image.shape}")
                    slots[k] = mask
                    counts["empty_masks"] += int(not mask.any())
                counts["dropped_masks"] += sum(1 for k in readers if k >= max_graders)
                images.append(center_crop(image[None].astype(np.float32), crop)[0])
                masks.append(center_crop(slots, crop))
                groups.append(patient)
                for key, value in (("part", part), ("patient", patient), ("z", float(m["z"])), ("c", int(m["c"]))):
                    items[key].append(value)
    if not images:
        raise DataError(f"{root}: no z-<z>_c<n>.png images found under images/<patient>/")
    if len(depth) > 1:
        raise DataError(f"{root}: images mix 8-bit and 16-bit PNGs; cannot scale them alike")
    top = 255 if depth == {8} else 65535
    counts["images"] = len(images)
    if counts["dropped_masks"]:
        print(f"LIDC PNG: dropped {counts['dropped_masks']} masks with l >= {max_graders}", file=sys.stderr)
    meta = dict(
        dataset="lidc-png",
        source="kohl-png",
        root=str(root),
        crop=crop,
        max_graders=max_graders,
        # Kohl's PNGs are already windowed; `supuq predict` divides by the same integer maximum.
        preprocessing=scale_record(top, crop),
        counts=counts,
        items=items,
    )
    stacked = np.stack(images) / np.float32(top)
    return MultiGraderSet(images=stacked[:, None].astype(np.float32), masks=np.stack(masks),
                          groups=np.asarray(groups).astype(str), meta=meta)
