"""Which trial of a sweep is best, read back from MLflow: the sweep parent run, the trial rows, the best trial
and the Pareto front. `supuq best`, the retrain, reports and the study all choose through here.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..config import Config, validate_config
from ..errors import SupuqError
from .. import tracking

@dataclass
class BestTrial:
    sweep_run_id: str
    sweep_name: str
    run_id: str
    trial_name: str
    metric: str
    value: float
    config: Config


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
    """The child trial with the best final value of `metric` (NaN never wins) of the sweep `find_sweep` names."""
    return best_of_sweep(uri, find_sweep(uri, dataset, sweep), metric, mode)


def best_of_sweep(uri: str, parent, metric: str = "val/ged", mode: str = "min") -> BestTrial:
    """The child trial of the sweep parent run `parent` with the best final value of `metric` (NaN never wins)."""
    scored = []
    for run in tracking.child_runs(uri, parent.info.run_id):
        value = run.data.metrics.get(metric)
        if value is not None and not math.isnan(value) and "supuq.config" in run.data.tags:
            scored.append((value if mode == "min" else -value, run))
    if not scored:
        raise SupuqError(f"sweep {parent.info.run_name!r} has no trial with a {metric} value")
    _, run = min(scored, key=lambda pair: pair[0])
    cfg = validate_config(json.loads(run.data.tags["supuq.config"]), f"trial {run.info.run_name}")
    return BestTrial(parent.info.run_id, parent.info.run_name, run.info.run_id, run.info.run_name, metric,
                     run.data.metrics[metric], cfg)


def sweep_objective(parent) -> str:
    """The objective a sweep parent run searched: its `supuq.objective` tag (ged | ncc | both), else ged."""
    return parent.data.tags.get("supuq.objective") or "ged"


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


def pareto_trials(uri: str, parent_run_id: str, rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """A sweep's Pareto-optimal trials on final val/ged (min) and val/ncc (max), lowest GED first.

    Only trials that ran the sweep's full epochs (MLflow status FINISHED) are compared, as for the best trial:
    a trial stopped early has values from fewer epochs. Falls back to every trial when none finished."""
    rows = trial_rows(uri, parent_run_id) if rows is None else rows
    scored = [r for r in rows if math.isfinite(r["metrics"].get("val/ged", math.nan))]
    if not scored:
        return []
    full = [r for r in scored if r["status"] == "FINISHED"] or scored  # FINISHED: ran all epochs (sweep/results.py)
    front = pareto_front([(r["metrics"]["val/ged"], r["metrics"].get("val/ncc", math.nan)) for r in full])
    return [full[i] for i in front]


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
