"""supuq.cli.main: the command line's help and version."""

from __future__ import annotations

import subprocess
import sys

from typer.testing import CliRunner

from supuq.cli import app


runner = CliRunner()


def test_cli_help_and_version():
    assert runner.invoke(app, ["--version"]).output.startswith("supuq ")
    proc = subprocess.run([sys.executable, "-m", "supuq.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "sweep" in proc.stdout and "train" in proc.stdout
