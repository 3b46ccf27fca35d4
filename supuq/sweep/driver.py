"""Ray Tune adapter: `supuq sweep` as Optuna (TPE) + ASHA over `supuq.train.fit`, one MLflow child run per trial.

Only `ray.tune` names are used (Train V2 is on in Ray 2.60: `ray.train.RunConfig`/`ray.train.report` break
Tune function trainables). The trainable is a thin adapter: trial params -> pydantic config -> `fit` with a
reporter that logs to MLflow and calls `tune.report(metrics, checkpoint=...)`.

Sweep folder `<storage>/<name>/` holds Ray's experiment state, `supuq_sweep.json` (parent run id, tracking
URI, base config, space: what `--resume` needs) and `best.yaml` at the end.

Storage paths (local or s3://) are `supuq.sweep_storage`; the progress bar, trial summaries, the child runs'
final status and the best trial are `supuq.sweep_results`; joining Ray and checking (or waiting for) the
cluster's resources are `supuq.ray_cluster`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from .config import Config, default_config_path, dump_config, load_config, validate_config
from .errors import ConfigError, SupuqError
from .ray_cluster import check_resources, connect_ray, release_resources
from .sweep_results import TRIAL_TAG, TrialProgress, finalize_child_runs, pick_best, summarize_trials
from .sweep_space import SweepSpace, default_space_path, load_space, objective_changes
from .sweep_storage import ray_storage, read_text, storage_root, write_text

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
    trials: list[dict[str, Any]]
    best: dict[str, Any] | None
    complete: bool
    stopped_early: int
    seconds: float


# ----------------------------------------------------------------------------------------------- trainable


def trial_main(params: dict[str, Any], base: str, uri: str, experiment: str, parent_run_id: str) -> None:
    """Ray Tune function trainable: one trial = one `fit` of the base config updated with `params`."""
    import ray
    import torch
    from ray import tune

    from . import tracking
    from .train import fit

    ctx = tune.get_context()
    trial_id, trial_name = ctx.get_trial_id(), ctx.get_trial_name()
    cfg = validate_config(json.loads(base)).updated(params)
    cpus = int(ctx.get_trial_resources().required_resources.get("CPU", 1))
    torch.set_num_threads(max(1, cpus))
    data = _worker_dataset(cfg)

    existing = tracking.child_runs(uri, parent_run_id, filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}'")
    run_id = existing[0].info.run_id if existing else None
    # The Ray node this attempt runs on (a retried trial's tag names the node of its last attempt): on a
    # cluster whose nodes share an IP (several nodes per host), only the node id tells them apart.
    node_id = ray.get_runtime_context().get_node_id()
    tags = {**tracking.standard_tags(cfg), TRIAL_TAG: trial_id, "supuq.kind": "trial", "supuq.node_id": node_id}
    with contextlib.ExitStack() as stack:
        resume_dir = None
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            resume_dir = stack.enter_context(checkpoint.as_directory())
        run = stack.enter_context(
            tracking.tracked_run(uri, experiment, run_name=trial_name, parent_run_id=parent_run_id, tags=tags,
                                 run_id=run_id)
        )
        if run_id is None:
            run.log_config(cfg)
        # The worker process too: with reuse_actors one process runs trial after trial (same pid on several runs).
        run.set_tags({"supuq.config": json.dumps(cfg.model_dump(mode="json")), "supuq.worker_pid": os.getpid()})
        log = tracking.MlflowReporter(run, quiet=True)
        workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="supuq-trial-"))

        def report(metrics: dict[str, float], epoch: int, checkpoint_path: str | None) -> None:
            log(metrics, epoch, checkpoint_path)
            # Tune hears only validation epochs (each with its checkpoint): the searcher and ASHA need the
            # validation metric in every result, and ASHA's time axis is the "epoch" key, not the report count.
            if any(key.startswith("val/") for key in metrics):
                saved = tune.Checkpoint.from_directory(os.path.dirname(checkpoint_path)) if checkpoint_path else None
                tune.report({**metrics, "epoch": epoch, "node_id": node_id}, checkpoint=saved)

        report.quiet = True  # type: ignore[attr-defined]
        fit(cfg, data, reporter=report, checkpoint_dir=workdir, resume_from=resume_dir)


_WORKER_DATASETS: dict[str, Any] = {}
"""The dataset a Ray worker process has loaded, by its data config (at most one: a sweep has one dataset)."""


def _worker_dataset(cfg: Config) -> Any:
    """The trial's dataset, loaded once per worker process. With `reuse_actors` a worker runs trial after trial
    on the same data (only hyperparameters change between trials), so later trials skip the cache read or the
    synthetic regeneration. fit only reads the dataset (it copies the rows it trains on)."""
    from .data.prepare import load_dataset

    data_cfg = _reachable_data(cfg).data
    key = data_cfg.model_dump_json()
    if key not in _WORKER_DATASETS:
        _WORKER_DATASETS.clear()
        _WORKER_DATASETS[key] = load_dataset(data_cfg)
    return _WORKER_DATASETS[key]


def _reachable_data(cfg: Config) -> Config:
    """On a worker that cannot see the driver's synthetic cache (another node, no shared disk), regenerate the
    synthetic set locally: it is deterministic for its parameters."""
    if cfg.data.dataset == "synthetic" and cfg.data.cache and not Path(cfg.data.cache).is_dir():
        return cfg.updated({"data.cache": None})
    return cfg


# ------------------------------------------------------------------------------------------------- driver


def prepare_sweep(opts: SweepOptions) -> tuple[Config, SweepSpace]:
    """Load and validate the config and search space (before Ray starts), with CLI overrides applied."""
    from .config import DATASETS

    if opts.dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {opts.dataset!r}; choose one of {', '.join(DATASETS)}")
    cfg = load_config(opts.config or default_config_path(opts.dataset), opts.overrides)
    if cfg.data.dataset != opts.dataset:
        raise ConfigError(f"config is for dataset {cfg.data.dataset!r}, not {opts.dataset!r}")
    space = load_space(opts.space or default_space_path(opts.dataset))
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
    # Catch values the config schema rejects before Ray starts: each range's lower end, each given point.
    for key, dist in space.space.items():
        cfg.updated({key: dist.value[0]})
    for point in space.first_points(cfg):
        cfg.updated(point)
    return cfg, space


NCC_WORST = -1.0
"""What the searcher is told where val/ncc is NaN: NCC lies in [-1, 1], so -1 is its worst value."""


def searchable(result: dict[str, Any]) -> dict[str, Any]:
    """A copy of a trial result for the searcher: a NaN val/ncc becomes `NCC_WORST`."""
    import math

    value = result.get("val/ncc")
    if isinstance(value, float) and math.isnan(value):
        return {**result, "val/ncc": NCC_WORST}
    return result


class NanSafeOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, told `NCC_WORST` instead of a NaN NCC: Optuna would otherwise fail that trial (a
    NaN objective is not acceptable to `study.tell`) and TPE would learn nothing from it. Only the searcher
    sees the substitute; Tune's results and MLflow keep the NaN."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        super().on_trial_result(trial_id, searchable(result))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        super().on_trial_complete(trial_id, searchable(result) if result else result, error)


def param_space(space: SweepSpace) -> dict[str, Any]:
    from ray import tune

    make = {
        "loguniform": lambda v: tune.loguniform(*v),
        "uniform": lambda v: tune.uniform(*v),
        "int": lambda v: tune.randint(int(v[0]), int(v[1]) + 1),
        "choice": lambda v: tune.choice(v),
    }
    return {key: make[dist.kind](dist.value) for key, dist in space.space.items()}


def run_sweep(opts: SweepOptions, console=None) -> SweepOutcome:
    """Run (or with `opts.resume`, continue) a sweep; returns its trials and best config."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    from . import tracking
    from .data.prepare import default_cache_dir, load_dataset

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
        progress = TrialProgress(space.num_samples, space.metric, space.mode) if console is not None else None
        with tracking.tracked_run(uri, experiment, run_id=parent_id) as parent, (progress or contextlib.nullcontext()):
            if not opts.resume:
                parent.log_config(cfg)
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
                    ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=space.scheduler.grace_period,
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
            trials = summarize_trials(grid, space)
            complete = sum(t["status"] in ("TERMINATED", "ERROR") for t in trials) >= space.num_samples
            stopped = finalize_child_runs(uri, parent_id, trials, max_epochs, complete)
            best = pick_best(trials, space, max_epochs)
            if best is not None:
                best_cfg = cfg.updated(best["params"])
                text = dump_config(best_cfg)
                write_text(root, f"{name}/best.yaml", text)
                parent.log_text(text, "best.yaml")
                parent.set_tags({"supuq.best_trial": best["trial_id"], "supuq.best_run": best.get("run_id", ""),
                                 "supuq.sweep_name": name, "supuq.sweep_path": f"{root}/{name}"})
                parent.log_metrics({f"best/{k}": v for k, v in best["metrics"].items()}, step=0)
            parent.set_tags({"supuq.complete": str(complete).lower(), "supuq.asha_stopped": str(stopped)})
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
                        time.perf_counter() - started)
