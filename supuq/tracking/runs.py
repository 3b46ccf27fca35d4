"""MLflow tracking: store and experiment layout, runs, params, metrics, artifacts and queries.

This is the only module next to `tune.py`/`best.py`/`report.py` that talks to MLflow, so the training code stays
free of it (`train.fit` only sees a reporter callable).

Layout (DESIGN.md section 10): one experiment per dataset, named `supuq/<dataset>`. A sweep or retrain is a parent
run; each trial or seed is a child run linked by the `mlflow.parentRunId` tag.

Everything goes through an explicit `MlflowClient(tracking_uri=...)` instead of MLflow's fluent API: the fluent
API keeps a process-global tracking URI and active-run stack, which is wrong as soon as several trials share a
Ray worker process or a thread.

sqlite concurrency rule (STACK-NOTES.md): several processes opening a *fresh* sqlite store at the same time race
on the schema migration and can corrupt it for good. The driver therefore calls `init_store` once, before any
worker starts; after that, concurrent writers are safe (MLflow sets a 20 s sqlite busy timeout).

The local UI server (`serve_ui`, `wait_for_health`, `stop_server`) lives in `supuq.mlflow_server` and the run
queries in `supuq.tracking_queries`; both are re-exported here.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import SupuqError
from .mlflow_server import serve_ui, stop_server, wait_for_health  # re-exported: callers use tracking.serve_ui

if TYPE_CHECKING:  # mlflow takes ~1 s to import: only load it when tracking is actually used
    from mlflow import MlflowClient

    from .config import Config

DEFAULT_STORE = "mlflow"
"""Folder (relative to the working directory) of the default local store: mlflow.db and artifacts/."""

# MLflow's per-request limits (log_batch accepts at most 1000 metrics, 100 params, 100 tags).
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
_MAX_TAGS_PER_BATCH = 100

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------------------
# Store and experiment
# --------------------------------------------------------------------------------------------------------------


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: `uri`, else $MLFLOW_TRACKING_URI, else the local sqlite store under ./mlflow/.

    Relative sqlite paths are made absolute against the current directory, because Ray workers run in their own
    trial directories and would otherwise each open a different (empty) database.
    """
    chosen = uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not chosen:
        folder = Path.cwd() / DEFAULT_STORE
        folder.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{(folder / 'mlflow.db').resolve()}"
    path = _sqlite_path(chosen)
    if path is not None and not path.is_absolute():
        return f"sqlite:///{(Path.cwd() / path).resolve()}"
    return chosen


def default_artifact_root(uri: str | None = None) -> str:
    """Where a local sqlite store keeps its artifacts: `<cwd>/mlflow/artifacts` for the default store.

    For another sqlite file the artifacts sit next to it (`<db folder>/artifacts`) so that a store and its
    artifacts move together; with no `uri` (or a non-sqlite one) this is the default `<cwd>/mlflow/artifacts`.
    """
    path = _sqlite_path(uri) if uri else None
    if path is not None:
        return str((Path.cwd() / path).resolve().parent / "artifacts")
    return str((Path.cwd() / DEFAULT_STORE / "artifacts").resolve())


def experiment_name(dataset: str) -> str:
    """The experiment holding every run for one dataset."""
    return f"supuq/{dataset}"


def init_store(uri: str, experiment: str) -> str:
    """Prepare the store and get or create `experiment`; returns its id.

    Call once in the driver before any other process opens the store (see the module docstring). Raises
    `SupuqError` with one line naming the URI when the store cannot be opened or the server cannot be reached.
    """
    uri = resolve_tracking_uri(uri)
    _check_reachable(uri)
    try:
        # No mlflow.set_tracking_uri(): it also writes $MLFLOW_TRACKING_URI into os.environ, a hidden global that
        # outlives this store (e.g. leaks between tests). Every function here takes the URI explicitly instead.
        client = _client(uri)
        # Opening a sqlite store creates or migrates the schema; a read forces that here, in one process.
        client.search_experiments(max_results=1)
        return _get_or_create_experiment(client, uri, experiment)
    except SupuqError:
        raise
    except Exception as err:  # MlflowException, sqlalchemy, OSError: all mean "this store is unusable"
        raise SupuqError(f"MLflow tracking store {uri}: {_one_line(err)}") from err


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :]
    if not rest or rest == ":memory:":
        return None
    return Path(rest.split("?", 1)[0])


def _check_reachable(uri: str) -> None:
    """Fail fast with one line for a store MLflow would otherwise retry against for minutes."""
    path = _sqlite_path(uri)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SupuqError(f"MLflow tracking store {uri}: cannot create {path.parent}: {err.strerror}") from None
        return
    if uri.startswith(("http://", "https://")):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=10) as response:
                if response.status != 200:
                    raise SupuqError(f"MLflow server {uri}: {health} answered HTTP {response.status}")
        except urllib.error.HTTPError as err:
            raise SupuqError(f"MLflow server {uri}: {health} answered HTTP {err.code}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise SupuqError(f"MLflow server {uri} is not reachable ({reason})") from None


def _client(uri: str) -> "MlflowClient":
    from mlflow import MlflowClient

    # MLflow caches the underlying store (and its sqlalchemy engine) per URI, so a client per call is cheap.
    return MlflowClient(tracking_uri=uri)


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


def _get_or_create_experiment(client: "MlflowClient", uri: str, name: str) -> str:
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise SupuqError(
                f"MLflow experiment {name!r} (id {found.experiment_id}) in {uri} is deleted: restore it with "
                f"`MLFLOW_TRACKING_URI={uri} mlflow experiments restore --experiment-id {found.experiment_id}` "
                "or remove it for good with `mlflow gc`"
            )
        return found.experiment_id
    # On a local sqlite store the artifacts go to a folder we choose; a server picks its own (proxied) location.
    location = None
    if _sqlite_path(uri) is not None:
        location = str(Path(default_artifact_root(uri)) / _sanitize(name))
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as err:
        # Another driver created it between our lookup and create: use theirs.
        if err.error_code == "RESOURCE_ALREADY_EXISTS":
            found = client.get_experiment_by_name(name)
            if found is not None:
                return found.experiment_id
        raise


def _experiment_id(client: "MlflowClient", name: str) -> str | None:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else None


def _one_line(err: BaseException) -> str:
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    first = str(text).strip().splitlines()[0] if str(text).strip() else type(err).__name__
    return first[:300]


# --------------------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------------------


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

        from .config import dump_config

        params = [Param(key, _param_value(value)) for key, value in cfg.flat().items()]
        for start in range(0, len(params), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[start : start + _MAX_PARAMS_PER_BATCH])
        self.log_text(dump_config(cfg), "config.yaml")

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Extra params outside the config (e.g. sweep settings)."""
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
    client = _client(uri)
    if run_id is not None:
        from .tracking_queries import get_run

        existing = get_run(uri, run_id)
        experiment_id = existing.info.experiment_id
        # Reopen it: a resumed run is running again until this block ends.
        client.update_run(run_id, status="RUNNING")
        if tags:
            TrackedRun(client, run_id, experiment_id).set_tags(tags)
    else:
        experiment_id = _get_or_create_experiment(client, uri, experiment)
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
        _log.warning("could not mark MLflow run %s as %s: %s", run_id, status, _one_line(err))


def create_run(uri: str, experiment: str, run_name: str | None = None, tags: Mapping[str, Any] | None = None) -> str:
    """Create a run that outlives one block (a sweep's parent run, resumed across driver restarts) and
    return its id; it is RUNNING until a `tracked_run(run_id=...)` block or `end_run` closes it."""
    from mlflow.tracking.context.registry import resolve_tags

    uri = resolve_tracking_uri(uri)
    client = _client(uri)
    experiment_id = _get_or_create_experiment(client, uri, experiment)
    all_tags = resolve_tags({str(k): str(v) for k, v in (tags or {}).items()})
    return client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id


def end_run(uri: str, run_id: str, status: str, tags: Mapping[str, Any] | None = None) -> None:
    """Set a run's final status (FINISHED | FAILED | KILLED) from outside it, with optional tags (e.g. why)."""
    client = _client(resolve_tracking_uri(uri))
    for key, value in (tags or {}).items():
        client.set_tag(run_id, str(key), str(value))
    client.set_terminated(run_id, status=status)


def archive_run(uri: str, run_id: str, reason: str) -> None:
    """End a run KILLED with `reason` and soft-delete it: it leaves the experiment's listings but stays
    recoverable (`mlflow gc` is what would really delete it)."""
    end_run(uri, run_id, "KILLED", {"supuq.stop_reason": reason})
    _client(resolve_tracking_uri(uri)).delete_run(run_id)


def end_stale_runs(uri: str, parent_run_id: str, status: str = "KILLED") -> int:
    """Mark the children of `parent_run_id` still RUNNING as `status`; returns how many.

    For runs whose process died without reaching `tracked_run`'s exit (a Ray trial stopped by ASHA or a killed
    worker); call it from the driver once the workers are gone.
    """
    client = _client(resolve_tracking_uri(uri))
    from .tracking_queries import child_runs

    stale = [r for r in child_runs(uri, parent_run_id) if r.info.status == "RUNNING"]
    for run in stale:
        client.set_terminated(run.info.run_id, status=status)
    return len(stale)


def standard_tags(cfg: "Config") -> dict[str, str]:
    """Tags every supuq run carries: method, dataset, package version and, inside a git checkout, the commit."""
    from . import __version__

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

    def __init__(self, run: TrackedRun, quiet: bool = False):
        self.run = run
        self.quiet = quiet  # read by the trainer to silence its progress bar
        self.last_checkpoint: str | None = None

    def __call__(self, metrics: Mapping[str, Any], epoch: int, checkpoint_path: str | None = None) -> None:
        # Only numbers are metrics; anything else a trainer puts in its dict (a phase name, a list) is skipped.
        self.run.log_metrics({k: v for k, v in metrics.items() if _is_number(v)}, step=epoch)
        if checkpoint_path is not None:
            self.last_checkpoint = str(checkpoint_path)

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


_QUERIES = ("child_runs", "download_artifact", "find_runs", "get_run", "search_runs")


def __getattr__(name: str) -> Any:
    """`tracking.child_runs` etc.: the run queries live in `supuq.tracking_queries`, which imports this module's
    client and URI helpers, so they are looked up on first use rather than imported here (no import cycle)."""
    if name in _QUERIES:
        from . import tracking_queries

        return getattr(tracking_queries, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "DEFAULT_STORE",
    "MlflowReporter",
    "TrackedRun",
    "child_runs",
    "default_artifact_root",
    "download_artifact",
    "end_stale_runs",
    "experiment_name",
    "find_runs",
    "get_run",
    "init_store",
    "resolve_tracking_uri",
    "search_runs",
    "serve_ui",
    "standard_tags",
    "stop_server",
    "tracked_run",
    "wait_for_health",
]
