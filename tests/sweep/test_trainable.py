"""supuq.sweep.trainable in real Ray Tune trials: one worker process reused by every trial, a NaN trial failing
alone, a resumed trial logging each epoch once."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from supuq.sweep.driver import run_sweep

from ..processes import kill_processes_with_env
from .test_driver import children, cli_sweep, driver_log, steps_of, sweep_options, sweep_process, sweep_state, write_space


def test_trials_reuse_their_worker_process(tmp_path, monkeypatch, ray_session):
    """reuse_actors: one at a time, every trial runs in the same Ray worker process (no new process, imports or
    dataset load per trial), and each still gets its own complete MLflow run."""
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, num_samples=3, max_concurrent=1, scheduler={"type": "none"})
    opts = sweep_options(tmp_path, "reuse", space)
    out = run_sweep(opts)
    assert out.complete and [t["status"] for t in out.trials] == ["TERMINATED"] * 3
    runs = children(opts.tracking_uri, out.parent_run_id)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    assert all("val/ged" in r.data.metrics for r in runs)
    assert len({r.data.tags["supuq.worker_pid"] for r in runs}) == 1


def test_nan_trial_fails_alone(tmp_path, monkeypatch, ray_session):
    """A trial whose loss turns NaN in epoch 2 fails alone, at once: Ray does not retry it (divergence is
    deterministic; the space's max_failures is 1, so a retry would log its epoch 1 twice), and its run says why in
    words, without Ray's wrapper text or colour codes. (No scheduler: ASHA could stop it before epoch 2.)"""
    monkeypatch.chdir(tmp_path)
    space = write_space(
        tmp_path, num_samples=2, scheduler={"type": "none"},
        points_to_evaluate=[{"train.inject_nan_at_epoch": 2}, {"train.inject_nan_at_epoch": None}],
    )
    data = yaml.safe_load(space.read_text())
    data["space"]["train.inject_nan_at_epoch"] = {"choice": [None, 2]}
    space.write_text(yaml.safe_dump(data))
    opts = sweep_options(tmp_path, "nan", space)
    out = run_sweep(opts)
    statuses = sorted(t["status"] for t in out.trials)
    assert statuses == ["ERROR", "TERMINATED"]
    runs = children(opts.tracking_uri, out.parent_run_id)
    assert {r.info.status for r in runs} == {"FAILED", "FINISHED"}
    assert out.best is not None and out.best["params"].get("train.inject_nan_at_epoch") is None
    (failed,) = [r for r in runs if r.info.status == "FAILED"]
    assert failed.data.tags["supuq.stop_reason"] == "training diverged at epoch 2: loss is NaN"
    assert steps_of(opts.tracking_uri, failed.info.run_id, "train/total") == [1]  # epoch 1 once: no retry
    (errored,) = [t for t in out.trials if t["status"] == "ERROR"]
    assert errored["error"] == "training diverged at epoch 2: loss is NaN"


def test_resume_after_sigkill_logs_each_epoch_once_with_val_every_2(tmp_path):
    """One trial, 8 epochs, a validation (and checkpoint) every 2nd epoch: kill -9 the driver's Ray right after the
    trial logged an odd epoch (logged, not checkpointed), resume, and every epoch must be in the run once."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = write_space(tmp_path, num_samples=1, max_concurrent=1, scheduler={"type": "none"})
    overrides = ["train.epochs=8", "train.val_every=2", "data.synthetic.n=192"]  # more images: longer epochs
    trial_steps: list[int] = []
    with sweep_process(tmp_path, cli_sweep(tmp_path, "odd", space, overrides)) as (driver, env):
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            state = sweep_state(tmp_path, "odd")
            runs = children(uri, state["parent_run_id"]) if state else []
            trial_steps = steps_of(uri, runs[0].info.run_id, "train/total") if runs else []
            if trial_steps and max(trial_steps) >= 3 and max(trial_steps) % 2 == 1:
                break  # the kill lands right after an odd epoch: logged, but its checkpoint is the epoch before
            time.sleep(0.05)
    (run,) = children(uri, state["parent_run_id"])
    at_kill = steps_of(uri, run.info.run_id, "train/total")  # what the run held when everything was dead
    if not (at_kill and max(at_kill) % 2 == 1 and 3 <= max(at_kill) < 8):
        pytest.fail(f"the kill did not land just after an odd epoch (steps {at_kill}): {driver_log(tmp_path)}")
    resumed = subprocess.run(
        [sys.executable, "-m", "supuq.cli", "sweep", "--resume", "odd", "--storage", str(tmp_path / "rr")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
    )
    kill_processes_with_env(f"SUPUQ_TEST_KILL={env['SUPUQ_TEST_KILL']}".encode())
    if resumed.returncode != 0:
        pytest.fail(f"resume failed: {resumed.stdout[-3000:]} {resumed.stderr[-2000:]}")
    (run,) = children(uri, state["parent_run_id"])
    if run.info.status != "FINISHED":
        pytest.fail(f"the resumed trial ended {run.info.status}: {run.data.tags.get('supuq.stop_reason')}")
    train_steps, val_steps = steps_of(uri, run.info.run_id, "train/total"), steps_of(uri, run.info.run_id, "val/ged")
    assert sorted(train_steps) == list(range(1, 9)), f"train/total steps {sorted(train_steps)} (at the kill {at_kill})"
    assert sorted(val_steps) == [2, 4, 6, 8], f"val/ged steps {sorted(val_steps)}"
