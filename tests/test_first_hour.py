"""A researcher's first hour: what `supuq train`, `evaluate`, `sweep`, `best --retrain`, `ui` and `results` leave
in MLflow and print, on real MLflow (sqlite), real Ray Tune and tiny generated data.

- an ASHA early stop ends FINISHED with who stopped it and when; the sweep parent holds the search space and
  the best trial as params and a description; each trial run a one-line description;
- evaluations keep their bookkeeping (images, the M x K grid) out of the metric charts; a retrain's seed runs
  name their validation curves trainval/ (they trained on those images); the retrain's Table 2/3 is its
  description;
- `supuq evaluate` gives the same numbers on every call, the numbers `train` logged, and names its row by run;
- the retrain's progress moves by epochs across jobs; the sweep bar shows each running trial's epochs;
- `supuq ui --print-links` prints the runs-table URLs without starting a server;
- `supuq results` writes paths relative to the working directory.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from supuq import tracking
from supuq.checkpoint import CHECKPOINT_NAME
from supuq.cli import app
from supuq.config import load_config
from supuq.evaluate import SETUP_KEYS
from supuq.sweep.driver import SweepOptions, run_sweep
from supuq.sweep.results import TrialProgress
from supuq.workflows.retrain import EpochCounter, retrain
from supuq.workflows.single import reevaluate
from supuq.workflows.tables import to_markdown

from .conftest import ROOT, TINY_OVERRIDES

runner = CliRunner()


def bookkeeping_metrics(run) -> list[str]:
    return [key for key in run.data.metrics if key.rsplit("/", 1)[-1] in SETUP_KEYS]


def test_train_then_evaluate_gives_the_same_numbers_and_names_the_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sets = [arg for item in TINY_OVERRIDES for arg in ("--set", item)]
    result = runner.invoke(app, ["train", *sets, "--tracking-uri", uri, "--out", str(tmp_path / "my-run")])
    assert result.exit_code == 0, result.output
    run_id = re.search(r"MLflow run id: ([0-9a-f]{32})", result.output).group(1)
    run = tracking.get_run(uri, run_id)
    # bookkeeping as tags, not metric charts; the description says what was trained and how it tested
    assert bookkeeping_metrics(run) == [] and "val/ged" in run.data.metrics and "test/ged" in run.data.metrics
    assert run.data.tags["test/weight_samples"] == "2" and run.data.tags["test/latent_samples"] == "2"
    assert int(run.data.tags["test/n_images"]) > 0 and int(run.data.tags["val/n_images"]) > 0
    assert run.data.tags["mlflow.note.content"].startswith("supervised, seed 0, 2 epochs on train; test GED "
                                                           f"{run.data.metrics['test/ged']:.4f}")

    evaluate = ["evaluate", run_id, "--samples", "4", "--weight-samples", "2", "--tracking-uri", uri]
    first, second = runner.invoke(app, evaluate), runner.invoke(app, evaluate)
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    rows = [next(line for line in out.output.splitlines() if run_id[:8] in line) for out in (first, second)]
    assert rows[0] == rows[1] and rows[0].lstrip().startswith(f"supervised-seed0 ({run_id[:8]})")
    again = tracking.get_run(uri, run_id)
    # the default seed is the one train tested with: 4 samples on the same grid give train's test numbers
    for key in ("ged", "ncc", "ncc_excluded", "diversity", "brier", "ece", "aleatoric"):
        assert again.data.metrics[f"test4/{key}"] == pytest.approx(run.data.metrics[f"test/{key}"], abs=1e-6,
                                                                   nan_ok=True), key
    assert bookkeeping_metrics(again) == [] and again.data.tags["test4/n_images"] == run.data.tags["test/n_images"]

    by_file = runner.invoke(app, ["evaluate", str(tmp_path / "my-run" / CHECKPOINT_NAME), "--samples", "4",
                                  "--weight-samples", "2", "--seed", "3"])
    assert by_file.exit_code == 0, by_file.output
    assert any(line.lstrip().startswith("my-run ") for line in by_file.output.splitlines()), by_file.output
    assert CHECKPOINT_NAME not in by_file.output

    seen = []
    done = reevaluate(str(tmp_path / "my-run" / CHECKPOINT_NAME), 4, 2, "test", progress=lambda *a: seen.append(a))
    n = done.result.n_images
    assert seen[-1] == (n, n) and [d for d, _ in seen] == sorted(d for d, _ in seen) and done.run_id is None


def test_retrain_progress_moves_by_epochs_and_its_runs_read_well(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = load_config(ROOT / "configs" / "synthetic.yaml", TINY_OVERRIDES)
    calls = []
    outcome = retrain(None, cfg, uri, seeds=2, samples=4, parallel=False, out_root=tmp_path / "retrain",
                      progress=lambda *args: calls.append(args))
    # 2 seeds x 2 epochs: the bar starts at 0 and moves after every epoch, before any job has ended
    assert calls[:2] == [(0, 4, 0, 2), (1, 4, 0, 2)] and calls[-1] == (4, 4, 2, 2)
    assert [c[0] for c in calls] == sorted(c[0] for c in calls)

    parent = tracking.get_run(uri, outcome.parent_run_id)
    description = parent.data.tags["mlflow.note.content"]
    assert description == to_markdown(outcome.tables, level=3) and description.startswith("### Results on synthetic")
    assert "| Ours" in description and "#### Table 2: GED" in description  # the Table 2/3 markdown itself
    seeds = tracking.child_runs(uri, outcome.parent_run_id)
    assert len(seeds) == 2
    for run in seeds:
        # trained on train+val: the validation images' curves are named for what they are
        assert "trainval/ged" in run.data.metrics and not any(k.startswith("val/") for k in run.data.metrics)
        assert bookkeeping_metrics(run) == [] and "trainval/n_images" in run.data.tags
        assert "on train+val" in run.data.tags["mlflow.note.content"]

    # the parallel retrain's progress reads the same epochs back from MLflow (Ray tasks run elsewhere)
    polled = []
    counter = EpochCounter(uri, outcome.parent_run_id, {"supervised-seed0": 2, "supervised-seed1": 2},
                           progress=lambda *args: polled.append(args))
    counter.poll()
    assert polled == [(4, 4, 0, 2)]


def test_sweep_bar_shows_each_running_trials_epochs():
    bar = TrialProgress(3, "val/ged", "min", 4)
    for tid in ("exp_00000", "exp_00001"):
        bar.on_trial_start(0, [], SimpleNamespace(trial_id=tid))
    bar.on_trial_result(0, [], SimpleNamespace(trial_id="exp_00000"), {"val/ged": 0.5, "epoch": 3})
    bar.on_trial_result(0, [], SimpleNamespace(trial_id="exp_00001"), {"val/ged": 0.6, "epoch": 1})
    assert bar.done() == pytest.approx(1.0)  # 3/4 + 1/4 of a trial
    assert bar.info() == ["best val/ged 0.5000 (no trial at 4 epochs yet)", "running 00000 3/4, 00001 1/4"]
    bar.on_trial_result(0, [], SimpleNamespace(trial_id="exp_00000"), {"val/ged": 0.4, "epoch": 4})
    bar.on_trial_complete(0, [], SimpleNamespace(trial_id="exp_00000"))
    assert bar.done() == pytest.approx(1.25) and bar.info() == ["best val/ged 0.4000", "running 00001 1/4"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, ray_session):
    """A real 3-trial sweep (Ray Tune + Optuna + ASHA, up to 4 epochs) in a fresh sqlite store."""
    tmp = tmp_path_factory.mktemp("first_hour")
    space = {"metric": "val/ged", "mode": "min", "num_samples": 3, "max_concurrent": 2,
             "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
             "resources": {"cpu": 1, "gpu": 0},
             "space": {"loss.beta": {"loguniform": [0.1, 10.0]}, "optim.lr": {"loguniform": [1e-4, 3e-3]}}}
    (tmp / "space.yaml").write_text(yaml.safe_dump(space))
    opts = SweepOptions(dataset="synthetic", config=ROOT / "configs/synthetic.yaml", space=tmp / "space.yaml",
                        overrides=[*TINY_OVERRIDES, "train.epochs=4"], storage=str(tmp / "ray_results"),
                        tracking_uri=f"sqlite:///{tmp}/mlflow.db", name="fh")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)  # the dataset cache lands here
        return {"tmp": tmp, "uri": opts.tracking_uri, "outcome": run_sweep(opts)}


def test_sweep_runs_say_how_they_ended_and_the_parent_holds_the_search(sweep):
    uri, outcome = sweep["uri"], sweep["outcome"]
    parent = tracking.get_run(uri, outcome.parent_run_id)
    params = parent.data.params
    assert params["space.loss.beta"] == "loguniform [0.1, 10.0]" and params["space.optim.lr"].startswith("loguniform")
    assert params["sweep.metric"] == "val/ged" and params["sweep.scheduler"] == "asha"
    best = outcome.best
    assert params["best.trial_id"] == best["trial_id"] and params["best.run_id"] == best["run_id"]
    assert float(params["best.loss.beta"]) == pytest.approx(best["params"]["loss.beta"])
    assert parent.data.metrics["best/val/ged"] == pytest.approx(best["metrics"]["val/ged"])
    description = parent.data.tags["mlflow.note.content"]
    assert f"Best trial `{best['trial_id']}`" in description and "| loss.beta | loguniform [0.1, 10.0] |" in description

    runs = tracking.child_runs(uri, outcome.parent_run_id)
    epochs = {t["run_id"]: t["epochs"] for t in outcome.trials}
    assert len(runs) == 3
    for run in runs:
        tags, reached = run.data.tags, epochs[run.info.run_id]
        assert run.info.status == "FINISHED", (run.info.status, tags.get("supuq.stop_reason"))
        assert (tags.get("supuq.stopped_by") == "asha") == (reached < 4)
        if reached < 4:
            assert tags["supuq.stopped_at_epoch"] == str(reached)
            assert tags["supuq.stop_reason"] == f"stopped early by ASHA at epoch {reached} of 4"
        assert re.fullmatch(rf"beta=\S+ lr=\S+; val/ged \S+ at epoch {reached} of 4.*", tags["mlflow.note.content"])
        assert bookkeeping_metrics(run) == []
    assert outcome.stopped_early == sum(e < 4 for e in epochs.values())
    assert parent.data.tags["supuq.asha_stopped"] == str(outcome.stopped_early)


def test_ui_print_links_names_each_runs_table_and_starts_no_server(sweep):
    result = runner.invoke(app, ["ui", "--print-links", "--port", "5123", "--tracking-uri", sweep["uri"]])
    assert result.exit_code == 0, result.output
    assert f"supuq ui --port 5123 --tracking-uri {sweep['uri']}" in result.output
    assert "supuq/synthetic: http://127.0.0.1:5123/#/experiments/1/runs?workflowType=machine_learning" in result.output
    empty = runner.invoke(app, ["ui", "--print-links", "--tracking-uri", f"sqlite:///{sweep['tmp']}/empty.db"])
    assert empty.exit_code == 0 and "no supuq experiment in" in empty.output


def test_results_writes_paths_relative_to_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    experiment = tracking.experiment_name("synthetic")
    tracking.init_store(uri, experiment)
    per_seed = {"supervised": [{"ged": 0.2 + i / 100, "ncc": 0.4, "ece": 0.01} for i in range(2)]}
    from supuq.workflows.tables import aggregate

    with tracking.tracked_run(uri, experiment, run_name="retrain", tags={"supuq.kind": "retrain"}) as run:
        run.log_text(json.dumps({"per_seed": per_seed, "summary": aggregate(per_seed), "ncc_common": {},
                                 "scale": {"seeds": 2, "epochs": 2, "image_px": 16}}), "results.json")
        run.log_text(f"data:\n  cache: {tmp_path}/data/synthetic-n48\n", "best_config.yaml")
    result = runner.invoke(app, ["results", run.run_id, "--out", "docs/results.md", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    text = (tmp_path / "docs" / "results.md").read_text()
    assert "(tracking store `sqlite:///mlflow/mlflow.db`)" in text and "  cache: data/synthetic-n48" in text
    assert str(tmp_path) not in text
