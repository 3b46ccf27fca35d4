"""The sweep driver: `supuq sweep` as Optuna (TPE) + ASHA over `supuq.train.fit`, one MLflow child run per
trial, and `--resume` of an interrupted sweep.

Only `ray.tune` names are used (Train V2 is on in Ray 2.60: `ray.train.RunConfig`/`ray.train.report` break
Tune function trainables). The trainable (`sweep.trainable`) is a thin adapter: trial params -> pydantic config
-> `fit` with a reporter that logs to MLflow and calls `tune.report(metrics, checkpoint=...)`.

Sweep folder `<storage>/<name>/` holds Ray's experiment state, `supuq_sweep.json` (parent run id, tracking
URI, base config, space: what `--resume` needs) and `best.yaml` at the end.

The options and their checks before Ray starts are `sweep.options`; storage paths (local or s3://) and sweep
names `sweep.storage`; what `--resume` trusts and restores `sweep.resume`; the searcher `sweep.search`; the
progress bar, trial summaries and the child runs' final status `sweep.results`; the best trial
`sweep.selection`; joining Ray and checking (or waiting for) the cluster's resources `sweep.cluster`; trials'
work folders `sweep.workdirs`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..config import dump_config, validate_config
from ..errors import SupuqError
from .cluster import check_resources, connect_ray, release_resources
from .options import SweepOptions, prepare_sweep
from .results import (TrialProgress, best_params, finalize_child_runs, fit_noting_interrupts, space_params,
                      summarize_trials, sweep_description)
from .resume import LiveCallback, check_trusted, finished_trials, restore_tuner
from .selection import best_row, fallback_note, rank_trials
from .space import SweepSpace
from .search import NanSafeOptunaSearch, param_space
from .storage import check_storage_root, check_sweep_name, ray_storage, read_text, storage_root, write_text
from .trainable import trial_main
from .workdirs import remove_leftovers

__all__ = ["SweepInterrupted", "SweepOptions", "SweepOutcome", "grace_period", "prepare_sweep", "run_sweep"]

STATE_FILE = "supuq_sweep.json"


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


def run_sweep(opts: SweepOptions, console=None) -> SweepOutcome:
    """Run (or with `opts.resume`, continue) a sweep; returns its trials and best config.

    Every input is checked before a run is opened (sweep name, storage, config, space; on resume the folder's
    trust); every run opened is ended whatever fails later (the parent by `tracked_run`, children left RUNNING
    by `end_stale_runs`)."""
    from .. import tracking
    from ..data.prepare import default_cache_dir, load_dataset

    started = time.perf_counter()
    root = storage_root(opts.storage)
    check_storage_root(root)
    remove_leftovers()  # trial work folders on this host whose process died with an earlier driver
    if opts.resume:
        name = check_sweep_name(opts.resume, "--resume")
        check_trusted(root, name)  # before anything in the folder is read: Ray's state is pickled
        state_text = read_text(root, f"{name}/{STATE_FILE}")
        if state_text is None:
            raise SupuqError(f"no sweep named {name!r} under {root} (nothing to resume)")
        state = _saved_state(state_text, f"{root}/{name}/{STATE_FILE}")
        cfg = validate_config(state["config"], "saved sweep config")
        space = _saved_space(state["space_raw"], f"{root}/{name}/{STATE_FILE}")
        uri = tracking.resolve_tracking_uri(opts.tracking_uri or state["tracking_uri"])
    else:
        cfg, space = prepare_sweep(opts)
        name = check_sweep_name(opts.name) if opts.name else f"{opts.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
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

    def trainable_for(parent_id: str):
        from ray import tune

        objectives = tuple(o.metric for o in space.objectives) if space.objectives else (space.metric,)
        return tune.with_resources(
            tune.with_parameters(
                trial_main, base=json.dumps(cfg.model_dump(mode="json")), uri=uri, experiment=experiment,
                parent_run_id=parent_id, sweep=name, objectives=objectives,
            ),
            {"cpu": space.resources.cpu, "gpu": space.resources.gpu},
        )

    progress = (TrialProgress(space.num_samples, space.metric, space.mode, max_epochs)
                if console is not None else None)
    live = LiveCallback(name, progress)  # what Tune pickles: a name for the live bar, not the bar
    owns_ray = connect_ray(opts.address)
    requested = False
    try:
        requested = check_resources(space, opts.wait_for_resources, say=say)
        # With an explicit filesystem Ray wants the path inside it (bucket/prefix), not the s3:// URI.
        fs, ray_root = ray_storage(root)
        if opts.resume:
            parent_id = state["parent_run_id"]
            # Restored before the parent run is reopened: a state Ray cannot read leaves the runs as they were.
            tuner = restore_tuner(f"{ray_root}/{name}", trainable_for(parent_id), fs)
        else:
            parent_id = tracking.create_run(
                uri, experiment, run_name=name,
                tags={"supuq.kind": "sweep", "supuq.dataset": cfg.data.dataset, "supuq.objective": space.objective},
            )
        # From here on every failure ends the parent run (tracked_run) and the children left RUNNING.
        with tracking.tracked_run(uri, experiment, run_id=parent_id) as parent, \
                _ending_stale_children(uri, parent_id), (progress or contextlib.nullcontext()):
            if opts.resume:
                live.replay_finished(finished_trials(tuner))
            else:
                state = _new_state(parent_id, uri, cfg, space)
                write_text(root, f"{name}/{STATE_FILE}", json.dumps(state, indent=2))
                parent.log_config(cfg)
                parent.log_params(space_params(space))
                parent.log_text(json.dumps(state["space_raw"], indent=2), "space.json")
                tuner = _new_tuner(trainable_for(parent_id), space, cfg, name, ray_root, fs, max_epochs, live, say)
            grid, interrupted = fit_noting_interrupts(tuner)
            trials = rank_trials(summarize_trials(grid, space, max_epochs, interrupted), space.metric, space.mode,
                                 max_epochs)
            finished = sum(t["status"] in ("TERMINATED", "ERROR") for t in trials)
            complete = finished >= space.num_samples
            stopped = finalize_child_runs(uri, parent_id, trials, max_epochs, complete, space.metric)
            # best.yaml is chosen among the trials that ended, never from one an interrupt cut short.
            ended = [t for t in trials if t["status"] == "TERMINATED"]
            best, full_length = best_row(ended, space.metric, space.mode, max_epochs)
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
                raise SweepInterrupted(name, finished, space.num_samples)
    finally:
        import ray

        live.release()
        if requested and ray.is_initialized():
            release_resources()
        if owns_ray:
            ray.shutdown()
    return SweepOutcome(name, f"{root}/{name}", parent_id, trials, best, complete, stopped,
                        time.perf_counter() - started, space.metric, max_epochs)


def _saved_state(text: str, where: str) -> dict[str, Any]:
    """The sweep's own state file (JSON, never pickled), one line when it is not what supuq wrote."""
    try:
        state = json.loads(text)
    except json.JSONDecodeError as err:
        raise SupuqError(f"{where}: not valid JSON ({err.msg} at line {err.lineno})") from None
    missing = [k for k in ("parent_run_id", "tracking_uri", "config", "space_raw") if not isinstance(state, dict)
               or k not in state]
    if missing:
        raise SupuqError(f"{where}: not a supuq sweep state (missing {', '.join(missing)})")
    return state


def _saved_space(raw: Any, where: str) -> SweepSpace:
    try:
        return SweepSpace.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        raise SupuqError(f"{where}: saved search space invalid at {'.'.join(map(str, first['loc'])) or 'space'}: "
                         f"{first['msg']}") from None


def _new_state(parent_id: str, uri: str, cfg, space: SweepSpace) -> dict[str, Any]:
    """What `--resume` needs, saved as `supuq_sweep.json` in the sweep folder."""
    space_raw = space.model_dump(mode="json")
    space_raw["space"] = {k: {d["kind"]: d["value"]} for k, d in space_raw["space"].items()}
    return {"parent_run_id": parent_id, "tracking_uri": uri, "config": cfg.model_dump(mode="json"),
            "space_raw": space_raw, "dataset": cfg.data.dataset, "created": time.time()}


@contextlib.contextmanager
def _ending_stale_children(uri: str, parent_id: str):
    """On an error out of the block (not the interrupt the driver raises itself, after `finalize_child_runs`),
    end KILLED the child runs their trials left RUNNING: once Tune has given up, nothing will end them."""
    from .. import tracking

    try:
        yield
    except SweepInterrupted:
        raise
    except BaseException:
        with contextlib.suppress(Exception):  # the error in flight matters more than a cleanup that fails
            tracking.end_stale_runs(uri, parent_id, "KILLED")
        raise


def _new_tuner(trainable, space: SweepSpace, cfg, name: str, ray_root: str, fs, max_epochs: int, live, say):
    """Tune's Tuner for a new sweep: Optuna's TPE (multi-objective when the space has objectives), ASHA or
    FIFO, one worker process reused across trials."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    # Multi-objective: Ray's OptunaSearch takes the metric and mode lists itself, and TuneConfig must
    # then name no metric (Tune would hand the searcher its single one); `objectives` has no ASHA.
    multi = space.objectives is not None
    searcher = NanSafeOptunaSearch(
        metric=[o.metric for o in space.objectives] if multi else None,
        mode=[o.mode for o in space.objectives] if multi else None,
        seed=space.seed, points_to_evaluate=space.first_points(cfg) or None,
    )
    scheduler = (
        ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=grace_period(space, max_epochs, say),
                      reduction_factor=space.scheduler.reduction_factor, stop_last_trials=False)
        if space.scheduler.type == "asha"
        else FIFOScheduler()
    )
    return tune.Tuner(
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
            verbose=0, callbacks=[live],
        ),
    )


def grace_period(space: SweepSpace, max_epochs: int, say) -> int:
    """ASHA's grace period, clamped to `max_epochs` (Ray asserts grace_period <= max_t): a short sweep (e.g.
    --set train.epochs=1 against the space file's grace period of 2) runs with a one-line note instead."""
    grace = space.scheduler.grace_period
    if grace > max_epochs:
        say(f"ASHA grace period {grace} is above the sweep's {max_epochs} epoch(s): using {max_epochs} "
            "(no trial is stopped before its last epoch)")
        return max_epochs
    return grace
