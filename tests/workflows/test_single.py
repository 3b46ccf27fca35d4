"""`supuq train` / `supuq evaluate` (supuq.workflows.single) end to end against a temporary MLflow store."""

from __future__ import annotations


from typer.testing import CliRunner

from supuq import tracking
from supuq.cli import app

from ..conftest import ROOT, TINY_OVERRIDES

runner = CliRunner()


def _train_args(uri: str, *extra: str) -> list[str]:
    sets = [x for o in TINY_OVERRIDES for x in ("--set", o)]
    return ["train", "--config", str(ROOT / "configs/synthetic.yaml"), *sets, "--tracking-uri", uri, *extra]


def test_train_run_is_complete_in_mlflow(tiny_cfg, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = runner.invoke(app, _train_args(uri, "--out", str(tmp_path / "out")))
    assert result.exit_code == 0, result.output
    assert "GED" in result.output and "MLflow run id" in result.output
    runs = tracking.search_runs(uri, ["supuq/synthetic"])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["loss.gamma"] and run.data.params["model.method"] == "supervised"
    assert run.data.tags["supuq.method"] == "supervised" and run.data.tags["supuq.dataset"] == "synthetic"
    client = tracking.client_for(uri)
    assert len(client.get_metric_history(run.info.run_id, "train/total")) == 2  # one point per epoch
    assert len(client.get_metric_history(run.info.run_id, "val/ged")) == 2
    assert "test/ged" in run.data.metrics and "test/ncc_excluded" in run.data.metrics
    listed = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "eval.json", "figures", "checkpoint"} <= listed
    figures = {a.path for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"figures/uncertainty.png", "figures/curves.png"}

    # re-evaluate by run id: metrics go back to the same run
    again = runner.invoke(app, ["evaluate", run.info.run_id, "--samples", "4", "--weight-samples", "2",
                                "--tracking-uri", uri])
    assert again.exit_code == 0, again.output
    assert "test4/ged" in tracking.get_run(uri, run.info.run_id).data.metrics
    # and by checkpoint file
    ckpt = tmp_path / "out" / "checkpoint.pt"
    assert runner.invoke(app, ["evaluate", str(ckpt), "--samples", "4", "--weight-samples", "2"]).exit_code == 0


def test_diverging_training_ends_the_run_failed(tiny_cfg, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    result = runner.invoke(app, _train_args(uri, "--set", "train.inject_nan_at_epoch=2"))
    assert result.exit_code == 2
    assert "training diverged at epoch 2" in result.output and "Traceback" not in result.output
    runs = tracking.search_runs(uri, ["supuq/synthetic"])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert len(tracking.client_for(uri).get_metric_history(runs[0].info.run_id, "train/total")) == 1


def test_evaluate_bad_reference_is_one_line(tmp_path):
    result = runner.invoke(app, ["evaluate", "no-such-run", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"])
    assert result.exit_code == 2 and "no-such-run" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["evaluate", "x", "--samples", "7", "--weight-samples", "5"])
    assert result.exit_code == 2 and "multiple" in result.output
