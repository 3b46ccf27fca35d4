"""`supuq predict` (supuq.predict.run): a tiny trained model on NIfTI volumes, DICOM series and PNGs; geometry kept;
the maps' identities; Kohl's zero epistemic; one-line errors; a model named by its MLflow run id."""

from __future__ import annotations

import json
import locale
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from supuq.checkpoint import load_checkpoint, save_checkpoint
from supuq.cli import app
from supuq.config import load_config
from supuq.data.synthetic import generate
from supuq.errors import SupuqError
from supuq.predict import load_model, predict, predict_volume
from supuq.train import fit

from ..conftest import ROOT, TINY_OVERRIDES

runner = CliRunner()
SIZE = 16  # training image size of the tiny models (data.synthetic.size in TINY_OVERRIDES)
SHAPE = (3, 20, 24)  # [z, y, x] test volumes: larger than the training crop, so a border lies outside it
SPACING, ORIGIN = (0.7, 0.8, 2.5), (10.0, -5.0, 3.0)
# A proper rotation about z by 30 degrees: direction cosines that are not the identity must survive too.
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
DIRECTION = (_C, -_S, 0.0, _S, _C, 0.0, 0.0, 0.0, 1.0)
HU_PREPROCESSING = {"kind": "hu_window", "lo": -1000.0, "hi": 400.0, "rescale": "dicom", "size": [SIZE, SIZE]}


def _train(folder: Path, method: str = "supervised") -> Path:
    cfg = load_config(ROOT / "configs" / "synthetic.yaml", [*TINY_OVERRIDES, "train.epochs=1"]).with_method(method)
    data = generate(cfg.data.synthetic.n, size=SIZE, graders=4, seed=0)
    return fit(cfg, data, checkpoint_dir=folder).checkpoint_path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A supervised (weight-noise) model trained for one epoch on tiny synthetic data."""
    return _train(tmp_path_factory.mktemp("supervised"))


@pytest.fixture(scope="module")
def kohl_ckpt(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("kohl"), "kohl")


@pytest.fixture(scope="module")
def hu_ckpt(ckpt, tmp_path_factory) -> Path:
    """The supervised model relabelled as a CT model (its training data recorded as HU windowed to [-1000, 400])."""
    state = load_checkpoint(ckpt)
    meta = json.loads(state["data_meta"])
    state["data_meta"] = json.dumps({**meta, "dataset": "lidc", "preprocessing": HU_PREPROCESSING})
    return save_checkpoint(tmp_path_factory.mktemp("hu") / "checkpoint.pt", state)


def synthetic_volume(seed: int = 0) -> np.ndarray:
    """float32 [z,y,x] in [0,1]: synthetic lesion images (16x16) inside a larger slice of background."""
    ds = generate(SHAPE[0], size=SIZE, graders=4, seed=seed)
    volume = np.full(SHAPE, float(np.median(ds.images)), np.float32)
    volume[:, 2:18, 4:20] = ds.images[:, 0]
    return volume


def write_volume(path: Path, array: np.ndarray) -> Path:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


def ct_volume() -> np.ndarray:
    """int16 HU [z,y,x]: air outside a soft-tissue body with lung-like dark regions and a nodule."""
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    hu = np.full(SHAPE, -1000, np.int16)
    body = ((y - 10) / 9.0) ** 2 + ((x - 12) / 11.0) ** 2 < 1
    hu[body] = 40
    lung = body & (((y - 10) / 6.0) ** 2 + ((x - 12) / 8.0) ** 2 < 1)
    hu[lung] = -850
    hu[lung & ((y - 10) ** 2 + (x - 12) ** 2 < 5)] = 30
    return hu


def write_dicom_series(folder: Path, hu: np.ndarray) -> Path:
    """One CT file per axial slice with position/orientation tags; stored = HU + 1024 (RescaleIntercept -1024),
    so reading it back exercises the rescale."""
    folder.mkdir(parents=True, exist_ok=True)
    # ITK's GDCM writer sets the process locale to "C" and leaves it there (text I/O of later tests in this
    # process would become ASCII): restore it.
    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_dicom_slices(folder, hu)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    return folder


def _write_dicom_slices(folder: Path, hu: np.ndarray) -> None:
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125.4242"
    for k, plane in enumerate(hu):
        s = sitk.GetImageFromArray(plane)
        s.SetSpacing(SPACING[:2])
        position = np.asarray(ORIGIN) + k * SPACING[2] * np.asarray(DIRECTION).reshape(3, 3)[:, 2]
        tags = {
            "0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": f"{uid}.3.{k}",
            "0020|000d": f"{uid}.1", "0020|000e": f"{uid}.2", "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in position),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (DIRECTION[0], DIRECTION[3], DIRECTION[6],
                                                          DIRECTION[1], DIRECTION[4], DIRECTION[7])),
            "0018|0050": str(SPACING[2]), "0028|1052": "-1024", "0028|1053": "1",
        }
        for key, value in tags.items():
            s.SetMetaData(key, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(s)


def read(path: Path) -> tuple[sitk.Image, np.ndarray]:
    image = sitk.ReadImage(str(path))
    return image, sitk.GetArrayFromImage(image)


def assert_same_geometry(a: sitk.Image, b: sitk.Image) -> None:
    assert a.GetSize() == b.GetSize()
    np.testing.assert_allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(a.GetDirection(), b.GetDirection(), atol=1e-5)


def assert_maps_consistent(out: Path, ext: str = ".nii.gz") -> dict[str, np.ndarray]:
    maps = {name: read(out / f"{name}{ext}")[1] for name in ("pm", "aleatoric", "epistemic", "total", "consensus")}
    for name in ("aleatoric", "epistemic", "total"):
        assert maps[name].dtype == np.float32
        assert maps[name].min() >= 0 and maps[name].max() <= 0.25
    np.testing.assert_allclose(maps["aleatoric"] + maps["epistemic"], maps["total"], atol=1e-6)
    assert 0 <= maps["pm"].min() and maps["pm"].max() <= 1
    np.testing.assert_array_equal(maps["consensus"], (maps["pm"] > 0.5).astype(np.uint8))
    return maps


def test_nifti_volume_keeps_geometry_and_the_maps_add_up(ckpt, tmp_path):
    source = write_volume(tmp_path / "vol.nii.gz", synthetic_volume())
    outcome = predict(ckpt, source, tmp_path / "out", samples=8, weight_samples=2, save_samples=True)
    reference = sitk.ReadImage(str(source))
    for name in ("pm", "aleatoric", "epistemic", "total", "consensus"):
        assert_same_geometry(read(tmp_path / "out" / f"{name}.nii.gz")[0], reference)
    maps = assert_maps_consistent(tmp_path / "out")
    # centre crop 16x16 of a 20x24 slice: rows 2..17, cols 4..19; everything else is 0
    outside = np.ones(SHAPE, bool)
    outside[:, 2:18, 4:20] = False
    for name, value in maps.items():
        assert not value[outside].any(), name
    assert (maps["pm"][~outside] > 0).all()  # inside, the mean sigmoid is never exactly 0
    # the maps are the samples' probabilities' (total = pm (1 - pm)); the saved binary samples come from the same
    # draws: where every sample is foreground each sigmoid was > 0.5, so pm > 0.5, and where none is, pm < 0.5
    # (after one epoch either set may be empty)
    np.testing.assert_allclose(maps["total"], maps["pm"] * (1 - maps["pm"]), atol=1e-6)
    samples_image, samples = read(tmp_path / "out" / "samples.nii.gz")
    assert samples_image.GetDimension() == 4 and samples.shape == (8, *SHAPE)
    all_on, all_off = samples.all(axis=0) & ~outside, ~samples.any(axis=0) & ~outside
    assert (maps["pm"][all_on] > 0.5).all() and (maps["pm"][all_off] < 0.5).all()
    np.testing.assert_allclose(samples_image.GetSpacing()[:3], SPACING)
    details = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert details["crop"]["mode"] == "centre" and details["crop"]["size"] == SIZE
    assert details["crop"]["rows"] == [2, 18] and details["crop"]["cols"] == [4, 20]
    assert details["crop"]["training_size"] == SIZE
    assert details["sampling"]["weight_samples"] == 2 and details["sampling"]["latent_samples"] == 4
    assert details["preprocessing"]["kind"] == "unit"
    assert details["slices"]["predicted"] == [0, 1, 2]
    assert details["model"]["kind"] == "checkpoint" and details["model"]["method"] == "supervised"
    assert (tmp_path / "out" / "overview.png").stat().st_size > 1000
    assert outcome.files["pm"] == tmp_path / "out" / "pm.nii.gz"


def test_dicom_series_with_a_ct_model_full_tiling(hu_ckpt, tmp_path):
    folder = write_dicom_series(tmp_path / "series", ct_volume())
    outcome = predict(hu_ckpt, folder, tmp_path / "out", samples=4, weight_samples=2, crop="full")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reference = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(reference), ct_volume())  # the rescale was applied
    np.testing.assert_allclose(reference.GetDirection(), DIRECTION, atol=1e-5)
    for name in ("pm", "aleatoric", "epistemic", "total", "consensus"):
        assert_same_geometry(read(tmp_path / "out" / f"{name}.nii.gz")[0], reference)
    maps = assert_maps_consistent(tmp_path / "out")
    assert (maps["pm"] > 0).all()  # full tiling: every pixel was predicted
    details = outcome.details
    assert details["input"]["kind"] == "dicom-series" and details["input"]["files"] == SHAPE[0]
    assert details["crop"] == {"mode": "full", "tile": SIZE, "overlap": 0.5, "tiles_per_slice": 4,
                               "blend": "gaussian, sigma = 0.125 tile", "training_size": SIZE,
                               "outside": "maps are 0 outside the predicted region"}
    assert details["preprocessing"]["applied"]["window_hu"] == [-1000.0, 400.0]


def test_kohl_model_has_exactly_zero_epistemic(kohl_ckpt, tmp_path):
    source = write_volume(tmp_path / "vol.mha", synthetic_volume(1))
    outcome = predict(kohl_ckpt, source, tmp_path / "out", samples=6, weight_samples=3, fmt="same")
    assert sorted(p.name for p in (tmp_path / "out").glob("*.mha")) == [
        "aleatoric.mha", "consensus.mha", "epistemic.mha", "pm.mha", "total.mha"]
    maps = assert_maps_consistent(tmp_path / "out", ".mha")
    assert not maps["epistemic"].any()
    np.testing.assert_array_equal(maps["aleatoric"], maps["total"])
    assert outcome.details["sampling"]["weight_samples"] == 1 and outcome.details["sampling"]["latent_samples"] == 6


@pytest.fixture(scope="module")
def soft_label_ckpt(tmp_path_factory) -> Path:
    return _train(tmp_path_factory.mktemp("soft_label"), "soft_label")


def test_soft_label_model_maps_are_p_times_one_minus_p_and_its_samples_bernoulli(soft_label_ckpt, tmp_path):
    """One probability map p per pixel: aleatoric = total = pm (1 - pm) exactly, epistemic 0; its binary samples
    are Bernoulli(p) draws (prediction.json says so), so they differ where p is neither 0 nor 1."""
    source = write_volume(tmp_path / "vol.mha", synthetic_volume(2))
    outcome = predict(soft_label_ckpt, source, tmp_path / "out", samples=8, weight_samples=5, fmt="same",
                      save_samples=True)
    maps = assert_maps_consistent(tmp_path / "out", ".mha")
    assert not maps["epistemic"].any()
    np.testing.assert_allclose(maps["aleatoric"], maps["pm"] * (1 - maps["pm"]), atol=1e-6)
    assert outcome.details["sampling"]["binary_sample"] == "Bernoulli(sigmoid(logit)) per pixel"
    samples = read(tmp_path / "out" / "samples.mha")[1]  # [..., S]: the 8 draws along the last array axis
    spread = samples.astype(np.float32).std(axis=-1 if samples.shape[-1] == 8 else 0)
    assert spread.max() > 0


def test_predict_volume_api_on_a_2d_image(ckpt):
    model = load_model(ckpt)
    x = sitk.GetImageFromArray(synthetic_volume()[1])  # 2-D [20, 24]
    x.SetSpacing((0.5, 0.25))
    info: dict = {}
    out = predict_volume(model.model, model.cfg, x, samples=4, weight_samples=2, preprocessing=model.preprocessing,
                         crop=8, keep_samples=True, info=info)
    assert set(out) == {"pm", "aleatoric", "epistemic", "total", "consensus", "samples"}
    assert out["pm"].GetSize() == (24, 20) and out["pm"].GetSpacing() == (0.5, 0.25)
    assert out["samples"].GetSize() == (24, 20, 4)
    assert info["crop"]["rows"] == [6, 14] and info["crop"]["cols"] == [8, 16]
    # the same seed gives the same samples, and the caller's RNG state is left alone
    state = torch.get_rng_state()
    again = predict_volume(model.model, model.cfg, x, samples=4, weight_samples=2, preprocessing=model.preprocessing,
                           crop=8, keep_samples=True)
    assert torch.equal(state, torch.get_rng_state())
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out["samples"]), sitk.GetArrayFromImage(again["samples"]))
    with pytest.raises(SupuqError, match="not a multiple of 2"):
        predict_volume(model.model, model.cfg, x, samples=4, weight_samples=2, preprocessing=model.preprocessing, crop=9)
    with pytest.raises(SupuqError, match="records no input preprocessing"):
        predict_volume(model.model, model.cfg, x, samples=4, weight_samples=2, preprocessing=None)


def test_png_input_full_tiles_and_annotated_slices(ckpt, tmp_path):
    from PIL import Image

    plane = np.tile(synthetic_volume()[0], (1, 2))[:, :40]  # [20, 40] in [0, 1]
    Image.fromarray((plane * 255).round().astype(np.uint8)).save(tmp_path / "slice.png")
    outcome = predict(ckpt, tmp_path / "slice.png", tmp_path / "out", samples=4, weight_samples=2, crop="full")
    pm_image, pm = read(tmp_path / "out" / "pm.nii.gz")
    assert pm_image.GetDimension() == 2 and pm.shape == (20, 40) and (pm > 0).all()
    assert outcome.details["crop"]["tiles_per_slice"] == 8  # 2 x 4 tiles of 16 overlapping by half
    assert_maps_consistent(tmp_path / "out")
    plain = predict(ckpt, tmp_path / "slice.png", tmp_path / "out0", samples=4, weight_samples=2, crop="full",
                    overlap=0)
    assert plain.details["crop"]["tiles_per_slice"] == 6 and plain.details["crop"]["blend"].startswith("none")
    with pytest.raises(SupuqError, match="--overlap must be in"):
        predict(ckpt, tmp_path / "slice.png", tmp_path / "out1", crop="full", overlap=1.0)
    assert outcome.details["preprocessing"]["applied"]["divided_by"] == 255  # 8-bit file, [0, 1] model
    with pytest.raises(SupuqError, match="cannot hold floating-point maps"):
        predict(ckpt, tmp_path / "slice.png", tmp_path / "out2", fmt="same")

    case = tmp_path / "case"
    source = write_volume(case / "image.nii.gz", synthetic_volume())
    mask = np.zeros(SHAPE, np.uint8)
    mask[1, 8:12, 8:12] = 1
    write_volume(case / "annotation_1.nii.gz", mask)
    result = predict(ckpt, source, tmp_path / "out3", samples=4, weight_samples=2, slices="annotated")
    assert result.details["slices"]["predicted"] == [1]
    pm = read(tmp_path / "out3" / "pm.nii.gz")[1]
    assert not pm[[0, 2]].any() and pm[1].any()


def _cli_error(args: list[str], needle: str, only_line: bool = True) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], result.output
    assert "Traceback" not in result.output
    if only_line:
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_cli_predict_and_its_one_line_errors(ckpt, hu_ckpt, tmp_path):
    source = write_volume(tmp_path / "vol.nii.gz", synthetic_volume())
    ok = runner.invoke(app, ["predict", str(ckpt), str(source), "--out", str(tmp_path / "out"), "--samples", "4",
                             "--weight-samples", "2"])
    assert ok.exit_code == 0, ok.output
    assert (tmp_path / "out" / "prediction.json").is_file()

    out = ["--out", str(tmp_path / "bad")]
    _cli_error(["predict", str(ckpt), str(tmp_path / "absent.nii.gz"), *out], "no such file or folder")
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not an image" * 20)
    _cli_error(["predict", str(ckpt), str(garbage), *out], "unreadable")
    truncated = tmp_path / "truncated.nii"
    sitk.WriteImage(sitk.GetImageFromArray(synthetic_volume()), str(truncated))
    truncated.write_bytes(truncated.read_bytes()[:2000])
    _cli_error(["predict", str(ckpt), str(truncated), *out], "truncated")
    mr = write_volume(tmp_path / "mr.nii.gz", np.random.default_rng(0).uniform(0, 1000, SHAPE).astype(np.float32))
    _cli_error(["predict", str(hu_ckpt), str(mr), *out], "do not look like Hounsfield units")
    _cli_error(["predict", str(ckpt), str(mr), *out], "are not in [0, 1]")
    _cli_error(["predict", str(tmp_path / "nope.pt"), str(source), *out], "no such checkpoint file")
    state = load_checkpoint(ckpt)
    state["data_meta"] = json.dumps({"dataset": "synthetic"})
    old = save_checkpoint(tmp_path / "old" / "checkpoint.pt", state)
    _cli_error(["predict", str(old), str(source), *out], "records no input preprocessing")
    _cli_error(["predict", str(ckpt), str(source), *out, "--samples", "5", "--weight-samples", "2"],
               "multiple of weight samples")
    _cli_error(["predict", str(ckpt), str(source), *out, "--crop", "big"], "--crop")
    _cli_error(["predict", str(ckpt), str(source), *out, "--slices", "annotated"], "no annotation files")
    _cli_error(["predict", "0123456789abcdef0123456789abcdef", str(source), *out, "--tracking-uri",
                f"sqlite:///{tmp_path / 'empty.db'}"], "no MLflow run", only_line=False)  # + MLflow's own log lines


def test_predict_from_an_mlflow_run_id(tiny_cfg, tmp_path):
    """The CLI fetches a run's checkpoint through supuq.tracking and hands predict a local file; the record in
    prediction.json names the run, and a runs:/ URI of the same artifact gives the same maps."""
    from supuq.workflows.single import train_and_evaluate

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = train_and_evaluate(tiny_cfg.updated({"train.epochs": 1}), tracking_uri=uri, out_dir=tmp_path / "run")
    source = write_volume(tmp_path / "vol.nii.gz", synthetic_volume())
    for ref, out in ((run.run_id, "out"), (f"runs:/{run.run_id}/checkpoint/checkpoint.pt", "out2")):
        result = runner.invoke(app, ["predict", ref, str(source), "--out", str(tmp_path / out), "--samples", "4",
                                     "--weight-samples", "2", "--tracking-uri", uri])
        assert result.exit_code == 0, result.output
        details = json.loads((tmp_path / out / "prediction.json").read_text())
        assert details["model"]["kind"] == "mlflow" and details["model"]["run_id"] == run.run_id
        assert_maps_consistent(tmp_path / out)
    np.testing.assert_array_equal(read(tmp_path / "out" / "pm.nii.gz")[1], read(tmp_path / "out2" / "pm.nii.gz")[1])


def test_a_centre_crop_smaller_than_the_slice_is_warned_about(ckpt, tmp_path):
    """The default crop is the training size: on a larger slice most of it is not predicted, so predict says
    how much it covers and names --crop full; tiling the whole slice needs no warning."""
    source = write_volume(tmp_path / "vol.nii.gz", synthetic_volume())  # slices larger than the 16-px model
    h, w = SHAPE[1:]
    centre = runner.invoke(app, ["predict", str(ckpt), str(source), "--out", str(tmp_path / "c"), "--samples", "4",
                                 "--weight-samples", "2"])
    assert centre.exit_code == 0, centre.output
    covered = f"{min(SIZE, h) * min(SIZE, w) / (h * w):.0%}"
    assert f"covers {covered} of the {h}x{w} slice" in centre.output and "--crop full" in centre.output
    warned = json.loads((tmp_path / "c" / "prediction.json").read_text())["warnings"]
    assert len(warned) == 1 and covered in warned[0]
    full = runner.invoke(app, ["predict", str(ckpt), str(source), "--out", str(tmp_path / "f"), "--samples", "4",
                               "--weight-samples", "2", "--crop", "full"])
    assert full.exit_code == 0 and "warning" not in full.output, full.output
    assert json.loads((tmp_path / "f" / "prediction.json").read_text())["warnings"] == []
