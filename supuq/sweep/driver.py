"""The sweep driver: `supuq sweep` as Optuna (TPE) + ASHA over `supuq.train.fit`, one MLflow child run per
trial, and `--resume` of an interrupted sweep.

Only `ray.tune` names are used (Train V2 is on in Ray 2.60: `ray.train.RunConfig`/`ray.train.report` break
Tune function trainables). The trainable (`sweep.trainable`) is a thin adapter: trial params -> pydantic config
-> `fit` with a reporter that logs to MLflow and calls `tune.report(metrics, checkpoint=...)`.

Sweep folder `<storage>/<name>/` holds Ray's experiment state, `supuq_sweep.json` (parent run id, tracking
URI, base config, space: what `--resume` needs) and `best.yaml` at the end.

Storage paths (local or s3://) are `sweep.storage`; the searcher `sweep.search`; the progress bar, trial
summaries and the child runs' final status `sweep.results`; the best trial `sweep.selection`; joining Ray and
checking (or waiting for) the cluster's resources `sweep.cluster`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import Config, dump_config, validate_config
from ..data.registry import dataset as registry_entry, load_dataset_config
from ..errors import SupuqError
from .cluster import check_resources, connect_ray, release_resources
from .results import (TrialProgress, best_params, finalize_child_runs, space_params, summarize_trials,
                      sweep_description)
from .selection import best_row, fallback_note, rank_trials
from .space import SweepSpace, check_method_keys, load_space, objective_changes
from .search import NanSafeOptunaSearch, param_space
from .storage import ray_storage, read_text, storage_root, write_text
from .trainable import trial_main

STATE_FILE = "supuq_sweep.json"


@dataclass
class SweepOptions:
    """Everything `supuq sweep` accepts; None means "from the space file / config"."""

    dataset: str = "synthetic"
    config: Path | None = None
    space: Path | None = None
    samples: int | None = None
    concurrent: int | None = None
    overrides: list[str] = field(default_factory=list)
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    address: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    name: str | None = None
    resume: str | None = None
    objective: str | None = None  # ged | ncc | both (None: the space file's metric); see objective_changes
    wait_for_resources: float = 0.0  # seconds to wait (asking the autoscaler) for nodes that can run a trial


class SweepInterrupted(KeyboardInterrupt):
    """The sweep stopped before all trials finished (Ctrl-C, or the driver lost its trials)."""

    def __init__(self, name: str, finished: int, total: int):
        self.name, self.finished, self.total = name, finished, total
        super().__init__(f"sweep {name} interrupted after {finished} of {total} trials")


@dataclass
class SweepOutcome:
    name: str
    path: str
    parent_run_id: str
    trials: list[dict[str, Any]]  # best first (`selection.rank_trials`)
    best: dict[str, Any] | None
    complete: bool
    stopped_early: int
    seconds: float
    metric: str = "val/ged"
    max_epochs: int = 0


# ------------------------------------------------------------------------------------------------- driver


def prepare_sweep(opts: SweepOptions) -> tuple[Config, SweepSpace]:
    """Load and validate the config and search space (before Ray starts), with CLI overrides applied.

    Both default to the dataset's files in `data.registry`; a config of the dataset's family is taken for it
    (`--dataset lidc-toolbox` sweeps configs/lidc.yaml with data.dataset=lidc-toolbox)."""
    entry = registry_entry(opts.dataset)
    cfg = load_dataset_config(opts.dataset, opts.config, opts.overrides)
    space = load_space(opts.space or entry.space_path())
    changes: dict[str, Any] = {}
    if opts.samples is not None:
        changes["num_samples"] = opts.samples
    if opts.concurrent is not None:
        changes["max_concurrent"] = opts.concurrent
    resources = space.resources.model_dump()
    if opts.cpus_per_trial is not None:
        resources["cpu"] = opts.cpus_per_trial
    if opts.gpus_per_trial is not None:
        resources["gpu"] = opts.gpus_per_trial
    changes["resources"] = resources
    if opts.objective is not None:
        changes.update(objective_changes(opts.objective, space))
    raw = {**space.model_dump(mode="json"), **changes}
    raw["space"] = {k: {d["kind"]: d["value"]} for k, d in raw["space"].items()}
    space = SweepSpace.model_validate(raw)
    check_method_keys(space, cfg)
    # Catch values the config schema rejects before Ray starts: each range's lower end, each given point.
    for key, dist in space.space.items():
        cfg.updated({key: dist.value[0]})
    for point in space.first_points(cfg):
        cfg.updated(point)
    return cfg, space


def run_sweep(opts: SweepOptions, console=None) -> SweepOutcome:
    """Run (or with `opts.resume`, continue) a sweep; returns its trials and best config."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from .. import tracking
    from ..data.prepare import default_cache_dir, load_dataset

    started = time.perf_counter()
    root = storage_root(opts.storage)
    if opts.resume:
        name = opts.resume
        state_text = read_text(root, f"{name}/{STATE_FILE}")
        if state_text is None:
            raise SupuqError(f"no sweep named {name!r} under {root} (nothing to resume)")
        state = json.loads(state_text)
        cfg = validate_config(state["config"], "saved sweep config")
        space = SweepSpace.model_validate(state["space_raw"])
        uri = tracking.resolve_tracking_uri(opts.tracking_uri or state["tracking_uri"])
    else:
        cfg, space = prepare_sweep(opts)
        name = opts.name or f"{opts.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        if read_text(root, f"{name}/{STATE_FILE}") is not None:
            raise SupuqError(f"a sweep named {name!r} already exists under {root}; use --resume {name} or another --name")
        uri = tracking.resolve_tracking_uri(opts.tracking_uri)
        # Generate / check the dataset once in the driver, and hand trials its absolute cache path, so that
        # concurrent trials never race to write the same cache.
        load_dataset(cfg.data)
        if cfg.data.cache is None:
            cache = default_cache_dir(cfg.data.dataset, cfg.data).resolve()
            cfg = cfg.updated({"data.cache": str(cache)})

    experiment = tracking.experiment_name(cfg.data.dataset)
    tracking.init_store(uri, experiment)  # schema + experiment before any worker touches the store
    max_epochs = space.scheduler.max_epochs or cfg.train.epochs
    if max_epochs != cfg.train.epochs:
        cfg = cfg.updated({"train.epochs": max_epochs})

    # Tune warns each time a checkpoint forces an experiment snapshot; with one checkpoint per validation
    # that is every report, and the warning drowns the progress bar.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    def say(text: str) -> None:
        if console is not None:  # one unwrapped line: rich wraps at 80 columns when not on a terminal
            console.print(text, soft_wrap=True, markup=False)
        else:
            print(text, flush=True)

    owns_ray = connect_ray(opts.address)
    requested = False
    try:
        requested = check_resources(space, opts.wait_for_resources, say=say)
        if opts.resume:
            parent_id = state["parent_run_id"]
        else:
            parent_id = tracking.create_run(
                uri, experiment, run_name=name,
                tags={"supuq.kind": "sweep", "supuq.dataset": cfg.data.dataset, "supuq.objective": space.objective},
            )
            space_raw = space.model_dump(mode="json")
            space_raw["space"] = {k: {d["kind"]: d["value"]} for k, d in space_raw["space"].items()}
            state = {
                "parent_run_id": parent_id, "tracking_uri": uri, "config": cfg.model_dump(mode="json"),
                "space_raw": space_raw, "dataset": cfg.data.dataset, "created": time.time(),
            }
            write_text(root, f"{name}/{STATE_FILE}", json.dumps(state, indent=2))

        trainable = tune.with_resources(
            tune.with_parameters(
                trial_main, base=json.dumps(cfg.model_dump(mode="json")), uri=uri, experiment=experiment,
                parent_run_id=parent_id,
            ),
            {"cpu": space.resources.cpu, "gpu": space.resources.gpu},
        )
        # With an explicit filesystem Ray wants the path inside it (bucket/prefix), not the s3:// URI.
        fs, ray_root = ray_storage(root)
        progress = (TrialProgress(space.num_samples, space.metric, space.mode, max_epochs)
                    if console is not None else None)
        with tracking.tracked_run(uri, experiment, run_id=parent_id) as parent, (progress or contextlib.nullcontext()):
            if not opts.resume:
                parent.log_config(cfg)
                parent.log_params(space_params(space))
                parent.log_text(json.dumps(state["space_raw"], indent=2), "space.json")
            if opts.resume:
                tuner = tune.Tuner.restore(
                    f"{ray_root}/{name}", trainable, resume_unfinished=True, restart_errored=True,
                    storage_filesystem=fs,
                )
            else:
                # Multi-objective: Ray's OptunaSearch takes the metric and mode lists itself, and TuneConfig must
                # then name no metric (Tune would hand the searcher its single one); `objectives` has no ASHA.
                multi = space.objectives is not None
                searcher = NanSafeOptunaSearch(
                    metric=[o.metric for o in space.objectives] if multi else None,
                    mode=[o.mode for o in space.objectives] if multi else None,
                    seed=space.seed, points_to_evaluate=space.first_points(cfg) or None,
                )
                scheduler = (
                    ASHAScheduler(time_attr="epoch", max_t=max_epochs,
                                  grace_period=grace_period(space, max_epochs, say),
                                  reduction_factor=space.scheduler.reduction_factor, stop_last_trials=False)
                    if space.scheduler.type == "asha"
                    else FIFOScheduler()
                )
                tuner = tune.Tuner(
                    trainable,
                    param_space=param_space(space),
                    tune_config=tune.TuneConfig(
                        metric=None if multi else space.metric, mode=None if multi else space.mode,
                        num_samples=space.num_samples,
                        # Tune wraps the searcher in a ConcurrencyLimiter of this size; without the limit a
                        # custom searcher runs trials almost one at a time.
                        search_alg=searcher,
                        scheduler=scheduler, max_concurrent_trials=space.max_concurrent,
                        # A finished trial's worker process takes the next trial: no new process, no imports of
                        # torch / MLflow / supuq, no dataset load again (bench/sweep.py measures the difference).
                        reuse_actors=True,
                    ),
                    run_config=tune.RunConfig(
                        name=name, storage_path=ray_root, storage_filesystem=fs,
                        failure_config=tune.FailureConfig(max_failures=space.max_failures),
                        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                        verbose=0, callbacks=[progress] if progress else None,
                    ),
                )
            grid = tuner.fit()
            trials = rank_trials(summarize_trials(grid, space), space.metric, space.mode, max_epochs)
            complete = sum(t["status"] in ("TERMINATED", "ERROR") for t in trials) >= space.num_samples
            stopped = finalize_child_runs(uri, parent_id, trials, max_epochs, complete, space.metric)
            best, full_length = best_row(trials, space.metric, space.mode, max_epochs)
            if best is not None and not full_length:
                say(fallback_note(space.metric, max_epochs))
            if best is not None:
                best_cfg = cfg.updated(best["params"])
                text = dump_config(best_cfg)
                write_text(root, f"{name}/best.yaml", text)
                parent.log_text(text, "best.yaml")
                parent.set_tags({"supuq.best_trial": best["trial_id"], "supuq.best_run": best.get("run_id", ""),
                                 "supuq.sweep_name": name, "supuq.sweep_path": f"{root}/{name}"})
                parent.log_metrics({f"best/{k}": v for k, v in best["metrics"].items()}, step=0)
                if complete:
                    parent.log_params(best_params(best))
            parent.set_tags({"supuq.complete": str(complete).lower(), "supuq.asha_stopped": str(stopped),
                             "mlflow.note.content": sweep_description(name, trials, best, space, max_epochs)})
            if not complete:  # the parent run ends KILLED; the CLI prints how to resume
                finished = sum(t["status"] in ("TERMINATED", "ERROR") for t in trials)
                raise SweepInterrupted(name, finished, space.num_samples)
    finally:
        import ray

        if requested and ray.is_initialized():
            release_resources()
        if owns_ray:
            ray.shutdown()
    return SweepOutcome(name, f"{root}/{name}", parent_id, trials, best, complete, stopped,
                        time.perf_counter() - started, space.metric, max_epochs)


def grace_period(space: SweepSpace, max_epochs: int, say) -> int:
    """ASHA's grace period, clamped to `max_epochs` (Ray asserts grace_period <= max_t): a short sweep (e.g.
    --set train.epochs=1 against the space file's grace period of 2) runs with a one-line note instead."""
    grace = space.scheduler.grace_period
    if grace > max_epochs:
        say(f"ASHA grace period {grace} is above the sweep's {max_epochs} epoch(s): using {max_epochs} "
            "(no trial is stopped before its last epoch)")
        return max_epochs
    return grace
