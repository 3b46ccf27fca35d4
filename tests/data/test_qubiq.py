"""QUBIQ layout loader (2-D and 3-D tasks, sub-tasks, probability masks), its CLI, and training on the new
caches (qubiq and lidc-png) for one epoch."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from supuq.cli import app
from supuq.config import DataConfig, load_config
from supuq.data.prepare import default_cache_dir, load_dataset, prepare
from supuq.data.qubiq import canonical_task, load_qubiq, parse_task, task_slug
from supuq.data.types import MultiGraderSet
from supuq.errors import DataError
from supuq.predict import predict
from supuq.train import fit

from ..conftest import ROOT, TINY_OVERRIDES
from .test_lidc_release import write_kohl_pngs

runner = CliRunner()


def write(path: Path, array: np.ndarray, spacing: tuple[float, ...] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(array)
    if spacing is not None:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def qubiq_2d(root: Path, task: str = "brain-growth", cases: int = 4, raters: int = 5, size: int = 40) -> Path:
    """2-D cases; rater r's mask a disc of radius 6 + r; the masks of case 0 stored as float probabilities."""
    yy, xx = np.mgrid[:size, :size]
    for i in range(cases):
        case = root / task / "Training" / f"case{i + 1:02d}"
        write(case / "image.nii.gz", np.random.default_rng(i).normal(100, 10, (size, size)).astype(np.float32))
        for r in range(1, raters + 1):
            disc = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 < (6 + r) ** 2
            if i == 0:  # probabilities: 0.9 inside, 0.3 on a ring around it -> binarised to the disc
                ring = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 < (9 + r) ** 2
                write(case / f"task01_seg{r:02d}.nii.gz", np.where(disc, 0.9, np.where(ring, 0.3, 0.0)).astype(np.float32))
            else:
                write(case / f"task01_seg{r:02d}.nii.gz", disc.astype(np.uint8))
    return root


def qubiq_3d(root: Path, task: str = "pancreas", cases: int = 3, size: int = 24) -> Path:
    """3-D cases [z=4] with two sub-tasks: task01 marks slices 1-2, task02 slice 3 only; 3 raters."""
    for i in range(cases):
        case = root / task / "Training" / f"case{i + 1:02d}"
        write(case / "image.nii.gz", np.random.default_rng(i).normal(0, 1, (4, size, size)).astype(np.float32),
              spacing=(0.8, 0.8, 3.0))
        for r in range(1, 4):
            one = np.zeros((4, size, size), np.uint8)
            one[1:3, 8:14, 8 : 12 + r] = 255
            two = np.zeros((4, size, size), np.uint8)
            two[3, 5:9, 5 : 8 + r] = 1
            write(case / f"task01_seg{r:02d}.nii.gz", one, spacing=(0.8, 0.8, 3.0))
            write(case / f"task02_seg{r:02d}.nii.gz", two, spacing=(0.8, 0.8, 3.0))
    return root


def test_2d_task_with_probability_masks(tmp_path):
    qubiq_2d(tmp_path)
    ds = load_qubiq(tmp_path, "brain-growth", crop=32)
    assert ds.images.shape == (4, 1, 32, 32) and ds.masks.shape == (4, 5, 32, 32)
    assert 0 <= ds.images.min() and ds.images.max() <= 1
    np.testing.assert_array_equal(ds.masks[0], ds.masks[1])  # probabilities > 0.5 give the same discs
    assert [int(m.sum()) for m in ds.masks[1]] == sorted(int(m.sum()) for m in ds.masks[1])  # radius grows with r
    assert list(ds.groups) == ["case01", "case02", "case03", "case04"]
    assert ds.meta["task"] == "brain-growth" and ds.meta["subtask"] == 1
    assert ds.meta["preprocessing"]["kind"] == "percentile" and ds.meta["preprocessing"]["size"] == [32, 32]


def test_3d_task_subtasks_and_empty_slices(tmp_path):
    qubiq_3d(tmp_path)
    first = load_qubiq(tmp_path, "pancreas", crop=16)
    assert first.images.shape == (6, 1, 16, 16) and first.masks.shape == (6, 3, 16, 16)  # 2 marked slices x 3
    assert first.meta["subtasks_present"] == [1, 2] and first.masks.max() == 1  # {0,255} -> {0,1}
    second = load_qubiq(tmp_path, "pancreas:2", crop=16)
    assert len(second) == 3 and second.meta["task"] == "pancreas:2"
    kept = load_qubiq(tmp_path, "pancreas", crop=16, keep_empty=True)
    assert len(kept) == 12


def test_task_names():
    assert parse_task("kidney") == ("kidney", 1) and parse_task("brain-tumor:3") == ("brain-tumor", 3)
    assert canonical_task("kidney:1") == "kidney" and task_slug("brain-tumor:2") == "brain-tumor-2"
    for bad in ("", ":2", "kidney:x", "kidney:0", "a/b"):
        with pytest.raises(DataError):
            parse_task(bad)
    assert default_cache_dir("qubiq", DataConfig(dataset="qubiq", task="prostate:2")).name == "qubiq-prostate-2"
    with pytest.raises(DataError, match="needs a task"):
        default_cache_dir("qubiq", DataConfig(dataset="qubiq"))


def test_layout_errors(tmp_path):
    qubiq_2d(tmp_path, cases=2)
    with pytest.raises(DataError, match="no such QUBIQ task folder.*brain-growth"):
        load_qubiq(tmp_path, "kidney")
    with pytest.raises(DataError, match="no case with an image and task02_seg"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            load_qubiq(tmp_path, "brain-growth:2")
    write(tmp_path / "brain-growth" / "Training" / "case01" / "task01_seg09.nii.gz", np.zeros((30, 30), np.uint8))
    with pytest.raises(DataError, match="size"):
        load_qubiq(tmp_path, "brain-growth")
    write(tmp_path / "brain-growth" / "Training" / "case01" / "task01_seg09.nii.gz", np.full((40, 40), 3.0, np.float32))
    with pytest.raises(DataError, match="not a mask"):
        load_qubiq(tmp_path, "brain-growth")
    (tmp_path / "nofolder").mkdir()
    (tmp_path / "nofolder" / "x").mkdir(parents=True)
    with pytest.raises(DataError, match="Training: missing"):
        load_qubiq(tmp_path / "nofolder", "x")


def test_cli_prepare_qubiq(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    qubiq_2d(tmp_path / "raw", cases=2)
    ok = runner.invoke(app, ["data", "prepare", "qubiq", "--root", str(tmp_path / "raw"), "--task", "brain-growth",
                             "--set", "data.crop=32"])
    assert ok.exit_code == 0, ok.output
    cache = tmp_path / "data" / "qubiq-brain-growth"
    assert MultiGraderSet.load(cache).masks.shape == (2, 5, 32, 32)
    # the default cache is found again by the same config; another crop is stale
    cfg = DataConfig(dataset="qubiq", task="brain-growth", crop=32)
    assert len(load_dataset(cfg)) == 2
    with pytest.raises(DataError, match="crop=32"):
        load_dataset(cfg.model_copy(update={"crop": 64}))
    missing = runner.invoke(app, ["data", "prepare", "qubiq", "--root", str(tmp_path / "raw")])
    assert missing.exit_code == 2 and "needs a task" in missing.output


def test_fit_one_epoch_on_lidc_png_and_qubiq_caches(tmp_path, monkeypatch):
    """The new caches train through `data.cache` like any other (1 epoch, tiny model)."""
    monkeypatch.chdir(tmp_path)
    png = prepare("lidc-png", root=write_kohl_pngs(tmp_path / "png", patients=4, per_patient=2, size=40),
                  out=tmp_path / "png-cache", cfg=DataConfig(dataset="lidc-png", crop=32))
    qubiq = prepare("qubiq", root=qubiq_2d(tmp_path / "qubiq", cases=6), out=tmp_path / "qubiq-cache",
                    cfg=DataConfig(dataset="qubiq", task="brain-growth", crop=32))
    inputs = {"lidc-png": next((tmp_path / "png" / "images").rglob("*.png")),
              "qubiq": tmp_path / "qubiq" / "brain-growth" / "Training" / "case01" / "image.nii.gz"}
    for dataset, cache in (("lidc-png", png), ("qubiq", qubiq)):
        cfg = load_config(ROOT / "configs" / "synthetic.yaml",
                          [*TINY_OVERRIDES, f"data.dataset={dataset}", f"data.cache={cache}", "train.epochs=1"])
        result = fit(cfg, checkpoint_dir=tmp_path / f"model-{dataset}")
        assert result.epochs_run == 1 and np.isfinite(result.history[-1]["train/total"])
        assert result.data.meta["preprocessing"]["size"] == [32, 32]
        # and the checkpoint carries the preprocessing that `supuq predict` repeats on a raw input
        outcome = predict(result.checkpoint_path, inputs[dataset], tmp_path / f"pred-{dataset}", samples=4,
                          weight_samples=2)
        applied = outcome.details["preprocessing"]["applied"]
        assert applied["kind"] == {"lidc-png": "scale", "qubiq": "percentile"}[dataset]
        assert outcome.details["crop"]["size"] == 32
