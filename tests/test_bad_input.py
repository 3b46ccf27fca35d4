"""Hostile and careless input, through the real CLI: every case ends with exit status 2 and one line that starts
with "error:", never a traceback, and leaves the user's files as they were."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from supuq import tracking
from supuq.checkpoint import load_checkpoint, save_checkpoint
from supuq.cli import app
from supuq.config import load_config
from supuq.data.synthetic import generate
from supuq.train import fit

from .conftest import ROOT, TINY_OVERRIDES

runner = CliRunner()
CONFIG = str(ROOT / "configs" / "synthetic.yaml")


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    cfg = load_config(CONFIG, [*TINY_OVERRIDES, "train.epochs=1"])
    data = generate(cfg.data.synthetic.n, size=cfg.data.synthetic.size, graders=4, seed=0)
    return fit(cfg, data, checkpoint_dir=tmp_path_factory.mktemp("model")).checkpoint_path


def _variant(ckpt: Path, folder: Path, change) -> Path:
    state = load_checkpoint(ckpt)
    change(state)
    return save_checkpoint(folder / "checkpoint.pt", state)


def _not_json(state):
    state["config"] = "{not json"


def _other_widths(state):
    cfg = json.loads(state["config"])
    cfg["model"]["num_filters"] = [6, 12]  # the stored weights are for [4, 8]
    state["config"] = json.dumps(cfg)


def _image(path: Path, array: np.ndarray) -> Path:
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=array.ndim == 3 and array.shape[-1] in (3, 4)), str(path))
    return path


CASES = {
    # id: (args builder (tmp_path, ckpt) -> argv, text the one line must contain)
    "config-binary-garbage": (lambda t, c: ["train", "--config", str(_bytes(t / "g.yaml", bytes(range(256))))],
                              "not a text file"),
    "config-bool-for-epochs": (lambda t, c: ["train", "--config", CONFIG, "--set", "train.epochs=true"],
                               "expected a number"),
    "ui-port-out-of-range": (lambda t, c: ["ui", "--port", "70000"], "--port must be between 1 and 65535"),
    "best-unreachable-server": (lambda t, c: ["best", "--tracking-uri", f"http://127.0.0.1:{_closed_port()}"],
                                "is not reachable"),
    "report-unreachable-server": (lambda t, c: ["report", "x", "--out", str(t / "r.html"), "--tracking-uri",
                                                f"http://127.0.0.1:{_closed_port()}"], "is not reachable"),
    "results-unreachable-server": (lambda t, c: ["results", "x", "--out", str(t / "r.md"), "--tracking-uri",
                                                 f"http://127.0.0.1:{_closed_port()}"], "is not reachable"),
    "ui-unreachable-server": (lambda t, c: ["ui", "--tracking-uri", f"http://127.0.0.1:{_closed_port()}"],
                              "is not reachable"),
    "best-malformed-sqlite-store": (lambda t, c: ["best", "--tracking-uri",
                                                  f"sqlite:///{_bytes(t / 'm.db', b'SQLite format 2 garbage' * 9)}"],
                                    "is not a sqlite database"),
    "best-truncated-sqlite-store": (lambda t, c: ["best", "--tracking-uri", f"sqlite:///{_truncated_store(t)}"],
                                    "MLflow tracking store"),
    "evaluate-config-not-json": (lambda t, c: ["evaluate", str(_variant(c, t, _not_json))], "not valid JSON"),
    "evaluate-weights-do-not-fit": (lambda t, c: ["evaluate", str(_variant(c, t, _other_widths))],
                                    "weights do not fit the stored config"),
    "predict-colour-png-to-grey-model": (
        lambda t, c: ["predict", str(c), str(_image(t / "rgb.png", _rgb())), "--out", str(t / "out")],
        "3-channel colour image"),
    "predict-nan-voxels": (
        lambda t, c: ["predict", str(c), str(_image(t / "nan.nii.gz", _with_nan())), "--out", str(t / "out")],
        "NaN or infinite"),
}


def _bytes(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _truncated_store(folder: Path) -> Path:
    uri = f"sqlite:///{folder / 'full.db'}"
    tracking.init_store(uri, "supuq/synthetic")
    whole = (folder / "full.db").read_bytes()
    return _bytes(folder / "truncated.db", whole[: len(whole) // 3])


def _rgb() -> np.ndarray:
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 200  # red differs from green and blue: a real colour image
    rgb[4:12, 4:12, 1] = 90
    return rgb


def _with_nan() -> np.ndarray:
    volume = np.random.default_rng(0).uniform(0, 1, (2, 16, 16)).astype(np.float32)
    volume[1, 3, 3] = np.nan
    return volume


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_and_exit_2(case, tmp_path, ckpt, monkeypatch):
    monkeypatch.chdir(tmp_path)
    build, needle = CASES[case]
    args = build(tmp_path, ckpt)
    before = _snapshot(tmp_path)
    result = runner.invoke(app, args)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit), result.exception
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], result.output
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if k in before} == before  # nothing the user had was changed


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()
            and "mlflow" not in p.parts}


def test_a_grey_image_saved_as_rgb_is_still_accepted(ckpt, tmp_path):
    """The colour check must not refuse what it should collapse: identical channels are one grey channel."""
    grey = np.random.default_rng(1).integers(0, 255, (16, 16), dtype=np.uint8)
    path = _image(tmp_path / "grey-rgb.png", np.repeat(grey[..., None], 3, axis=2))
    result = runner.invoke(app, ["predict", str(ckpt), str(path), "--out", str(tmp_path / "out"), "--samples", "4",
                                 "--weight-samples", "2"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "pm.nii.gz").is_file()
