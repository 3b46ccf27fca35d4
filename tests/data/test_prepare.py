"""Dataset entry points: prepare/load caches, describe, show, failure modes of the cache."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import supuq.data.types as types
from supuq.cli import app
from supuq.config import DataConfig, SyntheticConfig, load_config
from supuq.data.registry import dataset as registry_entry
from supuq.data.prepare import default_cache_dir, describe, load_dataset, prepare, show
from supuq.data.types import MultiGraderSet
from supuq.errors import DataError

SMALL = DataConfig(dataset="synthetic", synthetic=SyntheticConfig(n=24, size=16, graders=3, seed=2))


def test_prepare_synthetic_and_load_back_mmap(tmp_path):
    path = prepare("synthetic", out=tmp_path / "cache", cfg=SMALL)
    assert path == tmp_path / "cache"
    ds = MultiGraderSet.load(path)
    assert isinstance(ds.images, np.memmap) and isinstance(ds.masks, np.memmap)
    assert ds.images.shape == (24, 1, 16, 16) and ds.masks.shape == (24, 3, 16, 16) and ds.prob is not None
    assert ds.meta["dataset"] == "synthetic" and ds.meta["generator"]["seed"] == 2
    assert list(ds.groups[:4]) == ["syn00000"] * 4
    assert not list(tmp_path.glob(".cache.tmp-*"))


def test_default_cache_dir_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert default_cache_dir("synthetic", SMALL) == tmp_path / "data" / "synthetic-n24-s16-g3-seed2"
    assert default_cache_dir("miccai2012") == tmp_path / "data" / "miccai2012"
    with pytest.raises(DataError, match="unknown dataset"):
        default_cache_dir("mnist")


def test_load_dataset_synthetic_generates_then_reuses_cache(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = load_dataset(SMALL)
    folder = tmp_path / "data" / "synthetic-n24-s16-g3-seed2"
    assert (folder / "meta.json").is_file()
    again = load_dataset(SMALL)
    assert isinstance(again.images, np.memmap)
    np.testing.assert_array_equal(first.masks, again.masks)
    explicit = load_dataset(DataConfig(cache=str(folder)))
    np.testing.assert_array_equal(explicit.images, first.images)


def test_load_dataset_real_without_cache_says_how_to_prepare(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match="supuq data prepare miccai2012 --root"):
        load_dataset(DataConfig(dataset="miccai2012"))
    with pytest.raises(DataError, match="no such dataset cache folder"):
        load_dataset(DataConfig(cache=str(tmp_path / "nowhere")))


def test_prepare_real_dataset_needs_a_root(tmp_path):
    with pytest.raises(DataError, match="needs --root"):
        prepare("miccai2012", out=tmp_path / "c")
    with pytest.raises(DataError, match="no such dataset folder"):
        prepare("lidc-toolbox", root=tmp_path / "absent", out=tmp_path / "c")
    with pytest.raises(DataError, match="unknown dataset"):
        prepare("mnist", out=tmp_path / "c")


def test_stale_real_cache_is_reported(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ds = MultiGraderSet(np.zeros((2, 1, 8, 8), np.float32), np.zeros((2, 3, 8, 8), np.uint8), np.array(["a", "b"]),
                        meta={"dataset": "miccai2012", "crop": 64, "min_graders": 3, "keep_empty": False})
    ds.save(tmp_path / "data" / "miccai2012")
    with pytest.raises(DataError, match="crop=64"):
        load_dataset(DataConfig(dataset="miccai2012", crop=128))
    assert len(load_dataset(DataConfig(dataset="miccai2012", crop=64))) == 2


def test_describe_values_are_sane():
    from supuq.data.synthetic import generate

    ds = generate(40, size=24, graders=4, seed=0)
    info = describe(ds)
    assert info["count"] == 40 and info["size"] == [24, 24] and info["graders"] == 4 and info["groups"] == 10
    assert 0 < info["all_empty_fraction"] <= info["empty_mask_fraction"] < 1
    assert 0 < info["grader_variance"] < info["grader_variance_union"] <= 0.25
    assert 0 < info["foreground_fraction"] < 0.5
    assert info["prob_mean"] == pytest.approx(info["foreground_fraction"], abs=0.02)
    json.dumps(info)  # JSON-friendly

    masks = np.zeros((2, 2, 4, 4), np.uint8)
    masks[0, 0, :2, :2] = 1  # image 0: grader 1 draws 4 pixels, grader 2 nothing; image 1: all empty
    known = describe(MultiGraderSet(np.zeros((2, 1, 4, 4), np.float32), masks, np.array(["p", "p"])))
    assert known["empty_mask_fraction"] == 0.75 and known["all_empty_fraction"] == 0.5
    assert known["grader_variance_union"] == 0.25 and known["grader_variance"] == pytest.approx(4 * 0.25 / 32)
    assert known["foreground_fraction"] == pytest.approx(4 / 64)


def test_show_writes_a_png(tmp_path, monkeypatch):
    """The grid shows the seeded choice of images, each with one outline per grader that drew something."""
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure
    from PIL import Image

    figures, save = [], Figure.savefig
    monkeypatch.setattr(Figure, "savefig", lambda fig, *a, **kw: (figures.append(fig), save(fig, *a, **kw))[1])
    path = prepare("synthetic", out=tmp_path / "cache", cfg=SMALL)
    ds = MultiGraderSet.load(path)
    png = show(ds, tmp_path / "fig" / "grid.png", n=5, seed=1)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as image:
        image.load()
        assert image.size == (1200, 700)  # 4 columns x 2 rows of 3 x 3.2 in (+0.6 in legend), 100 dpi
    (fig,) = figures
    assert fig.get_suptitle() == "synthetic: 5 of 24 images"
    panels = [ax for ax in fig.axes if ax.images]
    chosen = np.sort(np.random.default_rng(1).choice(24, size=5, replace=False))
    assert [ax.get_title() for ax in panels] == [f"#{i} {ds.groups[i]}" for i in chosen]
    for ax, i in zip(panels, chosen):
        np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), ds.images[i, 0])
        # one contour set per grader with a non-empty mask, in that grader's colour
        drawn_by = [j for j in range(ds.graders) if ds.masks[i, j].any()]
        assert len(ax.collections) == len(drawn_by), (i, drawn_by)
        for contour, j in zip(ax.collections, drawn_by):
            assert to_hex(contour.get_edgecolor()[0]) == to_hex(f"C{j}")
    assert any(ax.collections for ax in panels)  # the seeded choice includes lesions
    legend = [text.get_text() for text in fig.legends[0].get_texts()]
    assert legend == ["grader 1", "grader 2", "grader 3"]


def test_other_format_version_is_a_data_error(tmp_path):
    path = prepare("synthetic", out=tmp_path / "cache", cfg=SMALL)
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = 999
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="format version 999"):
        load_dataset(DataConfig(cache=str(path)))


def test_interrupted_write_leaves_no_cache(tmp_path, monkeypatch):
    real_save = np.save
    calls = []

    def failing_save(file, arr, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:  # images written, then the disk "fills up" on masks
            raise OSError("No space left on device")
        return real_save(file, arr, *args, **kwargs)

    monkeypatch.setattr(types.np, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        prepare("synthetic", out=tmp_path / "cache", cfg=SMALL)
    assert not (tmp_path / "cache").exists()
    assert list(tmp_path.iterdir()) == []  # the temporary folder is gone too


# --- the output folder: a prepare never loses the user's files (issue 15) ----------------------------------

runner = CliRunner()
TINY = ["--set", "data.synthetic.n=24", "--set", "data.synthetic.size=16", "--set", "data.synthetic.graders=3"]


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` (hidden ones too) -> its bytes (None for folders)."""
    return {str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes()) for p in sorted(folder.rglob("*"))}


def _user_folder(base: Path) -> Path:
    (base / "mine").mkdir()
    (base / "mine" / "thesis.txt").write_bytes(b"chapter 1\n\x00\xff")
    return base / "mine"


def _user_file(base: Path) -> Path:
    (base / "notes").write_bytes(b"not a folder")
    return base / "notes"


def _below_a_file(base: Path) -> Path:
    return _user_file(base) / "cache"


def _cache_with_a_user_file(base: Path) -> Path:
    folder = prepare("synthetic", out=base / "cache", cfg=SMALL)
    (folder / "README.txt").write_text("my notes on this cache")
    return folder


def _foreign_meta(base: Path) -> Path:
    (base / "other").mkdir()
    (base / "other" / "meta.json").write_text(json.dumps({"dataset": "mine", "author": "me"}))
    return base / "other"


def _link_to_a_cache(base: Path) -> Path:
    (base / "link").symlink_to(prepare("synthetic", out=base / "cache", cfg=SMALL), target_is_directory=True)
    return base / "link"


@pytest.mark.parametrize("make, needle", [
    (_user_folder, "a folder that is not a supuq cache"),
    (_user_file, "an existing file, not a supuq cache"),
    (_below_a_file, "is a file, not a folder"),
    (_cache_with_a_user_file, "a supuq cache that also holds README.txt"),
    (_foreign_meta, "a folder that is not a supuq cache"),
    (_link_to_a_cache, "a symbolic link"),
])
def test_prepare_refuses_what_is_not_a_supuq_cache(tmp_path, make, needle):
    base = tmp_path / "work"
    base.mkdir()
    out = make(base)
    before = _tree(base)
    result = runner.invoke(app, ["data", "prepare", "synthetic", "--out", str(out), *TINY])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: ") and needle in lines[0], result.output
    assert _tree(base) == before  # byte-identical, and nothing added beside (no temporary or renamed folder)


def test_prepare_replaces_a_supuq_cache_and_says_so(tmp_path):
    out = tmp_path / "cache"
    first = runner.invoke(app, ["data", "prepare", "synthetic", "--out", str(out), *TINY])
    assert first.exit_code == 0 and "replaced" not in first.output, first.output
    smaller = ["--set", "data.synthetic.n=12", *TINY[2:]]
    again = runner.invoke(app, ["data", "prepare", "synthetic", "--out", str(out), *smaller])
    assert again.exit_code == 0, again.output
    assert again.stderr.strip().splitlines() == [f"replaced the earlier supuq cache in {out} (synthetic, 24 images) "
                                                 "by this one"]
    assert len(MultiGraderSet.load(out)) == 12
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]  # no .cache.old-PID left behind
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty folder holds nothing to lose: written, nothing to say
    made = runner.invoke(app, ["data", "prepare", "synthetic", "--out", str(empty), *TINY])
    assert made.exit_code == 0 and made.stderr == "", made.output
    assert (empty / "meta.json").is_file()


def test_default_synthetic_folder_taken_by_user_files_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "data" / "synthetic-n24-s16-g3-seed2"
    folder.mkdir(parents=True)
    (folder / "thesis.txt").write_text("mine")
    with pytest.raises(DataError, match="not a supuq cache"):
        load_dataset(SMALL)
    assert [p.name for p in folder.iterdir()] == ["thesis.txt"]


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o027, 0o750, 0o640)])
def test_cache_permissions_follow_the_umask(tmp_path, umask, folder_mode, file_mode):
    """Group-readable under the usual umasks (the temporary folder used to make every cache 0700)."""
    old = os.umask(umask)
    try:
        path = prepare("synthetic", out=tmp_path / "cache", cfg=SMALL)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == folder_mode
    assert {stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()} == {file_mode}


def test_out_help_names_the_real_default_folder():
    """The --out help shows the folder the default synthetic config really gets (not data/<dataset>/)."""
    name = default_cache_dir("synthetic", load_config(registry_entry("synthetic").config_path()).data).name
    help_text = " ".join(runner.invoke(app, ["data", "prepare", "--help"], terminal_width=200).output.split())
    assert f"data/{name}" in help_text and "data/<dataset>/" not in help_text
