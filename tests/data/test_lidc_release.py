"""LIDC as the literature distributes it: Knegt's pickle (restricted unpickler) and Kohl's PNG crops."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from supuq.data.lidc_release import load_lidc_pickle, load_lidc_png
from supuq.data.prepare import default_cache_dir, prepare
from supuq.data.splits import split_indices
from supuq.data.types import MultiGraderSet
from supuq.errors import DataError

# --- Knegt's pickle ----------------------------------------------------------------------------------------


def knegt_dict(n: int = 6, size: int = 128, seed: int = 0) -> dict:
    """{slice name: {image float [0,1], masks [4 x uint8], series_uid}} from 3 series, 2 slices each."""
    rng = np.random.default_rng(seed)
    data = {}
    for i in range(n):
        masks = [np.zeros((size, size), np.uint8) for _ in range(4)]
        for j in range(3):  # the 4th grader drew nothing on every slice
            masks[j][40 + j : 60, 50 : 70 + i] = 1
        data[f"LIDC-IDRI-{i // 2:04d}_slice{i:03d}"] = {
            "image": rng.uniform(0, 1, (size, size)),  # float64, as the authors stored it
            "masks": masks,
            "series_uid": f"1.3.6.1.4.1.14519.5.2.1.6279.{i // 2}",
        }
    return data


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_pickle_loads_with_every_protocol(tmp_path, protocol):
    data = knegt_dict()
    path = tmp_path / "data_lidc.pickle"
    path.write_bytes(pickle.dumps(data, protocol=protocol))
    ds = load_lidc_pickle(path)
    assert ds.images.shape == (6, 1, 128, 128) and ds.images.dtype == np.float32
    assert ds.masks.shape == (6, 4, 128, 128) and ds.masks.dtype == np.uint8
    first = sorted(data)[0]
    np.testing.assert_allclose(ds.images[0, 0], data[first]["image"].astype(np.float32))
    np.testing.assert_array_equal(ds.masks[0, 0], data[first]["masks"][0])
    assert not ds.masks[:, 3].any()
    assert len(set(ds.groups)) == 3 and ds.groups[0] == data[first]["series_uid"]
    assert ds.meta["dataset"] == "lidc-pickle" and ds.meta["preprocessing"] == {"kind": "unit", "size": [128, 128]}
    assert ds.meta["items"]["key"] == sorted(data)


def test_pickle_written_by_numpy_1_and_a_folder_root(tmp_path):
    """numpy 1.x pickles name numpy.core.multiarray; protocol 2 spells names as text, so rewrite them."""
    raw = pickle.dumps(knegt_dict(n=2, size=8), protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    (tmp_path / "data_lidc.pickle").write_bytes(raw)
    ds = load_lidc_pickle(tmp_path)  # the folder holding data_lidc.pickle
    assert ds.images.shape == (2, 1, 8, 8)


def test_pickle_folder_merges_every_pickle(tmp_path):
    data = knegt_dict(n=4, size=8)
    names = sorted(data)
    (tmp_path / "part1.pickle").write_bytes(pickle.dumps({k: data[k] for k in names[:2]}))
    (tmp_path / "part2.pickle").write_bytes(pickle.dumps({k: data[k] for k in names[2:]}))
    ds = load_lidc_pickle(tmp_path)
    assert len(ds) == 4 and ds.meta["items"]["key"] == names and len(ds.meta["files"]) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no data_lidc.pickle"):
        load_lidc_pickle(tmp_path / "empty")


class _Evil:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    pwned = tmp_path / "pwned"
    data = knegt_dict(n=2, size=8)
    data[sorted(data)[0]]["series_uid"] = _Evil(pwned)
    path = tmp_path / "data_lidc.pickle"
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=r"refusing to load: the pickle asks for (posix|os|nt)\.system"):
        load_lidc_pickle(path)
    assert not pwned.exists()
    # builtins other than the harmless containers are refused too
    path.write_bytes(b"cbuiltins\neval\n(S'1+1'\ntR.")
    with pytest.raises(DataError, match="builtins.eval"):
        load_lidc_pickle(path)


def test_bad_pickles_are_one_line_data_errors(tmp_path):
    path = tmp_path / "data_lidc.pickle"
    with pytest.raises(DataError, match="no such file or folder"):
        load_lidc_pickle(tmp_path / "absent.pickle")
    path.write_bytes(pickle.dumps(knegt_dict(n=2, size=8))[:100])
    with pytest.raises(DataError, match="unreadable or truncated pickle"):
        load_lidc_pickle(path)
    path.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(DataError, match="expected a non-empty dict"):
        load_lidc_pickle(path)
    data = knegt_dict(n=2, size=8)
    del data[sorted(data)[1]]["series_uid"]
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match="series_uid"):
        load_lidc_pickle(path)
    data = knegt_dict(n=2, size=8)
    data[sorted(data)[0]]["masks"][1][0, 0] = 7
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match="not a binary mask"):
        load_lidc_pickle(path)
    data = knegt_dict(n=2, size=8)
    data[sorted(data)[0]]["image"] = data[sorted(data)[0]]["image"] * 255
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DataError, match=r"expected \[0, 1\]"):
        load_lidc_pickle(path)


def test_pickle_groups_and_the_slice_protocol(tmp_path):
    path = tmp_path / "data_lidc.pickle"
    path.write_bytes(pickle.dumps(knegt_dict(n=40, size=8)))
    out = prepare("lidc-pickle", root=path, out=tmp_path / "cache")
    ds = MultiGraderSet.load(out)
    assert len(ds) == 40 and ds.meta["groups_are"] == "series_uid"
    by_group = split_indices(ds.groups, (0.7, 0.15, 0.15), 0, "group")
    series = {name: set(ds.groups[getattr(by_group, name)]) for name in ("train", "val", "test")}
    assert not (series["train"] & series["val"]) and not (series["train"] & series["test"])
    with pytest.warns(UserWarning):
        by_slice = split_indices(ds.groups, (0.7, 0.15, 0.15), 0, "slice")  # the authors' leaky protocol
    assert len(by_slice.train) + len(by_slice.val) + len(by_slice.test) == 40
    assert default_cache_dir("lidc-pickle").name == "lidc-pickle"


# --- Kohl's PNG crops --------------------------------------------------------------------------------------


def write_kohl_pngs(root: Path, patients: int = 2, per_patient: int = 2, size: int = 180,
                    missing: tuple[str, int] | None = None) -> Path:
    """Kohl's layout with a bright 4x4 marker at the image centre (so the centre crop can be checked) and
    grader k's mask a box whose width grows with k; `missing` = (image stem, k) leaves one mask out."""
    rng = np.random.default_rng(0)
    c = size // 2
    for p in range(patients):
        patient = f"LIDC-IDRI-{p:04d}"
        (root / "images" / patient).mkdir(parents=True, exist_ok=True)
        (root / "gt" / patient).mkdir(parents=True, exist_ok=True)
        for i in range(per_patient):
            stem = f"z-{-100.5 + 2.5 * i}_c{i % 2}"
            image = rng.integers(0, 120, (size, size), dtype=np.uint8)
            image[c - 2 : c + 2, c - 2 : c + 2] = 255
            Image.fromarray(image).save(root / "images" / patient / f"{stem}.png")
            for k in range(4):
                if missing == (stem, k):
                    continue
                mask = np.zeros((size, size), np.uint8)
                mask[c - 6 : c + 6, c - 6 : c + 2 + 2 * k] = 255
                Image.fromarray(mask).save(root / "gt" / patient / f"{stem}_l{k}.png")
    return root


def test_png_layout_centre_crop_and_scaling(tmp_path):
    write_kohl_pngs(tmp_path, missing=("z--100.5_c0", 3))
    ds = load_lidc_png(tmp_path, crop=128)
    assert ds.images.shape == (4, 1, 128, 128) and ds.masks.shape == (4, 4, 128, 128)
    # 180 -> 128: offset 26, so the marker at 88..91 lands at 62..65; 255 -> 1.0
    np.testing.assert_array_equal(ds.images[:, 0, 62:66, 62:66], 1.0)
    assert ds.images.max() == 1.0 and ds.images.min() >= 0
    assert ds.masks[0, 0, 58:70, 58:66].all() and ds.masks[0, 0].sum() == 12 * 8
    assert ds.masks[1, 3].sum() == 12 * 14 and not ds.masks[0, 3].any()  # the missing file is an empty mask
    assert list(ds.groups) == ["LIDC-IDRI-0000"] * 2 + ["LIDC-IDRI-0001"] * 2
    assert ds.meta["counts"]["missing_masks"] == 2 and not ds.masks[2, 3].any()  # that stem in both patients
    assert ds.meta["preprocessing"] == {"kind": "scale", "max": 255, "size": [128, 128]}
    assert ds.meta["items"]["z"][:2] == [-100.5, -98.0]


def test_png_split_folders_and_errors(tmp_path):
    for part in ("train", "val", "test"):
        write_kohl_pngs(tmp_path / "release" / part, patients=1, per_patient=1, size=40)
    ds = load_lidc_png(tmp_path / "release", crop=32)
    assert len(ds) == 3 and ds.meta["items"]["part"] == ["test", "train", "val"]
    with pytest.raises(DataError, match="no images/ and gt/"):
        load_lidc_png(tmp_path)
    bad = write_kohl_pngs(tmp_path / "bad", patients=1, per_patient=1, size=40)
    mask_path = next((bad / "gt").rglob("*_l0.png"))
    Image.fromarray(np.full((40, 40), 7, np.uint8)).save(mask_path)
    with pytest.raises(DataError, match="not a binary mask"):
        load_lidc_png(bad, crop=32)
    mask_path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(DataError, match="unreadable or truncated PNG"):
        load_lidc_png(bad, crop=32)
