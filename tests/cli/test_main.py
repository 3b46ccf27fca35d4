"""supuq.cli.main: the command line's help and version, and `supuq train --method` for the methods beside the
paper's (a real subprocess: train, test with the literature's metrics, eval.json)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from supuq.cli import app

from ..conftest import ROOT, TINY_OVERRIDES


runner = CliRunner()


def test_cli_help_and_version():
    assert runner.invoke(app, ["--version"]).output.startswith("supuq ")
    proc = subprocess.run([sys.executable, "-m", "supuq.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "sweep" in proc.stdout and "train" in proc.stdout


@pytest.mark.parametrize("method", ["ssn", "phiseg", "soft_label"])
def test_train_each_new_method_through_the_cli(tmp_path, method):
    sets = [*TINY_OVERRIDES, "data.synthetic.n=40", "train.epochs=1"]
    cmd = [sys.executable, "-m", "supuq.cli", "train", "--method", method, "--no-track",
           "--config", str(ROOT / "configs" / "synthetic.yaml"), "--out", str(tmp_path / "run"),
           *(a for s in sets for a in ("--set", s))]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["weight_samples"] == 1  # no epistemic source: a 1 x S grid ...
    assert result["epistemic"] == 0.0  # ... and an epistemic map of exactly 0
    for key in ("ged", "ged_16", "ged_100", "hm_iou_16", "ncc", "ncc_true"):
        assert math.isfinite(result[key]), key
    # after one tiny epoch a method's thresholded samples may agree everywhere (no binary NCC on any image)
    assert math.isfinite(result["ncc_binary"]) or result["ncc_binary_excluded"] == result["n_images"]
    assert "HM-IoU16" in proc.stdout  # the terminal's table shows the literature's metrics
