"""`supuq results` (supuq.workflows.study) on a hand-made retrain run in a real MLflow sqlite store: the three
claims get the verdicts of the one rule (`compare`), and the study's tables are the Table 2/3 model's."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from supuq import tracking
from supuq.cli import app
from supuq.workflows.tables import aggregate

runner = CliRunner()

# Hand-made seeds: ours has clearly lower GED than Kohl (reproduced), clearly lower NCC (reversed), an NCC vs
# the true variance within 2 standard errors (inconclusive); Kendall & Gal has one seed (fewer than 2 seeds).
PER_SEED = {
    "supervised": [{"ged": g, "ncc": n, "ncc_true": t, "ece": 0.01} for g, n, t in
                   ((0.20, 0.40, 0.5), (0.21, 0.41, 0.6), (0.22, 0.42, 0.7))],
    "kohl": [{"ged": g, "ncc": n, "ncc_true": t, "ece": 0.02} for g, n, t in
             ((0.30, 0.50, 0.55), (0.31, 0.51, 0.65), (0.32, 0.52, 0.75))],
    "kendall_gal": [{"ged": 0.5, "ncc": 0.1, "ncc_true": 0.2, "ece": 0.03}],
}


def hand_made_retrain(uri: str) -> str:
    experiment = tracking.experiment_name("synthetic")
    tracking.init_store(uri, experiment)
    tags = {"supuq.kind": "retrain", "supuq.dataset": "synthetic"}
    with tracking.tracked_run(uri, experiment, run_name="retrain-hand-made", tags=tags) as run:
        results = {"per_seed": PER_SEED, "summary": aggregate(PER_SEED), "ncc_common": {},
                   "scale": {"seeds": 3, "epochs": 40, "image_px": 64}}
        run.log_text(json.dumps(results), "results.json")
        run.log_text("model:\n  method: supervised\n", "best_config.yaml")
        return run.run_id


def test_study_verdicts_follow_the_rule_and_tables_come_from_the_model(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run_id = hand_made_retrain(uri)
    out = tmp_path / "docs" / "results.md"
    result = runner.invoke(app, ["results", run_id, "--out", str(out), "--tracking-uri", uri])
    assert result.exit_code == 0, result.output
    text = out.read_text()
    claims = {line.split(":")[0]: line for line in text.splitlines() if line.startswith("- (")}
    assert "**reproduced**" in claims["- (i) ours has lower GED than the Probabilistic U-Net"]
    assert "**not reproduced (reversed)**" in claims["- (ii) ours has higher NCC (vs grader variance) than the "
                                                     "Probabilistic U-Net"]
    assert "**inconclusive**" in claims["- (ii') ours has higher NCC vs the true variance than the Probabilistic U-Net"]
    assert "**inconclusive (fewer than 2 seeds)**" in claims["- (iii) ours has lower GED than Kendall & Gal"]
    # the (i) line's difference and standard error, computed here
    ours, kohl = np.array([0.20, 0.21, 0.22]), np.array([0.30, 0.31, 0.32])
    se = np.sqrt(ours.var(ddof=1) / 3 + kohl.var(ddof=1) / 3)
    assert f"difference {ours.mean() - kohl.mean():+.4f}, standard error {se:.4f}" in text
    # the tables are the model's: Table 2 row of ours, the same verdict in the Table 2 verdict column
    assert "## Table 2: GED on synthetic (lower is better)" in text and "## Table 3: NCC" in text
    ours_row = next(line for line in text.splitlines() if line.startswith("| Ours"))
    assert f"{ours.mean():.4f} ± {ours.std(ddof=1):.4f}" in ours_row
    kohl_row = next(line for line in text.splitlines() if line.startswith("| Probabilistic U-Net"))
    assert f"reproduced ({ours.mean() - kohl.mean():+.4f}, SE {se:.4f})" in kohl_row
    assert "No published values for dataset 'synthetic'" in text
    assert "Smoke-scale run: 1 seed(s) (under 3)" in text  # Kendall & Gal's single seed
    # one table per metric, best first, each method judged against ours and the soft-label reference (absent here)
    ged_table = text.split("### GED (50 samples) (lower is better)")[1].split("###")[0]
    rows = [line.split(" | ") for line in ged_table.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r[0].lstrip("| ").split(" (")[0] for r in rows] == ["Ours", "Probabilistic U-Net", "MC dropout + logit noise"]
    assert [r[2] for r in rows] == ["reference", "no (worse)", "inconclusive (fewer than 2 seeds)"]
    assert {r[3].rstrip(" |") for r in rows} == {"n/a"}
    assert "(iv) ours" not in text  # no soft-label run, no claim against it


def test_study_refuses_a_run_that_is_not_a_retrain(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = tracking.experiment_name("synthetic")
    tracking.init_store(uri, experiment)
    with tracking.tracked_run(uri, experiment, run_name="plain") as run:
        run_id = run.run_id
    result = runner.invoke(app, ["results", run_id, "--out", str(tmp_path / "r.md"), "--tracking-uri", uri])
    assert result.exit_code == 2 and "is not a retrain run" in result.output
