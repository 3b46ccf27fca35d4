"""Which trial of a sweep is best: the one eligibility rule, the one best-trial rule and the Pareto front, on
trial rows; and those rows read back from MLflow (the sweep parent run, its child runs).

A trial row is a dict with at least `metrics` (the trial's last reported value of each metric) and `epochs`
(the epochs it reached). The driver's Tune trial summaries (`sweep.results.summarize_trials`) and the MLflow
rows of `trial_rows` both are, so best.yaml, the progress bar, the closing table, `supuq best`, its retrain,
the report and the study all choose through the same functions here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..config import Config, validate_config
from ..errors import SupuqError
from .. import tracking
from .space import OBJECTIVES


@dataclass
class BestTrial:
    sweep_run_id: str
    sweep_name: str
    run_id: str
    trial_name: str
    metric: str
    value: float
    config: Config
    full_length: bool = True  # False: no trial ran all the sweep's epochs, the best of all scored trials
    max_epochs: int = 0


# ------------------------------------------------------------------------------------------------- the rule


def _score(row: dict[str, Any], metric: str) -> float | None:
    value = row["metrics"].get(metric)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def eligible_trials(rows: list[dict[str, Any]], metric: str, max_epochs: int) -> tuple[list[dict[str, Any]], bool]:
    """The trials a best trial or a Pareto front is chosen among, and whether they ran the full length.

    Those with a finite last `metric` that ran the sweep's `max_epochs` (a trial ASHA stopped early has values
    from fewer epochs, not comparable with a full run's); only when none did, every trial with a finite last
    value (the flag is then False, and callers say so). NaN never counts."""
    scored = [r for r in rows if _score(r, metric) is not None]
    full = [r for r in scored if r["epochs"] >= max_epochs]
    return (full, True) if full else (scored, False)


def best_row(rows: list[dict[str, Any]], metric: str, mode: str, max_epochs: int) -> tuple[dict[str, Any] | None, bool]:
    """The best eligible trial (`eligible_trials`) by its last `metric` (`mode` min or max), None when no trial
    has a value; and whether it ran the full length. Ties go to the lower trial id, the same trial whichever
    order the rows come in (Tune's result grid, MLflow's start times)."""
    pool, full = eligible_trials(rows, metric, max_epochs)
    if not pool:
        return None, False
    sign = 1 if mode == "min" else -1
    return min(pool, key=lambda r: (sign * _score(r, metric), r.get("trial_id", ""))), full


def rank_trials(rows: list[dict[str, Any]], metric: str, mode: str, max_epochs: int) -> list[dict[str, Any]]:
    """Every trial, best first by the same rule: the eligible trials by their last `metric`, then the other
    trials with a value, then those without one."""
    pool, _ = eligible_trials(rows, metric, max_epochs)
    eligible = {id(r) for r in pool}
    sign = 1 if mode == "min" else -1

    def key(row: dict[str, Any]) -> tuple[bool, bool, float, str]:
        score = _score(row, metric)
        return (id(row) not in eligible, score is None, sign * score if score is not None else 0.0,
                row.get("trial_id", ""))

    return sorted(rows, key=key)


def fallback_note(metric: str, max_epochs: int) -> str:
    """The line saying that the best trial came from the fallback of `eligible_trials`."""
    return (f"no trial ran all {max_epochs} epochs (ASHA stopped them all, or the sweep was cut short): the best "
            f"{metric} is chosen among every trial's last value, from fewer epochs")


# ------------------------------------------------------------------------------------------------- from MLflow


def find_sweep(uri: str, dataset: str | None, sweep: str | None):
    """The sweep parent run: by run id, by sweep (run) name, or the latest sweep of `dataset`."""
    experiments = [tracking.experiment_name(dataset)] if dataset else None
    if sweep:
        runs = tracking.search_runs(uri, experiments, f"tags.`supuq.kind` = 'sweep' and attributes.run_name = '{sweep}'")
        if runs:
            return runs[0]
        try:
            run = tracking.get_run(uri, sweep)
        except SupuqError:
            run = None
        if run is not None and run.data.tags.get("supuq.kind") == "sweep":
            return run
        raise SupuqError(f"no sweep named or with run id {sweep!r} in {uri}")
    runs = tracking.search_runs(uri, experiments, "tags.`supuq.kind` = 'sweep'")
    if not runs:
        where = f"dataset {dataset!r}" if dataset else "any dataset"
        raise SupuqError(f"no sweep found for {where} in {uri}; run `supuq sweep` first")
    return runs[0]


def best_trial(uri: str, dataset: str | None, sweep: str | None, metric: str = "val/ged", mode: str = "min") -> BestTrial:
    """The best trial (`best_row`) by `metric` of the sweep `find_sweep` names."""
    return best_of_sweep(uri, find_sweep(uri, dataset, sweep), metric, mode)


def best_of_sweep(uri: str, parent, metric: str = "val/ged", mode: str = "min") -> BestTrial:
    """The best trial (`best_row`: full-length trials first, last value of `metric`, NaN never wins) of the sweep
    parent run `parent`, among the trials that logged their config (what a retrain starts from)."""
    rows = trial_rows(uri, parent.info.run_id)
    max_epochs = sweep_epochs(parent, rows)
    row, full = best_row([r for r in rows if r["config"]], metric, mode, max_epochs)
    if row is None:
        raise SupuqError(f"sweep {parent.info.run_name!r} has no trial with a {metric} value")
    cfg = validate_config(json.loads(row["config"]), f"trial {row['name']}")
    return BestTrial(parent.info.run_id, parent.info.run_name, row["run_id"], row["name"], metric,
                     row["metrics"][metric], cfg, full_length=full, max_epochs=max_epochs)


def sweep_objective(parent) -> str:
    """The objective a sweep parent run searched: its `supuq.objective` tag (ged | ncc | both), else ged."""
    return parent.data.tags.get("supuq.objective") or "ged"


def sweep_metric(parent) -> tuple[str, str]:
    """(metric, mode) a sweep's best trial is ranked by: its objective's; val/ged (min) for `both` (the first
    objective, as the driver's best.yaml)."""
    return OBJECTIVES.get(sweep_objective(parent), OBJECTIVES["ged"])


def sweep_epochs(parent, rows: list[dict[str, Any]]) -> int:
    """The epochs each trial of the sweep was to run: the parent run's `train.epochs` param (the driver logs
    the base config with the scheduler's max_epochs in it), else the most epochs any trial reached."""
    try:
        return int(float(parent.data.params["train.epochs"]))
    except (KeyError, TypeError, ValueError):
        return max((r["epochs"] for r in rows), default=0)


def trial_rows(uri: str, parent_run_id: str) -> list[dict[str, Any]]:
    """One dict per trial (child run) of a sweep, oldest first: run id and name, trial id, MLflow status,
    stop reason, final metrics (`val/...`), flattened params, epochs reached (last step of train/total),
    and the config JSON tag when the trial logged one."""
    uri = tracking.resolve_tracking_uri(uri)
    client = tracking.client_for(uri)
    rows = []
    for run in tracking.child_runs(uri, parent_run_id):
        history = client.get_metric_history(run.info.run_id, "train/total")
        rows.append({
            "run_id": run.info.run_id, "name": run.info.run_name, "trial_id": run.data.tags.get("supuq.trial_id", ""),
            "status": run.info.status, "stop_reason": run.data.tags.get("supuq.stop_reason", ""),
            "metrics": dict(run.data.metrics), "params": dict(run.data.params),
            "epochs": max((m.step for m in history), default=0), "config": run.data.tags.get("supuq.config"),
        })
    return rows


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (GED, NCC) no other point dominates, minimising GED and maximising NCC.

    A NaN NCC counts as the worst NCC (such a point can only be on the front by its GED); a NaN GED is never
    on the front. Ties: equal points are all kept. Sorted by GED, then by NCC descending."""
    def ncc_of(value: float) -> float:
        return -math.inf if math.isnan(value) else value

    keep = []
    for i, (ged_i, ncc_i) in enumerate(points):
        if math.isnan(ged_i):
            continue
        dominated = any(
            not math.isnan(ged_j) and ged_j <= ged_i and ncc_of(ncc_j) >= ncc_of(ncc_i)
            and (ged_j < ged_i or ncc_of(ncc_j) > ncc_of(ncc_i))
            for j, (ged_j, ncc_j) in enumerate(points) if j != i
        )
        if not dominated:
            keep.append(i)
    return sorted(keep, key=lambda i: (points[i][0], -ncc_of(points[i][1])))


def pareto_rows(rows: list[dict[str, Any]], max_epochs: int) -> list[dict[str, Any]]:
    """The Pareto-optimal trials (`pareto_front` on last val/ged, val/ncc) among the eligible trials
    (`eligible_trials` on val/ged: as for the best trial), lowest GED first."""
    pool, _ = eligible_trials(rows, "val/ged", max_epochs)
    front = pareto_front([(r["metrics"]["val/ged"], r["metrics"].get("val/ncc", math.nan)) for r in pool])
    return [pool[i] for i in front]


def pareto_trials(uri: str, parent_run_id: str, rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """A sweep's Pareto-optimal trials (`pareto_rows`) read from MLflow, lowest GED first."""
    rows = trial_rows(uri, parent_run_id) if rows is None else rows
    return pareto_rows(rows, sweep_epochs(tracking.get_run(uri, parent_run_id), rows))


def pick_pareto(parent, front: list[dict[str, Any]], pick: int) -> BestTrial:
    """The `pick`-th (1-based, lowest GED first) of the Pareto-optimal trials `front` (`pareto_trials`) of the
    sweep parent run `parent`, as a `BestTrial`."""
    if not front:
        raise SupuqError(f"sweep {parent.info.run_name!r} has no trial with a val/ged value")
    if not 1 <= pick <= len(front):
        raise SupuqError(f"--pick must be between 1 and {len(front)} (the Pareto-optimal trials), got {pick}")
    row = front[pick - 1]
    if not row["config"]:
        raise SupuqError(f"trial {row['name']} has no supuq.config tag to retrain from")
    cfg = validate_config(json.loads(row["config"]), f"trial {row['name']}")
    return BestTrial(parent.info.run_id, parent.info.run_name, row["run_id"], row["name"], "val/ged",
                     row["metrics"]["val/ged"], cfg)
