"""supuq.sweep.driver on real Ray Tune + Optuna + ASHA with real MLflow (sqlite), small: trials as child runs, the
best trial, resume after SIGKILL of the driver or Ctrl-C, the objective, and one-line errors for bad input. Its
helpers (a space file, sweep options, a killable driver process) are shared by the other sweep tests."""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from supuq import tracking
from supuq.cli import app
from supuq.config import Config, load_config, validate_config
from supuq.models.registry import METHODS
from supuq.sweep.selection import best_trial
from supuq.sweep.space import load_space
from supuq.sweep.driver import SweepOptions, grace_period, run_sweep

from ..conftest import ROOT, TINY_OVERRIDES
from ..processes import kill_processes_with_env

runner = CliRunner()


def write_space(folder: Path, num_samples: int = 2, **extra) -> Path:
    space = {
        "metric": "val/ged", "mode": "min", "num_samples": num_samples, "max_concurrent": 2,
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "resources": {"cpu": 1, "gpu": 0},
        "space": {"loss.beta": {"loguniform": [0.1, 10.0]}, "loss.gamma": {"loguniform": [1.0, 10000.0]},
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


def steps_of(uri: str, run_id: str, key: str) -> list[int]:
    return [m.step for m in tracking.client_for(uri).get_metric_history(run_id, key)]


def full_length_best(uri: str, parent: str, epochs: int, metric: str = "val/ged", mode: str = "min"):
    """The best trial by the stated rule, computed here from MLflow alone (not through supuq.sweep.selection):
    the child run with the best final `metric` among those whose train/total history reached `epochs` (an
    ASHA-stopped trial's early value is not comparable with a full run's)."""
    full = [r for r in children(uri, parent)
            if max(steps_of(uri, r.info.run_id, "train/total"), default=0) == epochs
            and math.isfinite(r.data.metrics.get(metric, math.nan))]
    assert full, f"no trial of {parent} ran all {epochs} epochs with a {metric} value"
    sign = 1 if mode == "min" else -1
    return min(full, key=lambda r: sign * r.data.metrics[metric])


def said_best(output: str, run) -> bool:
    """Whether `supuq best` named `run` as the best trial (rich may wrap the line: compare words)."""
    words = " ".join(output.split())
    return f"{run.info.run_name} (" in words and f"run {run.info.run_id})" in words


def trial_config(run) -> Config:
    return validate_config(json.loads(run.data.tags["supuq.config"]))


# ------------------------------------------------------------ a sweep driver in its own process, killable


def cli_sweep(tmp_path: Path, name: str, space: Path, overrides: list[str]) -> list[str]:
    sets = [x for o in TINY_OVERRIDES + overrides for x in ("--set", o)]
    return [sys.executable, "-m", "supuq.cli", "sweep", "--dataset", "synthetic", "--config",
            str(ROOT / "configs/synthetic.yaml"), "--space", str(space), "--storage", str(tmp_path / "rr"),
            "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--name", name, *sets]


@contextmanager
def sweep_process(tmp_path: Path, command: list[str]):
    """Run `command` (a `supuq sweep`) as a session of its own with a local Ray it starts; yields
    (process, environment for later commands). On exit every process of that Ray is gone: the driver's group
    (driver, raylet, GCS) by SIGKILL if still there, and Ray's workers, which leave the driver's process group,
    by a marker in the environment they inherit."""
    token = secrets.token_hex(8)
    env = {**os.environ, "RAY_ADDRESS": "", "SUPUQ_TEST_KILL": token}
    with open(tmp_path / "driver.out", "w") as out, open(tmp_path / "driver.err", "w") as err:
        driver = subprocess.Popen(command, cwd=tmp_path, env=env, start_new_session=True, stdout=out, stderr=err)
    try:
        yield driver, env
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
        try:
            os.killpg(driver.pid, signal.SIGKILL)  # what the driver's group still holds (raylet, GCS)
        except ProcessLookupError:
            pass
        kill_processes_with_env(f"SUPUQ_TEST_KILL={token}".encode())


def sweep_state(tmp_path: Path, name: str) -> dict | None:
    """The sweep's state file (written after the driver created its MLflow store and parent run)."""
    state = tmp_path / "rr" / name / "supuq_sweep.json"
    return json.loads(state.read_text()) if state.is_file() else None


def driver_log(tmp_path: Path) -> str:
    return (tmp_path / "driver.out").read_text()[-2000:] + (tmp_path / "driver.err").read_text()[-2000:]


def test_two_trial_sweep_then_best_and_retrain(tmp_path, monkeypatch, ray_session):
    """The sweep, its best trial (best.yaml, the parent's tags, `supuq best`: one trial, chosen by the rule in
    `full_length_best`), and `supuq best --retrain` of that very trial with a baseline tuned by its own sweep
    (`--baseline-sweep kohl=...`), written under the caller's working directory."""
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
    # The paper's first point (the base config's values) was evaluated first: Tune numbers its trials in the
    # order the searcher suggested them, in each trial folder's name (<trainable>_<trial id>_<number>_<params>).
    def number(trial: dict) -> int:
        return int(re.search(rf"_{re.escape(trial['trial_id'])}_(\d+)_", Path(trial["path"]).name).group(1))

    assert sorted(number(t) for t in out.trials) == [1, 2]
    first = min(out.trials, key=number)
    base = load_config(ROOT / "configs/synthetic.yaml", TINY_OVERRIDES).flat()
    assert set(first["params"]) == set(yaml.safe_load((tmp_path / "space.yaml").read_text())["space"])
    for key, value in first["params"].items():
        same = value == base[key] if isinstance(value, str) else math.isclose(value, base[key], rel_tol=1e-12)
        assert same, (key, value, base[key])
    assert (tmp_path / "ray_results" / "s2" / "best.yaml").is_file()

    # One best trial everywhere: the tags of the parent run, best.yaml (that trial's config) and `supuq best`.
    # (Needs the one best-trial rule in supuq/sweep/selection.py: before it, `supuq best` also ranked an
    # ASHA-stopped trial's epoch-1 value and this fails whenever that value is the lowest.)
    best = full_length_best(uri, out.parent_run_id, epochs=2)
    parent = tracking.get_run(uri, out.parent_run_id)
    assert parent.data.tags["supuq.best_run"] == best.info.run_id
    assert parent.data.tags["supuq.best_trial"] == best.data.tags["supuq.trial_id"]
    best_yaml = load_config(tmp_path / "ray_results" / "s2" / "best.yaml")
    assert best_yaml == trial_config(best)
    result = runner.invoke(app, ["best", "--dataset", "synthetic", "--sweep", "s2", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert said_best(result.output, best), (best.info.run_name, result.output)
    assert f"val/ged = {best.data.metrics['val/ged']:.4f}" in result.output

    # A baseline tuned by its own (one-trial) sweep, with values the supervised sweep cannot have chosen.
    (tmp_path / "kohl").mkdir()
    kohl_space = write_space(tmp_path / "kohl", num_samples=1, scheduler={"type": "none"},
                             space={"loss.beta": {"loguniform": [0.1, 10.0]}, "optim.lr": {"loguniform": [1e-4, 3e-3]}})
    kohl_opts = sweep_options(tmp_path, "k1", kohl_space)
    kohl_opts.overrides += ["model.method=kohl", "model.weight_noise.enabled=false", "loss.gamma=0",
                            "loss.beta=3.3", "optim.lr=0.0021"]
    kohl_sweep = run_sweep(kohl_opts)
    (kohl_trial,) = children(uri, kohl_sweep.parent_run_id)
    kohl_cfg = trial_config(kohl_trial)
    assert kohl_cfg.model.method == "kohl" and kohl_cfg.optim.lr == 0.0021 and kohl_cfg.loss.beta == 3.3
    for wrong, message in (("kohl=s2", "tuned method 'supervised', not 'kohl'"),
                           ("unet=k1", "expected kohl=SWEEP or kendall_gal=SWEEP")):
        result = runner.invoke(app, ["best", "--sweep", "s2", "--retrain", "--baseline-sweep", wrong,
                                     "--tracking-uri", uri])
        assert result.exit_code == 2 and message in result.output, result.output

    result = runner.invoke(app, ["best", "--sweep", "s2", "--retrain", "--seeds", "2", "--samples", "4",
                                 "--baseline-sweep", "kohl=k1", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "Table 2" in result.output and "Table 3" in result.output and "2 seed(s)" in result.output
    retrains = tracking.search_runs(uri, None, "tags.`supuq.kind` = 'retrain'")
    assert len(retrains) == 1
    assert retrains[0].data.tags["supuq.best_trial_run"] == best.info.run_id  # the trial best.yaml holds
    assert retrains[0].data.tags["supuq.sweep_name.kohl"] == "k1"
    seeds = children(uri, retrains[0].info.run_id)
    assert len(seeds) == 2 * len(METHODS) and all(r.info.status == "FINISHED" for r in seeds)  # every method x 2
    assert all("test/ged" in r.data.metrics and "test/hm_iou_16" in r.data.metrics for r in seeds)
    for method in METHODS:
        assert f"{method}/ged_mean" in retrains[0].data.metrics and f"{method}/ged_std" in retrains[0].data.metrics
    # Each seed trained its method's chosen config (the retrain sets only the seed, train+val and the sample
    # grid), in the caller's runs/retrain/ folder although Ray's workers run elsewhere.
    # (a baseline without a sweep of its own: the best config with that method's fixed settings)
    chosen = {m: best_yaml.with_method(m) for m in METHODS if m not in ("supervised", "kohl")}
    chosen.update(supervised=best_yaml, kohl=kohl_cfg)
    owned = {"train.seed", "train.train_on_val", "eval.weight_samples", "eval.latent_samples"}
    folders = sorted((tmp_path / "runs" / "retrain").glob("synthetic-*/*-seed*"))
    assert sorted(f.name for f in folders) == sorted(f"{m}-seed{s}" for m in chosen for s in (0, 1)), folders
    for folder in folders:
        ran = load_config(folder / "config.yaml")
        assert (folder / "eval.json").is_file() and ran.train.train_on_val and f"-seed{ran.train.seed}" in folder.name
        want = {k: v for k, v in chosen[ran.model.method].flat().items() if k not in owned}
        assert {k: v for k, v in ran.flat().items() if k not in owned} == want, folder.name


def test_resume_after_sigkill_of_the_driver(tmp_path):
    """SIGKILL the driver and every process of the local Ray it started (as a crashed machine would) while the
    sweep is half done, then `--resume`: each trial ends with exactly one child run, all FINISHED."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = write_space(tmp_path, num_samples=3, max_concurrent=1, scheduler={"type": "none"})
    # 8 epochs (a checkpoint each) make a trial last a few polls, so the kill lands between trials or inside one.
    at_kill: list[tuple[str, str]] = []
    with sweep_process(tmp_path, cli_sweep(tmp_path, "killed", space, ["train.epochs=8"])) as (driver, env):
        deadline = time.time() + 240
        while time.time() < deadline and driver.poll() is None:
            time.sleep(0.25)
            state = sweep_state(tmp_path, "killed")  # polling before the state file exists could race the store
            if state is not None:
                at_kill = [(r.data.tags.get("supuq.trial_id", ""), r.info.status)
                           for r in children(uri, state["parent_run_id"])]
                if any(status == "FINISHED" for _, status in at_kill):
                    break
    logged = driver_log(tmp_path)
    finished_at_kill = sum(status == "FINISHED" for _, status in at_kill)
    assert 1 <= finished_at_kill < 3, f"the kill should land mid-sweep, children were {at_kill}: {logged}"
    resumed = subprocess.run(
        [sys.executable, "-m", "supuq.cli", "sweep", "--resume", "killed", "--storage", str(tmp_path / "rr"),
         "--tracking-uri", uri], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=400,
    )
    kill_processes_with_env(f"SUPUQ_TEST_KILL={env['SUPUQ_TEST_KILL']}".encode())  # never leave a stray worker
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
    # every epoch once in each run: a trial resumed from its checkpoint does not log again what it had logged
    for run in runs:
        assert sorted(steps_of(uri, run.info.run_id, "train/total")) == list(range(1, 9)), described
    # the bar counts the trials finished before the kill (Tune does not report them again): it ends at 3 of 3
    assert re.search(r"\b3/3\b", resumed.stdout), resumed.stdout[-3000:]
    # the killed trial's work folder (its process died with the driver) went with the resumed sweep
    assert not list(Path(tempfile.gettempdir()).glob("supuq-trial-killed-*"))


def interrupt_mid_trial(tmp_path: Path, name: str, space: Path, epochs: int):
    """Start `supuq sweep` and press Ctrl-C (SIGINT to the driver's process group, as a terminal does) once its
    first trial has logged an epoch; returns (driver process, its environment, the sweep state) after it exits."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with sweep_process(tmp_path, cli_sweep(tmp_path, name, space, [f"train.epochs={epochs}"])) as (driver, env):
        deadline, state, running = time.time() + 240, None, False
        while not running and time.time() < deadline and driver.poll() is None:
            time.sleep(0.25)
            state = sweep_state(tmp_path, name)
            runs = children(uri, state["parent_run_id"]) if state else []
            running = bool(runs) and bool(steps_of(uri, runs[0].info.run_id, "train/total"))
        if not running:
            pytest.fail(f"no trial started: {driver_log(tmp_path)}")
        os.killpg(driver.pid, signal.SIGINT)
        try:
            driver.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the driver did not stop within 120 s of SIGINT: {driver_log(tmp_path)}")
    return driver, env, state


def test_ctrl_c_exits_130_with_a_resume_hint_that_resumes(tmp_path):
    """Ctrl-C while the first of two trials runs: exit code 130, and stderr says how to continue in one line;
    that very command finishes the sweep."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = write_space(tmp_path, num_samples=2, max_concurrent=1, scheduler={"type": "none"})
    driver, env, state = interrupt_mid_trial(tmp_path, "ctrl-c", space, epochs=4)
    errors = (tmp_path / "driver.err").read_text()
    assert driver.returncode == 130, (driver.returncode, driver_log(tmp_path))
    hint = next((line for line in errors.splitlines() if "continue it with: " in line), None)
    assert hint is not None and re.match(r"sweep ctrl-c stopped after \d of 2 trials; ", hint), errors[-3000:]
    command = hint.split("continue it with: ", 1)[1].split()
    assert command == ["supuq", "sweep", "--resume", "ctrl-c", "--storage", str(tmp_path / "rr")], hint
    parent = tracking.get_run(uri, state["parent_run_id"])
    assert parent.info.status == "KILLED" and parent.data.tags["supuq.complete"] == "false"

    resumed = subprocess.run([sys.executable, "-m", "supuq.cli", *command[1:]], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=400)
    kill_processes_with_env(f"SUPUQ_TEST_KILL={env['SUPUQ_TEST_KILL']}".encode())
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-2000:]
    parent = tracking.get_run(uri, state["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.tags["supuq.complete"] == "true"
    runs = children(uri, state["parent_run_id"])
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs), \
        [(r.info.status, r.data.tags.get("supuq.stop_reason")) for r in runs]
    assert all(max(steps_of(uri, r.info.run_id, "val/ged")) == 4 for r in runs)


def test_ncc_objective_picks_the_highest_validation_ncc(tmp_path, monkeypatch, ray_session):
    """`supuq sweep --objective ncc`: the sweep maximises val/ncc; best.yaml, the parent's tags and `supuq best`
    (which reads the objective from the sweep) all name the trial with the highest final NCC."""
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, num_samples=2, scheduler={"type": "none"})
    sets = [x for o in TINY_OVERRIDES for x in ("--set", o)]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = runner.invoke(app, ["sweep", "--dataset", "synthetic", "--config", str(ROOT / "configs/synthetic.yaml"),
                                 "--space", str(space), "--objective", "ncc", "--storage", str(tmp_path / "rr"),
                                 "--tracking-uri", uri, "--name", "by-ncc", *sets])
    assert result.exit_code == 0, result.output
    state = sweep_state(tmp_path, "by-ncc")
    assert (state["space_raw"]["metric"], state["space_raw"]["mode"]) == ("val/ncc", "max")
    parent = tracking.get_run(uri, state["parent_run_id"])
    assert parent.data.tags["supuq.objective"] == "ncc"
    best = full_length_best(uri, state["parent_run_id"], epochs=2, metric="val/ncc", mode="max")
    assert parent.data.tags["supuq.best_run"] == best.info.run_id
    assert load_config(tmp_path / "rr" / "by-ncc" / "best.yaml") == trial_config(best)
    result = runner.invoke(app, ["best", "--sweep", "by-ncc", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert said_best(result.output, best) and f"val/ncc = {best.data.metrics['val/ncc']:.4f}" in result.output


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


@pytest.mark.parametrize("method, space", [
    ("ssn", {"model.ssn_rank": {"choice": [1, 3]}, "loss.ssn_samples": {"choice": [2, 4]}}),
    ("phiseg", {"loss.beta": {"loguniform": [0.1, 10.0]}, "model.phiseg_levels": {"choice": [1, 2]}}),
    ("soft_label", {"optim.lr": {"loguniform": [1e-4, 3e-3]}}),
])
def test_sweep_of_each_new_method_by_set(tmp_path, monkeypatch, ray_session, method, space):
    """`supuq sweep --set model.method=...` for the methods added beside the paper's: every trial trains that
    method (its MLflow params say so) on its own search keys, and `supuq best` answers for it."""
    monkeypatch.chdir(tmp_path)
    path = write_space(tmp_path, num_samples=2, scheduler={"type": "none"})
    raw = yaml.safe_load(path.read_text())
    raw["space"] = space
    path.write_text(yaml.safe_dump(raw))
    sets = [x for o in (*TINY_OVERRIDES, f"model.method={method}") for x in ("--set", o)]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = runner.invoke(app, ["sweep", "--dataset", "synthetic", "--config", str(ROOT / "configs/synthetic.yaml"),
                                 "--space", str(path), "--storage", str(tmp_path / "rr"), "--tracking-uri", uri,
                                 "--name", f"by-{method}", *sets])
    assert result.exit_code == 0, result.output
    runs = children(uri, sweep_state(tmp_path, f"by-{method}")["parent_run_id"])
    assert len(runs) == 2 and {r.data.params["model.method"] for r in runs} == {method}
    assert all(math.isfinite(r.data.metrics["val/ged"]) and "val/ncc" in r.data.metrics for r in runs)
    assert {key for r in runs for key in space} <= set(runs[0].data.params)
    result = runner.invoke(app, ["best", "--sweep", f"by-{method}", "--tracking-uri", uri])
    assert result.exit_code == 0 and "val/ged = " in result.output, result.output
