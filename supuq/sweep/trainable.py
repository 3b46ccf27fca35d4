"""The Ray Tune trainable: one trial = one `supuq.train.fit` of the base config updated with the trial's
params, logged to its own MLflow child run and reported to Tune (metrics + checkpoint) at each validation.

It runs in Ray worker processes; with `reuse_actors` one worker runs trial after trial, so the dataset is
loaded once per worker.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any

from ..config import Config, validate_config
from .results import FAILED_KEY, TRIAL_TAG, trial_summary
from .workdirs import trial_workdir

def trial_main(params: dict[str, Any], base: str, uri: str, experiment: str, parent_run_id: str,
               sweep: str = "sweep", objectives: tuple[str, ...] = ("val/ged",)) -> None:
    """Ray Tune function trainable: one trial = one `fit` of the base config updated with `params`.

    A trial whose training diverges (NaN or infinite loss) ends at once, without Ray's retry (divergence is
    deterministic: a retry would diverge again and log its epochs twice): its run is FAILED with the reason as
    `supuq.stop_reason`, and its last Tune result carries the reason under `FAILED_KEY` with `objectives` NaN,
    which the driver (`results.summarize_trials`) and the searcher read as a failed trial."""
    import ray
    import torch
    from ray import tune

    from .. import tracking
    from ..errors import TrainingDiverged
    from ..train import fit

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
    try:
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
                # The UI's description until the driver writes the trial's result there (finalize_child_runs).
                run.set_tags({"mlflow.note.content": trial_summary({"params": params}, "", cfg.train.epochs)})
            # The worker process too: with reuse_actors one process runs trial after trial (same pid on several runs).
            run.set_tags({"supuq.config": json.dumps(cfg.model_dump(mode="json")), "supuq.worker_pid": os.getpid()})
            # A resumed trial (driver killed, node lost) restarts from its last checkpoint, at or before the last
            # epoch its run holds: those epochs are not logged again.
            logged = tracking.MlflowReporter.last_logged_epoch(run) if run_id is not None else 0
            log = tracking.MlflowReporter(run, quiet=True, logged_through=logged)
            workdir = stack.enter_context(trial_workdir(sweep))

            def report(metrics: dict[str, float], epoch: int, checkpoint_path: str | None) -> None:
                log(metrics, epoch, checkpoint_path)
                # Tune hears only validation epochs (each with its checkpoint): the searcher and ASHA need the
                # validation metric in every result, and ASHA's time axis is the "epoch" key, not the report count.
                if any(key.startswith("val/") for key in metrics):
                    saved = tune.Checkpoint.from_directory(os.path.dirname(checkpoint_path)) if checkpoint_path else None
                    tune.report({**metrics, "epoch": epoch, "node_id": node_id}, checkpoint=saved)

            report.quiet = True  # type: ignore[attr-defined]
            try:
                fit(cfg, data, reporter=report, checkpoint_dir=workdir, resume_from=resume_dir)
            except TrainingDiverged as err:
                run.set_tags({"supuq.stop_reason": err.reason})
                raise  # through tracked_run, which ends the run FAILED
    except TrainingDiverged as err:
        # Tune would retry a raised error (FailureConfig.max_failures is for lost nodes); a result that says
        # the trial failed ends it for good. Its objectives are NaN so that Tune's metric check passes.
        tune.report({**dict.fromkeys(objectives, math.nan), "epoch": err.epoch, "node_id": node_id,
                     FAILED_KEY: err.reason})


_WORKER_DATASETS: dict[str, Any] = {}
"""The dataset a Ray worker process has loaded, by its data config (at most one: a sweep has one dataset)."""


def _worker_dataset(cfg: Config) -> Any:
    """The trial's dataset, loaded once per worker process. With `reuse_actors` a worker runs trial after trial
    on the same data (only hyperparameters change between trials), so later trials skip the cache read or the
    synthetic regeneration. fit only reads the dataset (it copies the rows it trains on)."""
    from ..data.prepare import load_dataset

    data_cfg = _reachable_data(cfg).data
    key = data_cfg.model_dump_json()
    if key not in _WORKER_DATASETS:
        _WORKER_DATASETS.clear()
        _WORKER_DATASETS[key] = load_dataset(data_cfg)
    return _WORKER_DATASETS[key]


def _reachable_data(cfg: Config) -> Config:
    """On a worker that cannot see the driver's synthetic cache (another node, no shared disk), regenerate the
    synthetic set locally: it is deterministic for its parameters."""
    from ..data.registry import dataset as registry_entry

    if registry_entry(cfg.data.dataset).generated and cfg.data.cache and not Path(cfg.data.cache).is_dir():
        return cfg.updated({"data.cache": None})
    return cfg
