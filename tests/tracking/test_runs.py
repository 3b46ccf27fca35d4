"""supuq.tracking.runs against real MLflow (a sqlite store in tmp_path): a tracked run's params, metrics,
artifacts and tags, its end states, resume, stale runs, and real subprocesses logging at once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from supuq import tracking
from supuq.config import Config
from supuq.errors import SupuqError

from ..conftest import ROOT
from .conftest import EXPERIMENT


def test_run_logs_params_metrics_artifacts(store, tmp_path):
    cfg = Config().updated({"loss.gamma": 10.0, "model.num_filters": [4, 8]})
    extra = tmp_path / "notes.txt"
    extra.write_text("hello")
    with tracking.tracked_run(store, EXPERIMENT, run_name="r1", tags=tracking.standard_tags(cfg)) as run:
        run.log_config(cfg)
        reporter = tracking.MlflowReporter(run, quiet=True)
        for epoch in range(1, 4):
            reporter({"train/loss": 1.0 / epoch, "val/ged": 0.5, "phase": "train", "skip": None}, epoch, None)
        run.log_artifact(extra, subdir="extra")
        run.log_dict({"a": 1}, "summary.json")
        run.set_tags({"supuq.kind": "trial"})

    client = MlflowClient(tracking_uri=store)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.info.run_name == "r1"
    params = got.data.params
    assert params["loss.gamma"] == "10.0"
    assert yaml.safe_load(params["model.num_filters"]) == [4, 8]
    assert yaml.safe_load(params["data.cache"]) is None  # JSON "null", not the string "None"
    assert set(params) == set(cfg.flat())
    history = client.get_metric_history(run.run_id, "train/loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert len(client.get_metric_history(run.run_id, "val/ged")) == 3
    assert "phase" not in got.data.metrics and "skip" not in got.data.metrics
    tags = got.data.tags
    assert tags["supuq.method"] == "supervised" and tags["supuq.dataset"] == "synthetic"
    assert tags["supuq.version"] and tags["supuq.kind"] == "trial"
    listed = {f.path for f in client.list_artifacts(run.run_id)}
    assert {"config.yaml", "summary.json", "extra"} <= listed
    assert [f.path for f in client.list_artifacts(run.run_id, "extra")] == ["extra/notes.txt"]
    # artifacts land in the store's folder, per experiment
    assert got.info.artifact_uri.startswith(str(Path(tracking.default_artifact_root()) / "supuq_synthetic"))

    dst = tracking.download_artifact(store, run.run_id, "config.yaml", tmp_path / "dl")
    assert Config.model_validate(yaml.safe_load(dst.read_text())) == cfg
    with pytest.raises(SupuqError, match="cannot download"):
        tracking.download_artifact(store, run.run_id, "nope.txt", tmp_path / "dl")


def test_quiet_reporter_silences_the_progress_bar_and_still_logs_every_epoch(store, tiny_cfg, capsys):
    """What `quiet` is for: a Ray trial's `fit(progress=True)` must not draw a bar into the driver's log."""
    from supuq.train import fit

    shown = {}
    for quiet in (False, True):
        with tracking.tracked_run(store, EXPERIMENT, run_name=f"quiet-{quiet}") as run:
            fit(tiny_cfg, reporter=tracking.MlflowReporter(run, quiet=quiet), progress=True)
        shown[quiet] = capsys.readouterr().out
        steps = [m.step for m in MlflowClient(tracking_uri=store).get_metric_history(run.run_id, "train/total")]
        assert steps == [1, 2]
    assert "epoch" in shown[False] and "2/2" in shown[False]  # the bar, when not quiet
    assert shown[True] == ""


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_commit_tag_present_only_in_a_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # tmp_path is not inside a git checkout
    assert "supuq.git_commit" not in tracking.standard_tags(Config())
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "--allow-empty", "-m", "x"], check=True
    )
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert tracking.standard_tags(Config())["supuq.git_commit"] == head


def test_exception_marks_failed_and_propagates(store):
    with pytest.raises(ValueError, match="boom"):
        with tracking.tracked_run(store, EXPERIMENT, run_name="bad") as run:
            run.log_metrics({"x": 1.0}, step=0)
            raise ValueError("boom")
    assert tracking.get_run(store, run.run_id).info.status == "FAILED"


def test_keyboard_interrupt_marks_killed(store):
    with pytest.raises(KeyboardInterrupt):
        with tracking.tracked_run(store, EXPERIMENT, run_name="interrupted") as run:
            raise KeyboardInterrupt
    assert tracking.get_run(store, run.run_id).info.status == "KILLED"


def test_resume_continues_the_same_run(store):
    with pytest.raises(KeyboardInterrupt):
        with tracking.tracked_run(store, EXPERIMENT, run_name="resumable") as first:
            first.log_metrics({"val/ged": 0.9}, step=1)
            raise KeyboardInterrupt
    with tracking.tracked_run(store, EXPERIMENT, run_id=first.run_id, tags={"supuq.resumed": "1"}) as again:
        assert tracking.get_run(store, first.run_id).info.status == "RUNNING"
        again.log_metrics({"val/ged": 0.7}, step=2)
    assert again.run_id == first.run_id
    runs = tracking.find_runs(store, EXPERIMENT)
    assert [r.info.run_id for r in runs] == [first.run_id]
    got = runs[0]
    assert got.info.status == "FINISHED" and got.data.tags["supuq.resumed"] == "1"
    history = MlflowClient(tracking_uri=store).get_metric_history(first.run_id, "val/ged")
    assert [m.step for m in history] == [1, 2]
    with pytest.raises(SupuqError, match="no MLflow run"):
        with tracking.tracked_run(store, EXPERIMENT, run_id="0" * 32):
            pass


def test_end_stale_runs(store):
    client = MlflowClient(tracking_uri=store)
    with tracking.tracked_run(store, EXPERIMENT, run_name="sweep") as parent:
        # a child whose process "died": created but never terminated
        exp = client.get_experiment_by_name(EXPERIMENT).experiment_id
        dead = client.create_run(exp, tags={"mlflow.parentRunId": parent.run_id}).info.run_id
        with tracking.tracked_run(store, EXPERIMENT, parent_run_id=parent.run_id) as ok:
            pass
        assert tracking.end_stale_runs(store, parent.run_id) == 1
    assert client.get_run(dead).info.status == "KILLED"
    assert client.get_run(ok.run_id).info.status == "FINISHED"


_WORKER = """
import sys, time
from supuq import tracking
uri, experiment, index, points = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
with tracking.tracked_run(uri, experiment, run_name=f"worker{index}", tags={"worker": str(index)}) as run:
    start = time.monotonic()
    for step in range(points):
        run.log_metrics({"train/loss": 1.0 / (step + 1), "val/ged": float(index)}, step=step)
    print(time.monotonic() - start)
"""


def test_concurrent_processes_lose_nothing(store, tmp_path):
    workers, points = 4, 50
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONWARNINGS="ignore")
    start = time.monotonic()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, store, EXPERIMENT, str(i), str(points)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    elapsed = time.monotonic() - start
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
    loops = ", ".join(f"{float(out.split()[-1]):.1f}" for out, _ in outputs)
    print(f"\n{workers} processes x {points} batched log calls: {elapsed:.1f} s wall with interpreter start; "
          f"logging loops {loops} s")

    client = MlflowClient(tracking_uri=store)
    runs = tracking.find_runs(store, EXPERIMENT)
    assert len(runs) == workers and all(r.info.status == "FINISHED" for r in runs)
    total = 0
    for run in runs:
        for key in ("train/loss", "val/ged"):
            history = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in history) == list(range(points))
            total += len(history)
        # each point landed in its own process's run
        worker = float(run.data.tags["worker"])
        assert all(m.value == worker for m in client.get_metric_history(run.info.run_id, "val/ged"))
    assert total == workers * points * 2
