"""`supuq best`: find a sweep's best trial in MLflow, and retrain it over seeds (with the baselines) into the
paper's Table 2 (GED) and Table 3 (NCC), mean +- std over seeds.

A retrain is a parent MLflow run (`supuq.kind=retrain`, tagged with the sweep it came from) with one child
run per (method, seed); the parent holds the aggregated metrics, `results.md`, `results.json` and the best
config. Seeds run in parallel as Ray tasks (one CPU each) unless `parallel=False`.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config, dump_config, validate_config
from .errors import SupuqError

METHOD_LABELS = {
    "supervised": "Ours (Prob. U-Net + weight noise + supervised aleatoric)",
    "kohl": "Probabilistic U-Net (Kohl et al. 2018)",
    "kendall_gal": "MC dropout + logit noise (Kendall & Gal 2017)",
}
REPORTED = ("ged", "ncc", "ncc_excluded", "ncc_true", "diversity", "dist_sy", "brier", "ece", "aleatoric", "epistemic")


@dataclass
class BestTrial:
    sweep_run_id: str
    sweep_name: str
    run_id: str
    trial_name: str
    metric: str
    value: float
    config: Config


@dataclass
class RetrainOutcome:
    parent_run_id: str
    per_seed: dict[str, list[dict[str, float]]]
    table: str
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


def find_sweep(uri: str, dataset: str | None, sweep: str | None):
    """The sweep parent run: by run id, by sweep (run) name, or the latest sweep of `dataset`."""
    from . import tracking

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
    from . import tracking

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
    from mlflow import MlflowClient

    from . import tracking

    uri = tracking.resolve_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
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
    full = [r for r in scored if r["status"] == "FINISHED"] or scored  # FINISHED: ran all epochs (tune.py)
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


def retrain_configs(
    best: Config, seeds: int, baselines: bool, samples: int, tuned: dict[str, Config] | None = None
) -> list[Config]:
    """One config per (method, seed): trained on train+val, tested with `samples` (M=5 x K, or 1 x samples).

    A baseline takes its own tuned config from `tuned` (e.g. the best trial of its own sweep) when given,
    else the best config with that method's fixed settings (`Config.with_method`).
    """
    methods = ["supervised", "kohl", "kendall_gal"] if baselines else [best.model.method]
    configs = []
    for method in methods:
        if method == best.model.method:
            base = best
        elif tuned and method in tuned:
            base = tuned[method]
        else:
            base = best.with_method(method)
        weight = base.eval.weight_samples if samples % base.eval.weight_samples == 0 else 1
        for seed in range(seeds):
            configs.append(base.updated({
                "train.seed": seed, "train.train_on_val": True,
                "eval.weight_samples": weight, "eval.latent_samples": samples // weight,
            }))
    return configs


def _train_one(cfg_json: str, uri: str, parent_id: str, out_dir: str) -> dict[str, Any]:
    """One retrain child run (a Ray task or a plain call): returns the test metrics and per-image NCCs."""
    import torch

    from .runs import train_and_evaluate

    torch.set_num_threads(1)
    cfg = validate_config(json.loads(cfg_json))
    outcome = train_and_evaluate(
        cfg, uri, track=True, out_dir=out_dir, parent_run_id=parent_id,
        run_name=f"{cfg.model.method}-seed{cfg.train.seed}", extra_tags={"supuq.kind": "retrain-seed"},
    )
    return {
        "method": cfg.model.method, "seed": cfg.train.seed, "run_id": outcome.run_id,
        "metrics": outcome.test.as_dict(""), "ncc_per_image": outcome.test.per_image["ncc"].tolist(),
        "seconds": outcome.seconds,
    }


def retrain(
    best: BestTrial | None,
    cfg: Config,
    uri: str,
    seeds: int = 5,
    baselines: bool = False,
    samples: int = 50,
    parallel: bool = True,
    out_root: str | Path = "runs/retrain",
    progress=None,
    tuned: dict[str, BestTrial] | None = None,
) -> RetrainOutcome:
    """Retrain `cfg` (the best config) over `seeds` seeds (and the baselines), log and tabulate."""
    from . import tracking

    started = time.perf_counter()
    experiment = tracking.experiment_name(cfg.data.dataset)
    tracking.init_store(uri, experiment)
    configs = retrain_configs(cfg, seeds, baselines, samples, {m: t.config for m, t in (tuned or {}).items()})
    tags = {"supuq.kind": "retrain", "supuq.dataset": cfg.data.dataset}
    if best is not None:
        tags.update({"supuq.sweep_run_id": best.sweep_run_id, "supuq.sweep_name": best.sweep_name,
                     "supuq.best_trial_run": best.run_id})
    for method, trial in (tuned or {}).items():
        tags[f"supuq.sweep_name.{method}"] = trial.sweep_name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out_root = Path(out_root) / f"{cfg.data.dataset}-{stamp}"
    with tracking.tracked_run(uri, experiment, run_name=f"retrain-{cfg.data.dataset}-{stamp}", tags=tags) as parent:
        parent.log_config(cfg)
        parent.log_text(dump_config(cfg), "best_config.yaml")
        jobs = [(json.dumps(c.model_dump(mode="json")), uri, parent.run_id,
                 str(out_root / f"{c.model.method}-seed{c.train.seed}")) for c in configs]
        results = _run_jobs(jobs, parallel, progress)
        per_seed: dict[str, list[dict[str, float]]] = {}
        for row in results:
            per_seed.setdefault(row["method"], []).append(row["metrics"])
        summary = aggregate(per_seed)
        common = common_subset_ncc(results)
        table = results_table(cfg.data.dataset, summary, seeds, samples, common)
        for method, stats in summary.items():
            parent.log_metrics({f"{method}/{k}": v for k, v in stats.items()}, step=0)
        parent.log_text(table, "results.md")
        parent.log_text(json.dumps({"summary": summary, "per_seed": per_seed, "ncc_common": common}, indent=2),
                        "results.json")
        parent_id = parent.run_id
    return RetrainOutcome(parent_id, per_seed, table, summary, time.perf_counter() - started)


def _run_jobs(jobs: list[tuple], parallel: bool, progress) -> list[dict[str, Any]]:
    """Run retrain jobs as Ray tasks (1 CPU each) when `parallel`, else one after another."""
    if not parallel:
        out = []
        for job in jobs:
            out.append(_train_one(*job))
            if progress:
                progress(len(out), len(jobs))
        return out
    import ray

    from .ray_cluster import connect_ray

    started_here = connect_ray(None)  # the sweep's own start-up: same settings, same one-line errors
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(_train_one)
        pending = {task.remote(*job): i for i, job in enumerate(jobs)}
        results: list[Any] = [None] * len(jobs)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                results[pending.pop(ref)] = ray.get(ref)
            if progress:
                progress(len(jobs) - len(pending), len(jobs))
        return results
    finally:
        if started_here:
            ray.shutdown()


def aggregate(per_seed: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per method: `<metric>_mean` and `<metric>_std` (sample std, ddof=1; 0 with one seed), NaNs ignored."""
    summary = {}
    for method, rows in per_seed.items():
        stats: dict[str, float] = {"seeds": float(len(rows))}
        for key in REPORTED:
            values = np.array([r[key] for r in rows if key in r], dtype=float)
            values = values[np.isfinite(values)]
            if len(values):
                stats[f"{key}_mean"] = float(values.mean())
                stats[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary[method] = stats
    return summary


def common_subset_ncc(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """NCC per method on the test images where every method's NCC is defined for the same seed: methods
    exclude different images (constant maps), so their plain means cover different subsets."""
    by_seed: dict[int, dict[str, np.ndarray]] = {}
    for row in results:
        by_seed.setdefault(row["seed"], {})[row["method"]] = np.asarray(row["ncc_per_image"], dtype=float)
    per_method: dict[str, list[float]] = {}
    counts = []
    for maps in by_seed.values():
        defined = np.logical_and.reduce([np.isfinite(v) for v in maps.values()])
        counts.append(int(defined.sum()))
        for method, values in maps.items():
            per_method.setdefault(method, []).append(float(values[defined].mean()) if defined.any() else float("nan"))
    out = {}
    for method, values in per_method.items():
        arr = np.array(values)
        arr = arr[np.isfinite(arr)]
        out[method] = {
            "mean": float(arr.mean()) if len(arr) else float("nan"),
            "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "images": float(np.mean(counts)) if counts else 0.0,
        }
    return out


def mean_pm(stats: dict[str, float], key: str, digits: int = 4) -> str:
    """`<key>_mean ± <key>_std` from an `aggregate` summary, or n/a where the key has no finite value."""
    if f"{key}_mean" not in stats:
        return "n/a"
    return f"{stats[f'{key}_mean']:.{digits}f} ± {stats[f'{key}_std']:.{digits}f}"


def results_table(dataset: str, summary: dict[str, dict[str, float]], seeds: int, samples: int,
                  common: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown: Table 2 (GED) and Table 3 (NCC) of the paper for `dataset`, mean ± std over seeds."""
    lines = [
        f"# Results on {dataset} (test split, {samples} samples per image, mean ± std over {seeds} seed(s))",
        "",
        "## Table 2: GED (lower is better)",
        "",
        "| method | GED | E d(S,Y) | diversity E d(S,S') |",
        "|---|---|---|---|",
    ]
    for method, stats in summary.items():
        lines.append(f"| {METHOD_LABELS.get(method, method)} | {mean_pm(stats, 'ged')} | {mean_pm(stats, 'dist_sy')} | "
                     f"{mean_pm(stats, 'diversity')} |")
    lines += [
        "",
        "## Table 3: NCC of predicted aleatoric vs grader variance (higher is better)",
        "",
        "| method | NCC | images excluded (constant map) | NCC, common subset | NCC vs true variance | ECE |",
        "|---|---|---|---|---|---|",
    ]
    for method, stats in summary.items():
        shared = (common or {}).get(method)
        shared_text = f"{shared['mean']:.3f} ± {shared['std']:.3f} ({shared['images']:.0f} img)" if shared else "n/a"
        lines.append(
            f"| {METHOD_LABELS.get(method, method)} | {mean_pm(stats, 'ncc', 3)} | {mean_pm(stats, 'ncc_excluded', 1)} | "
            f"{shared_text} | {mean_pm(stats, 'ncc_true', 3)} | {mean_pm(stats, 'ece', 4)} |"
        )
    lines += ["", "GED: generalized energy distance with d = 1 - IoU (V-statistic); NCC: mean over images where "
              "both maps vary; excluded images have a constant map. E d(S,Y) and diversity are shown because GED "
              "subtracts diversity, which rewards noisy samples.", ""]
    return "\n".join(lines)
