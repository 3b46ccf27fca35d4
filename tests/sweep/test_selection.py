"""One best-trial rule for every entry point (supuq.sweep.selection): a sweep where an ASHA-stopped trial has the
best early value and another trial had the best value at some epoch but not at its last. The driver's side (Tune
trial summaries) is checked on trial dicts; `supuq best`, its --baseline-sweep, the Pareto front, the report and
the study on a real MLflow store (sqlite) laid out the way the driver leaves one; the multi-objective sweep
(`--objective both`) on real Ray, its Pareto front and `supuq best --pick`."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from supuq import tracking
from supuq.cli import app
from supuq.config import load_config
from supuq.report import write_report
from supuq.sweep.driver import run_sweep
from supuq.sweep.results import finalize_child_runs
from supuq.sweep.selection import (
    best_of_sweep,
    best_row,
    best_trial,
    eligible_trials,
    pareto_front,
    pareto_trials,
    rank_trials,
    trial_rows,
)
from supuq.workflows.study import _learning_curves

from ..conftest import PNG, ROOT, TINY_OVERRIDES
from .test_driver import sweep_options, write_space

runner = CliRunner()
EPOCHS = 4
# trial id -> (val/ged per validation epoch, val/ncc at the last one, how it ended)
TRIALS = {
    "aaa": ([0.60, 0.50, 0.45, 0.40], 0.30, "FINISHED"),  # full length, best last value: the one to pick
    "bbb": ([0.40, 0.30], 0.90, "ASHA"),  # stopped by ASHA at epoch 2 with the best (early) value: FINISHED
    "ccc": ([0.50, 0.35, 0.41, 0.42], 0.50, "FINISHED"),  # full length, best value once (0.35), not at its end
    "ddd": ([0.55, math.nan, math.nan, math.nan], 0.20, "FINISHED"),  # NaN at the end never wins
}


def driver_rows(trials=TRIALS) -> list[dict]:
    """The trials as `sweep.results.summarize_trials` gives them to the driver (last reported values)."""
    return [{"trial_id": tid, "status": "TERMINATED", "epochs": len(geds),
             "metrics": {"val/ged": geds[-1], "val/ncc": ncc}, "params": {}} for tid, (geds, ncc, _) in trials.items()]


def test_driver_rule_on_trial_dicts():
    rows = driver_rows()
    best, full = best_row(rows, "val/ged", "min", EPOCHS)
    assert best["trial_id"] == "aaa" and full
    assert [r["trial_id"] for r in rank_trials(rows, "val/ged", "min", EPOCHS)] == ["aaa", "ccc", "bbb", "ddd"]
    pool, full = eligible_trials(rows, "val/ged", EPOCHS)
    assert {r["trial_id"] for r in pool} == {"aaa", "ccc"} and full
    # max mode ranks by the highest last value among the full-length trials (bbb's 0.9 is early)
    assert best_row(rows, "val/ncc", "max", EPOCHS)[0]["trial_id"] == "ccc"
    # nobody ran all epochs: the best of every scored trial, flagged
    short = [r for r in rows if r["trial_id"] == "bbb"] + [{**rows[0], "epochs": 3}]
    best, full = best_row(short, "val/ged", "min", EPOCHS)
    assert best["trial_id"] == "bbb" and not full
    assert best_row([{**rows[3]}], "val/ged", "min", EPOCHS) == (None, False)
    # ties go to the lower trial id whatever the order
    tied = [{**rows[0], "trial_id": "zzz"}, {**rows[0], "trial_id": "aab"}]
    assert best_row(tied, "val/ged", "min", EPOCHS)[0]["trial_id"] == "aab"
    assert best_row(tied[::-1], "val/ged", "min", EPOCHS)[0]["trial_id"] == "aab"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sweep parent run (supuq.kind=sweep, the base config with train.epochs=4 as params) and one child run per
    trial: supuq.config and supuq.trial_id tags, train/total at every epoch, val/ged and val/ncc at each
    validation epoch, the status and stop reason `finalize_child_runs` gives."""
    tmp = tmp_path_factory.mktemp("selection")
    uri = f"sqlite:///{tmp}/mlflow.db"
    experiment = tracking.experiment_name("synthetic")
    tracking.init_store(uri, experiment)
    base = load_config(ROOT / "configs" / "synthetic.yaml", TINY_OVERRIDES + [f"train.epochs={EPOCHS}"])
    tags = {"supuq.kind": "sweep", "supuq.dataset": "synthetic", "supuq.objective": "ged"}
    parent_id = tracking.create_run(uri, experiment, run_name="early", tags=tags)
    names = {}
    with tracking.tracked_run(uri, experiment, run_id=parent_id) as parent:
        parent.log_config(base)
        for number, (tid, (geds, ncc, status)) in enumerate(TRIALS.items()):
            cfg = base.updated({"loss.beta": 1.0 + number})
            with tracking.tracked_run(uri, experiment, run_name=f"trial_main_{tid}", parent_run_id=parent_id,
                                      tags={"supuq.trial_id": tid, "supuq.kind": "trial"}) as run:
                run.log_config(cfg)
                run.set_tags({"supuq.config": json.dumps(cfg.model_dump(mode="json"))})
                for epoch, ged in enumerate(geds, 1):
                    last = epoch == len(geds)
                    run.log_metrics({"train/total": 1.0 / epoch, "val/ged": ged, "val/ncc": ncc if last else 0.0},
                                    step=epoch)
                names[tid] = run.run_id
    # The driver's own closing step: bbb, stopped early, ends FINISHED like the full-length trials (only its
    # epochs tell them apart), with the tags saying ASHA stopped it.
    assert finalize_child_runs(uri, parent_id, driver_rows(), EPOCHS, complete=True) == 1
    return {"tmp": tmp, "uri": uri, "parent_id": parent_id, "runs": names}


def test_mlflow_rows_are_the_driver_rows(store):
    rows = trial_rows(store["uri"], store["parent_id"])
    assert {r["trial_id"]: r["epochs"] for r in rows} == {tid: len(g) for tid, (g, _, _) in TRIALS.items()}
    assert {r["trial_id"]: r["metrics"]["val/ged"] for r in rows if r["trial_id"] != "ddd"} == {
        tid: g[-1] for tid, (g, _, _) in TRIALS.items() if tid != "ddd"}


def test_an_asha_stop_ends_finished_saying_who_stopped_it_and_when(store):
    runs = {r.data.tags["supuq.trial_id"]: r for r in tracking.child_runs(store["uri"], store["parent_id"])}
    assert {tid: r.info.status for tid, r in runs.items()} == dict.fromkeys(TRIALS, "FINISHED")
    early = runs["bbb"].data.tags
    assert early["supuq.stopped_by"] == "asha" and early["supuq.stopped_at_epoch"] == "2"
    assert early["supuq.stop_reason"] == f"stopped early by ASHA at epoch 2 of {EPOCHS}"
    assert "supuq.stopped_by" not in runs["aaa"].data.tags
    # each trial's MLflow description is one line: its last metric, the epochs reached, how it ended
    assert runs["aaa"].data.tags["mlflow.note.content"] == f"val/ged 0.4000 at epoch {EPOCHS} of {EPOCHS}"
    assert early["mlflow.note.content"] == (f"val/ged 0.3000 at epoch 2 of {EPOCHS} "
                                            f"(stopped early by ASHA at epoch 2 of {EPOCHS})")
    # the report's trials table tells the early stop from a full run, although both are FINISHED
    page = write_report(store["uri"], "early", store["tmp"] / "outcomes.html", log_artifact=False).path.read_text()
    row = next(line for line in page.split("<tr>") if "trial_main_bbb" in line)
    assert "stopped early by ASHA" in row and "ran all epochs" not in row


def test_every_entry_point_picks_the_full_length_trial(store):
    uri, want = store["uri"], store["runs"]["aaa"]
    parent = tracking.get_run(uri, store["parent_id"])
    assert best_of_sweep(uri, parent).run_id == want
    found = best_trial(uri, "synthetic", "early")
    assert found.run_id == want and found.value == 0.40 and found.full_length and found.max_epochs == EPOCHS
    assert best_trial(uri, None, "early", "val/ncc", "max").run_id == store["runs"]["ccc"]

    result = runner.invoke(app, ["best", "--sweep", "early", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert "trial_main_aaa (val/ged = 0.4000" in result.output and "no trial ran all" not in result.output
    result = runner.invoke(app, ["best", "--sweep", "early", "--objective", "ncc", "--tracking-uri", uri])
    assert result.exit_code == 0 and "trial_main_ccc (val/ncc = 0.5000" in result.output, result.output

    # Pareto: bbb (0.30, 0.90) would dominate both, but it stopped early; ddd has no final GED
    front = pareto_trials(uri, store["parent_id"])
    assert [r["trial_id"] for r in front] == ["aaa", "ccc"]

    written = write_report(uri, "early", store["tmp"] / "sweep.html", log_artifact=False)
    page = written.path.read_text()
    assert "best trial: aaa." in page

    notes = _learning_curves(uri, {"supervised": "early"}, "synthetic", store["tmp"] / "curves.png")
    assert len(notes) == 1 and "best trial `trial_main_aaa` of sweep `early`" in notes[0]


def test_no_full_length_trial_falls_back_and_says_so(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = tracking.experiment_name("synthetic")
    tracking.init_store(uri, experiment)
    base = load_config(ROOT / "configs" / "synthetic.yaml", TINY_OVERRIDES + [f"train.epochs={EPOCHS}"])
    parent_id = tracking.create_run(uri, experiment, run_name="cut", tags={"supuq.kind": "sweep"})
    with tracking.tracked_run(uri, experiment, run_id=parent_id) as parent:
        parent.log_config(base)
        for tid, geds in (("t1", [0.5, 0.45]), ("t2", [0.6])):
            with tracking.tracked_run(uri, experiment, run_name=tid, parent_run_id=parent_id,
                                      tags={"supuq.trial_id": tid}) as run:
                run.set_tags({"supuq.config": json.dumps(base.model_dump(mode="json"))})
                for epoch, ged in enumerate(geds, 1):
                    run.log_metrics({"train/total": 1.0, "val/ged": ged}, step=epoch)
    found = best_trial(uri, None, "cut")
    assert found.trial_name == "t1" and not found.full_length
    result = runner.invoke(app, ["best", "--sweep", "cut", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    assert f"no trial ran all {EPOCHS} epochs" in result.output and "t1 (val/ged = 0.4500" in result.output


def test_pareto_front_min_ged_max_ncc():
    points = [(0.5, 0.2), (0.4, 0.1), (0.6, 0.3), (0.45, 0.05), (0.4, float("nan")), (float("nan"), 0.9)]
    # (0.45, 0.05) is dominated by (0.4, 0.1); (0.4, nan) by (0.4, 0.1); a NaN GED is never on the front
    assert pareto_front(points) == [1, 0, 2]
    assert pareto_front([(0.3, float("nan"))]) == [0]


def test_multi_objective_sweep_pareto_and_pick(tmp_path, monkeypatch, ray_session):
    monkeypatch.chdir(tmp_path)
    space = write_space(tmp_path, num_samples=3)  # its ASHA is switched off by --objective both
    opts = sweep_options(tmp_path, "mo", space, objective="both")
    out = run_sweep(opts)
    uri = opts.tracking_uri
    assert out.complete and len(out.trials) == 3
    parent = tracking.get_run(uri, out.parent_run_id)
    assert parent.data.tags["supuq.objective"] == "both"
    runs = tracking.child_runs(uri, out.parent_run_id)
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)  # no ASHA: every trial ran all epochs
    assert all("val/ged" in r.data.metrics and "val/ncc" in r.data.metrics for r in runs)
    space_json = tracking.download_artifact(uri, out.parent_run_id, "space.json", tmp_path / "a")
    assert '"objectives"' in space_json.read_text() and '"none"' in space_json.read_text()

    points = [(r.data.metrics["val/ged"], r.data.metrics["val/ncc"]) for r in runs]
    expected = {runs[i].data.tags["supuq.trial_id"] for i in pareto_front(points)}  # the table's short trial ids
    result = runner.invoke(app, ["best", "--sweep", "mo", "--tracking-uri", uri])  # objective from the sweep's tag
    assert result.exit_code == 0, result.output
    assert "Pareto-optimal" in result.output and all(name in result.output for name in expected)
    result = runner.invoke(app, ["sweep", "--objective", "pareto"])
    assert result.exit_code == 2 and "--objective must be ged, ncc or both" in result.output
    result = runner.invoke(app, ["best", "--sweep", "mo", "--objective", "both", "--retrain", "--tracking-uri", uri])
    assert result.exit_code == 2 and "--pick" in result.output
    result = runner.invoke(app, ["best", "--sweep", "mo", "--objective", "both", "--pick", "9", "--tracking-uri", uri])
    assert result.exit_code == 2 and "--pick must be between 1 and" in result.output
    result = runner.invoke(app, ["best", "--sweep", "mo", "--objective", "both", "--pick", "1", "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    lowest = min((p for p in points if not math.isnan(p[0])), key=lambda p: p[0])
    assert f"val/ged = {lowest[0]:.4f}" in result.output

    written = write_report(uri, out.parent_run_id, tmp_path / "mo.html", log_artifact=False)
    page = written.path.read_text()
    assert "multi-objective" in page and page.count(PNG) == 3
