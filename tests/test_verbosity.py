"""Third-party noise is off by default and comes back with --verbose / SUPUQ_VERBOSE=1."""

from __future__ import annotations

import os
import subprocess
import sys

from supuq import verbosity

from .conftest import ROOT, TINY_OVERRIDES


def test_quiet_by_default_and_verbose_on_request(monkeypatch):
    for key in (verbosity.VERBOSE_ENV, *verbosity._QUIET_ENV):
        monkeypatch.delenv(key, raising=False)
    assert verbosity.configure() is False
    assert os.environ["MLFLOW_LOGGING_LEVEL"] == "WARNING" and os.environ["RAY_AIR_NEW_OUTPUT"] == "0"
    assert verbosity.ray_logging_level() == "ERROR"
    for key in verbosity._QUIET_ENV:
        monkeypatch.delenv(key)
    assert verbosity.configure(verbose_flag=True) is True
    assert os.environ[verbosity.VERBOSE_ENV] == "1" and "MLFLOW_LOGGING_LEVEL" not in os.environ
    assert verbosity.ray_logging_level() == "WARNING"
    monkeypatch.setenv(verbosity.VERBOSE_ENV, "0")
    assert verbosity.verbose() is False


def test_a_first_train_on_a_fresh_store_prints_no_mlflow_info_lines(tmp_path):
    """MLflow announces the schema it creates on a fresh store at INFO; `supuq train` does not pass that on,
    `supuq --verbose train` does."""
    args = [sys.executable, "-m", "supuq.cli", "train", "--config", str(ROOT / "configs" / "synthetic.yaml"),
            *(x for o in [*TINY_OVERRIDES, "train.epochs=1"] for x in ("--set", o))]
    env = {k: v for k, v in os.environ.items() if k not in (verbosity.VERBOSE_ENV, *verbosity._QUIET_ENV)}
    quiet = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "test split" in quiet.stdout and "Creating initial MLflow database tables" not in quiet.stderr
    (tmp_path / "again").mkdir()
    loud = subprocess.run([*args[:3], "--verbose", *args[3:]], cwd=tmp_path / "again", env=env,
                          capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert "Creating initial MLflow database tables" in loud.stderr
