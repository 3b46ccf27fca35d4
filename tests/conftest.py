"""Shared fixtures: tiny configs that train in seconds on 2 CPU cores, and the shared-data location; and a
check that a test run leaves the checkout as it found it (`pytest_sessionstart` / `pytest_sessionfinish`)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from supuq.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
TOOLBOX_SAMPLE = SHARED / "data" / "lidc_toolbox_sample"
PNG = "data:image/png;base64,"  # how an HTML report embeds each figure

TINY_OVERRIDES = [
    "data.synthetic.n=48",
    "data.synthetic.size=16",
    "model.num_filters=[4,8]",
    "model.convs_per_block=1",
    "model.latent_dim=2",
    "model.fcomb_convs=2",
    "train.epochs=2",
    "train.batch_size=8",
    "train.val_every=1",
    "eval.val_samples=4",
    "eval.weight_samples=2",
    "eval.latent_samples=2",
    "eval.figure_images=2",
]


@pytest.fixture
def tiny_cfg(tmp_path, monkeypatch) -> Config:
    """A synthetic config small enough for a 2-epoch fit in a few seconds; caches land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return load_config(ROOT / "configs" / "synthetic.yaml", TINY_OVERRIDES)


@pytest.fixture
def toolbox_sample() -> Path:
    if not TOOLBOX_SAMPLE.is_dir():
        pytest.skip(f"real LIDC toolbox sample not found at {TOOLBOX_SAMPLE} (../shared is absent)")
    return TOOLBOX_SAMPLE


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One local Ray instance for the whole test session (starting Ray costs ~5-10 s); shut down at the end.

    Started from a temporary folder: Ray's workers keep the working directory the driver had at `ray.init`,
    so a relative path a task resolves (e.g. a retrain's output folder) would otherwise land in the checkout."""
    import ray

    here = Path.cwd()
    os.chdir(tmp_path_factory.mktemp("ray-cwd"))
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    finally:
        os.chdir(here)
    yield ray
    ray.shutdown()


# ------------------------------------------------------------------------------ the checkout stays clean

_CHECKOUT_BEFORE = pytest.StashKey["set[str] | None"]()
# Caches a test run may create in the checkout (and a developer's virtualenv): not test outputs.
_NOT_OUTPUTS = [":(exclude).venv", ":(exclude,glob)**/__pycache__/**", ":(exclude,glob)**/.pytest_cache/**",
                ":(exclude,glob)*.egg-info/**"]


def checkout_state(root: Path) -> set[str] | None:
    """`git status` lines of every changed, untracked or ignored file under `root` (one line per file), or
    None when `root` is not the top of a git checkout (an sdist, a copied tree) or git is missing."""
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=60)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
            return None
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--ignored", "--untracked-files=all", "--", ".",
             *_NOT_OUTPUTS], capture_output=True, text=True, timeout=120, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return set(status.stdout.splitlines())


def pytest_sessionstart(session):
    session.config.stash[_CHECKOUT_BEFORE] = checkout_state(ROOT)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """Fail the run when the tests added or changed files in the checkout (ignored ones included: `runs/`,
    `mlflow/`, `data/` are where a test that forgot its tmp_path writes)."""
    before = session.config.stash.get(_CHECKOUT_BEFORE, None)
    after = checkout_state(ROOT) if before is not None else None
    left = sorted(after - before) if after is not None else []
    if not left:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", f"the tests left {len(left)} file(s) in the checkout {ROOT}", red=True)
        for line in left[:20]:
            reporter.write_line(line)
        if len(left) > 20:
            reporter.write_line(f"... and {len(left) - 20} more")
    if session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
