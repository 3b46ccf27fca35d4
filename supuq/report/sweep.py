"""The sweep part of `supuq report`: for a sweep parent run (`supuq.kind=sweep`), final val/ged against val/ncc
per trial with the Pareto front, each searched parameter against GED, the epochs each trial reached (ASHA's
stops), and a table of trials.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

from .figures import epochs_figure, params_figure, scatter_figure
from .html import html_figure, html_table, json_artifact, num, param_text

SWEPT_DEFAULT = ("loss.beta", "loss.gamma", "model.weight_noise.prior", "model.weight_noise.prior_std", "optim.lr")


def sweep_sections(uri: str, run, work: Path) -> list[str]:
    from ..sweep.selection import best_row, pareto_rows, sweep_epochs, sweep_metric, sweep_objective, trial_rows

    space = json_artifact(uri, run.info.run_id, "space.json", work / "parent") or {}
    searched = space.get("space") or {k: {} for k in SWEPT_DEFAULT}
    rows = trial_rows(uri, run.info.run_id)
    objective = sweep_objective(run)
    max_epochs = sweep_epochs(run, rows)
    front_ids = {r["run_id"] for r in pareto_rows(rows, max_epochs)}
    best, _ = best_row(rows, *sweep_metric(run), max_epochs)  # the rule of best.yaml and `supuq best`
    best_trial = best["trial_id"] if best else ""
    for r in rows:
        r["outcome"] = _outcome(r)
        r["pareto"] = r["run_id"] in front_ids
        r["best"] = r is best

    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    scheduler = (space.get("scheduler") or {}).get("type", "?")
    objective_text = {"both": "multi-objective TPE: min val/ged and max val/ncc (ASHA off)",
                      "ncc": "max val/ncc", "ged": "min val/ged"}.get(objective, objective)
    out = [f"<p class='meta'>{len(rows)} trials ({', '.join(f'{n} {k}' for k, n in counts.items()) or 'none'}); "
           f"objective: {html.escape(objective_text)}; scheduler: {html.escape(str(scheduler))}; up to "
           f"{max_epochs} epochs per trial; best trial: {html.escape(best_trial or '-')}.</p>"]
    if not rows:
        return out + ["<p class='note'>This sweep has no trial runs.</p>"]

    out.append("<h2>Validation GED against NCC, with the Pareto front</h2>")
    out.append(html_figure(scatter_figure(rows, work / "pareto.png"), "GED vs NCC scatter",
               "Each trial's last val/ged and val/ncc. Pareto front (no trial has both lower GED and higher NCC) "
               "over the trials that ran all epochs (all trials if none did); trials stopped early are hollow, "
               "since their values come from fewer epochs. Trials whose NCC is undefined (no image with a "
               "non-constant map; n/a in the table) are drawn at the bottom edge and rank as the worst NCC."))
    out.append("<h2>Searched parameters against GED</h2>")
    out.append(html_figure(params_figure(rows, searched, work / "params.png"), "parameters vs GED",
               "Last val/ged per trial against each searched parameter; log axes for parameters searched "
               "log-uniformly; colours as in the epochs chart."))
    out.append("<h2>Epochs reached (ASHA)</h2>")
    out.append(html_figure(epochs_figure(rows, max_epochs, work / "epochs.png"), "epochs reached per trial",
               "Epochs each trial trained before it finished, was stopped by ASHA at a rung (its validation metric "
               "was in the worse part of the trials that reached that rung), failed, or was interrupted."))
    out.append("<h2>Trials</h2>")
    keys = list(searched)
    head = ["trial", "status", "epochs", "val/ged", "val/ncc", *(k.split(".")[-1] for k in keys), "Pareto", "best",
            "stop reason"]
    table_rows = []
    for r in sorted(rows, key=lambda r: _sort_ged(r)):
        m = r["metrics"]
        table_rows.append([r["name"], r["outcome"], str(r["epochs"]), num(m.get("val/ged"), 4), num(m.get("val/ncc"), 3),
                           *(param_text(r["params"].get(k)) for k in keys), "✓" if r["pareto"] else "",
                           "✓" if r["best"] else "", r["stop_reason"]])
    out.append(html_table(head, table_rows))
    return out


def _outcome(row: dict) -> str:
    # An ASHA stop ends FINISHED (stores written before that: KILLED): the stop reason tells it apart.
    if row["stop_reason"].startswith("stopped early"):
        return "stopped early by ASHA"
    if row["status"] == "FINISHED":
        return "ran all epochs"
    if row["status"] == "FAILED":
        return "failed"
    return "interrupted / never ran"


def _sort_ged(row: dict) -> float:
    value = row["metrics"].get("val/ged", math.nan)
    return value if math.isfinite(value) else math.inf
