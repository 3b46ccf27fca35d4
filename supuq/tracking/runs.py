"""MLflow runs: create, resume and close runs with a status that says how they ended; params, metrics,
artifacts and tags in batches; the reporter that `train.fit` logs each epoch through.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import SupuqError
from .queries import child_runs, get_run
from .store import client_for, get_or_create_experiment, one_line, resolve_tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from ..config import Config

# MLflow's per-request limits (log_batch accepts at most 1000 metrics, 100 params, 100 tags).
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
_MAX_TAGS_PER_BATCH = 100

_log = logging.getLogger(__name__)

def _param_value(value: Any) -> str:
    """Params are strings in MLflow; non-strings are written as JSON so YAML/JSON parses them back unchanged.

    (`str(None)` would give "None", which parses back as the string "None", not null.)
    """
    if isinstance(value, str):
        return value
    return json.dumps(value)


class TrackedRun:
    """One MLflow run, addressed explicitly by id; created by `tracked_run`."""

    def __init__(self, client: "MlflowClient", run_id: str, experiment_id: str):
        self.client = client
        self.run_id = run_id
        self.experiment_id = experiment_id

    def __repr__(self) -> str:
        return f"TrackedRun(run_id={self.run_id!r}, experiment_id={self.experiment_id!r})"

    def log_config(self, cfg: "Config") -> None:
        """Params = the flattened config (dotted keys); the full YAML is logged too as `config.yaml`.

        The YAML artifact is the exact config to rebuild a run from; the params are for search and comparison.
        """
        from mlflow.entities import Param

        from ..config import dump_config

        params = [Param(key, _param_value(value)) for key, value in cfg.flat().items()]
        for start in range(0, len(params), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + _MAX_PARAMS_PER_BATCH])
        self.log_text(dump_config(cfg), "config.yaml")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (written as `_param_value` does) in batches of 100; MLflow refuses to change one."""
        from mlflow.entities import Param

        items = [Param(str(key), _param_value(value)) for key, value in params.items()]
        for start in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _MAX_PARAMS_PER_BATCH])

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        """Log a dict of scalars at `step` in as few requests as possible (one per 1000 metrics).

        Values go through `float()` (so 0-d tensors and numpy scalars work); `None` entries are skipped because
        a metric that was not computed this epoch is absent, not zero. NaN and inf are kept: MLflow stores them,
        and a diverged loss should be visible.
        """
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(str(key), float(value), now, int(step)) for key, value in metrics.items() if value is not None]
        for start in range(0, len(batch), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=batch[start : start + _MAX_METRICS_PER_BATCH])

    def log_artifact(self, path: str | os.PathLike[str], subdir: str | None = None) -> None:
        """Upload a file, or a folder's contents, under the run's artifacts (optionally inside `subdir`)."""
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path=subdir)
        elif path.is_file():
            self.client.log_artifact(self.run_id, str(path), artifact_path=subdir)
        else:
            raise SupuqError(f"cannot log artifact {path}: no such file or folder")

    def log_text(self, text: str, name: str) -> None:
        """Write `text` to the artifact `name` (a relative path such as "results/table.md")."""
        self.client.log_text(self.run_id, text, name)

    def log_dict(self, data: Mapping[str, Any], name: str) -> None:
        """Write `data` as JSON or YAML (chosen by the extension of `name`)."""
        self.client.log_dict(self.run_id, dict(data), name)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(key), str(value)) for key, value in tags.items()]
        for start in range(0, len(items), _MAX_TAGS_PER_BATCH):
            self.client.log_batch(self.run_id, tags=items[start : start + _MAX_TAGS_PER_BATCH])


@contextmanager
def tracked_run(
    uri: str,
    experiment: str,
    run_name: str | None = None,
    parent_run_id: str | None = None,
    tags: Mapping[str, Any] | None = None,
    run_id: str | None = None,
) -> Iterator[TrackedRun]:
    """Create (or, with `run_id`, resume) a run and close it with a status that says how the block ended.

    FINISHED when the block completes, KILLED on KeyboardInterrupt (and other non-Exception exits such as
    SystemExit), FAILED on any other exception, which is re-raised. So no run is left RUNNING by an ordinary
    error; only a process killed outright (kill -9, a Ray actor torn down) can leave one, and
    `end_stale_runs` closes those.

    `experiment` is a name; it is created if missing, but in multi-process use the driver must have called
    `init_store` first.
    """
    from mlflow.tracking.context.registry import resolve_tags

    uri = resolve_tracking_uri(uri)
    client = client_for(uri)
    if run_id is not None:
        existing = get_run(uri, run_id)
        experiment_id = existing.info.experiment_id
        # Reopen it: a resumed run is running again until this block ends.
        client.update_run(run_id, status="RUNNING")
        if tags:
            TrackedRun(client, run_id, experiment_id).set_tags(tags)
    else:
        experiment_id = get_or_create_experiment(client, uri, experiment)
        # resolve_tags adds what the fluent API would (user, source name and type).
        all_tags = resolve_tags({str(k): str(v) for k, v in (tags or {}).items()})
        if parent_run_id is not None:
            all_tags["mlflow.parentRunId"] = parent_run_id
        run_id = client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
    run = TrackedRun(client, run_id, experiment_id)
    try:
        yield run
    except Exception:
        _terminate(client, run_id, "FAILED", propagating=True)
        raise
    except BaseException:
        _terminate(client, run_id, "KILLED", propagating=True)
        raise
    else:
        _terminate(client, run_id, "FINISHED", propagating=False)


def _terminate(client: "MlflowClient", run_id: str, status: str, propagating: bool) -> None:
    """Set the final status; while another exception propagates, a failure here must not hide it."""
    try:
        client.set_terminated(run_id, status=status)
    except Exception as err:
        if not propagating:
            raise
        _log.warning("could not mark MLflow run %s as %s: %s", run_id, status, one_line(err))


def create_run(uri: str, experiment: str, run_name: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
    """Create a run that outlives one block (a sweep's parent run, resumed across driver restarts) and
    return its id; it is RUNNING until a `tracked_run(run_id=...)` block or `end_run` closes it."""
    from mlflow.tracking.context.registry import resolve_tags

    uri = resolve_tracking_uri(uri)
    client = client_for(uri)
    experiment_id = get_or_create_experiment(client, uri, experiment)
    all_tags = resolve_tags({str(k): str(v) for k, v in (tags or {}).items()})
    return client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id


def end_run(uri: str, run_id: str, status: str, tags: Mapping[str, Any] | None = None) -> None:
    """Set a run's final status (FINISHED | FAILED | KILLED) from outside it, with optional tags (e.g. why)."""
    client = client_for(resolve_tracking_uri(uri))
    for key, value in (tags or {}).items():
        client.set_tag(run_id, str(key), str(value))
    client.set_terminated(run_id, status=status)


def archive_run(uri: str, run_id: str, reason: str) -> None:
    """End a run KILLED with `reason` and soft-delete it: it leaves the experiment's listings but stays
    recoverable (`mlflow gc` is what would really delete it)."""
    end_run(uri, run_id, "KILLED", {"supuq.stop_reason": reason})
    client_for(resolve_tracking_uri(uri)).delete_run(run_id)


def end_stale_runs(uri: str, parent_run_id: str, status: str = "KILLED") -> int:
    """Mark the children of `parent_run_id` still RUNNING as `status`; returns how many.

    For runs whose process died without reaching `tracked_run`'s exit (a Ray trial stopped by ASHA or a killed
    worker); call it from the driver once the workers are gone.
    """
    client = client_for(resolve_tracking_uri(uri))
    stale = [r for r in child_runs(uri, parent_run_id) if r.info.status == "RUNNING"]
    for run in stale:
        client.set_terminated(run.info.run_id, status=status)
    return len(stale)


def standard_tags(cfg: "Config") -> dict[str, str]:
    """Tags every supuq run carries: method, dataset, package version and, inside a git checkout, the commit."""
    from .. import __version__

    tags = {
        "supuq.method": cfg.model.method,
        "supuq.dataset": cfg.data.dataset,
        "supuq.version": __version__,
    }
    commit = _git_commit()
    if commit:
        tags["supuq.git_commit"] = commit
        # The name the MLflow UI shows in its "Source" column.
        tags["mlflow.source.git.commit"] = commit
    return tags


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, cwd=Path.cwd()
        )
    except (OSError, subprocess.SubprocessError):  # no git binary, or it hung
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


class MlflowReporter:
    """Reporter for `train.fit`: logs each epoch's metrics to `run` at step=epoch.

    Checkpoints are not uploaded every epoch (that would copy the model N times); the last path seen is kept
    in `last_checkpoint`, and `log_last_checkpoint()` uploads it once at the end if wanted.
    """

    def __init__(self, run: TrackedRun, quiet: bool = False, logged_through: int = 0):
        self.run = run
        self.quiet = quiet  # read by the trainer to silence its progress bar
        # A resumed run already holds epochs 1..logged_through: the training resumed from an earlier checkpoint
        # runs them again (exactly, `train.fit`'s resume), and logging them twice would repeat MLflow steps.
        self.logged_through = logged_through
        self.last_checkpoint: str | None = None

    def __call__(self, metrics: Mapping[str, Any], epoch: int, checkpoint_path: str | None = None) -> None:
        if checkpoint_path is not None:
            self.last_checkpoint = str(checkpoint_path)
        if epoch <= self.logged_through:
            return
        # Only numbers are metrics; anything else a trainer puts in its dict (a phase name, a list) is skipped.
        self.run.log_metrics({k: v for k, v in metrics.items() if _is_number(v)}, step=epoch)

    @staticmethod
    def last_logged_epoch(run: TrackedRun, key: str = "train/total") -> int:
        """The last epoch a (resumed) run holds for `key`, a metric `fit` logs every epoch; 0 for none."""
        return max((m.step for m in run.client.get_metric_history(run.run_id, key)), default=0)

    def log_last_checkpoint(self, subdir: str = "checkpoint") -> str | None:
        """Upload the last checkpoint reported (if any); returns its local path."""
        if self.last_checkpoint is not None and Path(self.last_checkpoint).exists():
            self.run.log_artifact(self.last_checkpoint, subdir=subdir)
        return self.last_checkpoint


def _is_number(value: Any) -> bool:
    """True for anything `float()` accepts except strings ("1.5" is text, not a measurement)."""
    if value is None or isinstance(value, (str, bytes)):
        return False
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
