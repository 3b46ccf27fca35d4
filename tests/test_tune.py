"""The sweep on real Ray Tune + Optuna + ASHA with real MLflow (sqlite), small: trials as child runs, the best
trial, a NaN trial failing alone, resume after SIGKILL of the driver, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from supuq import tracking
from supuq.cli import app
from supuq.errors import ConfigError, SupuqError
from supuq.sweep.selection import best_trial
from supuq.sweep.space import load_space
from supuq.sweep.driver import SweepOptions, grace_period, run_sweep

from .conftest import ROOT, TINY_OVERRIDES
from .processes import kill_processes_with_env

runner = CliRunner()


def write_space(folder: Path, num_samples: int = 2, **extra) -> Path:
    space = {
        "metric": "val/ged", "mode": "min", "num_samples": num_samples, "max_concurrent": 2,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 1, "gpu": 0},
        "space": {"loss.beta": {"loguniform": [0.1, 10.0]}, "loss.gamma": {"loguniform": [1.0, 100.0]},
                  "model.weight_noise.prior": {"choice": ["gaussian", "log_uniform"]},
                  "model.weight_noise.prior_std": {"loguniform": [0.1, 10.0]},
                  "optim.lr": {"loguniform": [1e-4, 3e-3]}},
        **extra,
    }
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def sweep_options(tmp_path: Path, name: str, space: Path, **kw) -> SweepOptions:
    return SweepOptions(
        dataset="synthetic", config=ROOT / "configs/synthetic.yaml", space=space, overrides=list(TINY_OVERRIDES),
        storage=str(tmp_path / "ray_results"), tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", name=name, **kw,
    )


def children(uri: str, parent: str):
    return tracking.child_runs(uri, parent)


def test_two_trial_sweep_then_best_and_retrain(tmp_path, monkeypatch, ray_session):
    monkeypatch.chdir(tmp_path)
    opts = sweep_options(tmp_path, "s2", write_space(tmp_path))
    out = run_sweep(opts)
    uri = opts.tracking_uri
    assert out.complete and len(out.trials) == 2
    runs = children(uri, out.parent_run_id)
    assert len(runs) == 2
    for run in runs:
        assert run.info.status in ("FINISHED", "KILLED")
        assert "val/ged" in run.data.metrics and "train/total" in run.data.metrics
        assert run.data.params["loss.beta"]
        history = tracking.client_for(uri).get_metric_history(run.info.run_id, "train/total")
        assert len(history) >= 1
    # the paper's first point (the base config's values) was evaluated first
    assert any(abs(t["params"]["loss.gamma"] - 10.0) < 1e-9 for t in out.trials)
    assert (tmp_path / "ray_results" / "s2" / "best.yaml").is_file()

    result = runner.invoke(app, ["best", "--dataset", "synthetic", "--sweep", "s2", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    values = {r.info.run_name: r.data.metrics["val/ged"] for r in runs if r.info.status == "FINISHED"}
    assert min(values, key=values.get) in result.output

    result = runner.invoke(app, ["best", "--sweep", "s2", "--retrain", "--seeds", "2", "--samples", "4",
                                 "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "Table 2" in result.output and "Table 3" in result.output and "2 seed(s)" in result.output
    retrains = tracking.search_runs(uri, None, "tags.`supuq.kind` = 'retrain'")
    assert len(retrains) == 1
    seeds = children(uri, retrains[0].info.run_id)
    assert len(seeds) == 2 and all(r.info.status == "FINISHED" for r in seeds)
    assert all("test/ged" in r.data.metrics for r in seeds)
    assert "supervised/ged_mean" in retrains[0].data.metrics and "supervised/ged_std" in retrains[0].data.metrics


def test_wait_for_resources_gives_up_with_a_clear_error(ray_session):
    """--wait-for-resources on a cluster that never gets a GPU: the request goes to Ray's autoscaler (none here),
    the wait lasts the given time, and the error says what was missing and for how long it waited."""
    from supuq.sweep.cluster import check_resources

    cpu_only = load_space(ROOT / "sweep/synthetic.yaml")
    space = cpu_only.model_copy(update={"resources": cpu_only.resources.model_copy(update={"gpu": 1.0})})
    said = []
    started = time.monotonic()
    with pytest.raises(SupuqError, match=r"asks for 1 GPU but the Ray cluster has 0 after waiting 1\.5 s"):
        check_resources(space, wait_s=1.5, poll_s=0.2, say=said.append)
    assert time.monotonic() - started >= 1.5
    assert said and "waiting up to 1.5 s" in said[0]
    with pytest.raises(SupuqError, match="--wait-for-resources"):  # no wait: fails at once and names the option
        check_resources(space)
    assert check_resources(cpu_only, wait_s=5) is False  # nothing missing: no request left standing


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
    monkeypatch.chdir(tmp_path)
    space = write_space(
        tmp_path, num_samples=2, points_to_evaluate=[{"train.inject_nan_at_epoch": 1}, {"train.inject_nan_at_epoch": None}]
    )
    data = yaml.safe_load(space.read_text())
    data["space"]["train.inject_nan_at_epoch"] = {"choice": [None, 1]}
    space.write_text(yaml.safe_dump(data))
    opts = sweep_options(tmp_path, "nan", space)
    out = run_sweep(opts)
    statuses = sorted(t["status"] for t in out.trials)
    assert statuses == ["ERROR", "TERMINATED"]
    runs = {r.info.status for r in children(opts.tracking_uri, out.parent_run_id)}
    assert runs == {"FAILED", "FINISHED"}
    assert out.best is not None and out.best["params"].get("train.inject_nan_at_epoch") is None


def test_resume_after_sigkill_of_the_driver(tmp_path):
    """SIGKILL the driver and every process of the local Ray it started (as a crashed machine would) while the
    sweep is half done, then `--resume`: each trial ends with exactly one child run, all FINISHED."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = write_space(tmp_path, num_samples=3)
    data = yaml.safe_load(space.read_text())
    data["max_concurrent"] = 1
    data["scheduler"] = {"type": "none"}
    space.write_text(yaml.safe_dump(data))
    # 8 epochs (a checkpoint each) make a trial last a few polls, so the kill lands between trials or inside one.
    overrides = [x for o in TINY_OVERRIDES + ["train.epochs=8"] for x in ("--set", o)]
    cmd = [sys.executable, "-m", "supuq.cli", "sweep", "--dataset", "synthetic", "--config",
           str(ROOT / "configs/synthetic.yaml"), "--space", str(space), "--storage", str(tmp_path / "rr"),
           "--tracking-uri", uri, "--name", "killed", *overrides]
    # Ray's workers leave the driver's process group; this marker in their inherited environment finds them.
    token = secrets.token_hex(8)
    marker = f"SUPUQ_TEST_KILL={token}"
    env = {**os.environ, "RAY_ADDRESS": "", "SUPUQ_TEST_KILL": token}
    log = open(tmp_path / "driver.log", "w")
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, start_new_session=True, stdout=log, stderr=log)
    state = tmp_path / "rr" / "killed" / "supuq_sweep.json"
    at_kill: list[tuple[str, str]] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            time.sleep(0.25)
            if state.is_file():  # written after the driver created the store: polling earlier could race it
                parent = json.loads(state.read_text())["parent_run_id"]
                at_kill = [(r.data.tags.get("supuq.trial_id", ""), r.info.status) for r in children(uri, parent)]
                if any(status == "FINISHED" for _, status in at_kill):
                    break
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver, and the raylet and GCS it started
        driver.wait()
        kill_processes_with_env(marker.encode())  # the trial workers
    logged = (tmp_path / "driver.log").read_text()[-3000:]
    finished_at_kill = sum(status == "FINISHED" for _, status in at_kill)
    assert 1 <= finished_at_kill < 3, f"the kill should land mid-sweep, children were {at_kill}: {logged}"
    resumed = subprocess.run(
        [sys.executable, "-m", "supuq.cli", "sweep", "--resume", "killed", "--storage", str(tmp_path / "rr"),
         "--tracking-uri", uri], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
    )
    kill_processes_with_env(marker.encode())  # nothing should be left; never leave a stray worker behind
    said = resumed.stdout[-3000:] + resumed.stderr[-2000:]
    assert resumed.returncode == 0, said
    parents = tracking.search_runs(uri, None, "tags.`supuq.kind` = 'sweep'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    runs = children(uri, parents[0].info.run_id)
    described = [(r.data.tags["supuq.trial_id"], r.info.status, r.data.tags.get("supuq.stop_reason")) for r in runs]
    trial_ids = [r.data.tags["supuq.trial_id"] for r in runs]
    # one child per trial, no duplicates, every one complete
    assert len(runs) == 3 and len(set(trial_ids)) == 3, (described, at_kill, said)
    assert all(r.info.status == "FINISHED" for r in runs), (described, at_kill, said)
    assert all(r.data.metrics.get("val/ged") is not None for r in runs)


@pytest.mark.parametrize(
    "content, needle",
    [("space:\n  loss.beta: {gaussian: [0, 1]}\n", "unknown distribution 'gaussian'"),
     ("space:\n  loss.betta: {uniform: [0, 1]}\n", "'loss.betta' is not a config key"),
     ("space:\n  optim.lr: {loguniform: [0, 1]}\n", "must be positive"),
     ("metric: val/ged\nspace: {}\n", "space is empty")],
)
def test_bad_space_file_is_a_one_line_error(tmp_path, content, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        load_space(path)
    result = runner.invoke(app, ["sweep", "--space", str(path), "--storage", str(tmp_path)])
    assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output


def test_unknown_dataset_and_missing_gpus_exit_2(tmp_path, monkeypatch, ray_session):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["sweep", "--dataset", "mnist"])
    assert result.exit_code == 2 and "unknown dataset 'mnist'" in result.output
    space = write_space(tmp_path)
    result = runner.invoke(app, ["sweep", "--config", str(ROOT / "configs/synthetic.yaml"), "--space", str(space),
                                 "--gpus-per-trial", "1", "--storage", str(tmp_path / "rr"),
                                 "--tracking-uri", f"sqlite:///{tmp_path}/m.db", *sum((["--set", o] for o in TINY_OVERRIDES), [])])
    assert result.exit_code == 2 and "GPU" in result.output and "Traceback" not in result.output


def test_lidc_toolbox_prepare_then_sweep_with_the_cli_alone(tmp_path, monkeypatch, toolbox_sample, ray_session):
    """The real LIDC toolbox sample: `supuq data prepare lidc-toolbox`, then `supuq sweep --dataset lidc-toolbox`
    on that cache with configs/lidc.yaml and sweep/lidc.yaml (the LIDC family's) and a tiny model. One epoch is
    below the space's ASHA grace period of 50: the grace period is clamped, with a line saying so."""
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "toolbox-cache"
    result = runner.invoke(app, ["data", "prepare", "lidc-toolbox", "--root", str(toolbox_sample), "--out", str(cache),
                                 "--set", "data.crop=32"])
    assert result.exit_code == 0, result.output
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tiny = [o for o in TINY_OVERRIDES if not o.startswith(("data.synthetic", "train.epochs"))]
    sets = [x for o in tiny + ["train.epochs=1", "data.crop=32", f"data.cache={cache}"] for x in ("--set", o)]
    result = runner.invoke(app, ["sweep", "--dataset", "lidc-toolbox", "--samples", "2", "--concurrent", "2",
                                 "--cpus-per-trial", "1", "--gpus-per-trial", "0", "--storage", str(tmp_path / "rr"),
                                 "--tracking-uri", uri, "--name", "tb", *sets])
    assert result.exit_code == 0, result.output
    assert "ASHA grace period 50 is above the sweep's 1 epoch(s): using 1" in result.output
    best = yaml.safe_load((tmp_path / "rr" / "tb" / "best.yaml").read_text())
    assert best["data"]["dataset"] == "lidc-toolbox" and best["data"]["cache"] == str(cache)
    parent = tracking.search_runs(uri, [tracking.experiment_name("lidc-toolbox")], "tags.`supuq.kind` = 'sweep'")
    assert len(parent) == 1 and parent[0].data.tags["supuq.complete"] == "true"
    runs = children(uri, parent[0].info.run_id)
    assert len(runs) == 2 and all(r.info.status == "FINISHED" and "val/ged" in r.data.metrics for r in runs)
    # the first point is configs/lidc.yaml's Table 1 values (lr 1e-6, gamma 100), not another dataset's
    assert any(float(r.data.params["optim.lr"]) == 1e-6 and float(r.data.params["loss.gamma"]) == 100.0 for r in runs)
    # best.yaml (the driver, on Tune's trials) and `supuq best` (on MLflow's runs) name the same trial
    assert best_trial(uri, "lidc-toolbox", "tb").run_id == parent[0].data.tags["supuq.best_run"]


def test_grace_period_is_clamped_to_the_sweeps_epochs():
    space = load_space(ROOT / "sweep/synthetic.yaml")  # grace period 2
    said: list[str] = []
    assert grace_period(space, 1, said.append) == 1
    assert said == ["ASHA grace period 2 is above the sweep's 1 epoch(s): using 1 (no trial is stopped before its "
                    "last epoch)"]
    assert grace_period(space, 5, said.append) == 2 and len(said) == 1


def test_shipped_spaces_validate_and_start_with_table1():
    from supuq.config import load_config

    for name in ("synthetic", "lidc", "miccai2012", "qubiq"):
        space = load_space(ROOT / "sweep" / f"{name}.yaml")
        assert {"loss.beta", "loss.gamma", "model.weight_noise.prior", "model.weight_noise.prior_std",
                "optim.lr"} <= set(space.space)
        first = space.first_points(load_config(ROOT / "configs" / f"{name}.yaml"))[0]
        if name == "lidc":
            assert first == {"loss.beta": 1.0, "loss.gamma": 100.0, "model.weight_noise.prior": "gaussian",
                             "model.weight_noise.prior_std": 1.0, "optim.lr": 1e-6}
