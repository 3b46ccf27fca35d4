"""MLflow integration: the store (`store`), runs and the epoch reporter (`runs`), run queries (`queries`) and
the local UI server (`server`). The core never imports this package; workflows, the sweep and reports do.

Explicit re-exports only, so that callers can write `tracking.child_runs(...)`.
"""

from .queries import child_runs, download_artifact, find_runs, get_run, search_runs
from .runs import (
    MlflowReporter,
    TrackedRun,
    archive_run,
    create_run,
    end_run,
    end_stale_runs,
    standard_tags,
    tracked_run,
)
from .server import serve_ui, stop_server, wait_for_health
from .store import (
    DEFAULT_STORE,
    client_for,
    default_artifact_root,
    experiment_name,
    init_store,
    open_store,
    resolve_tracking_uri,
)

__all__ = [
    "DEFAULT_STORE",
    "MlflowReporter",
    "TrackedRun",
    "archive_run",
    "child_runs",
    "client_for",
    "create_run",
    "default_artifact_root",
    "download_artifact",
    "end_run",
    "end_stale_runs",
    "experiment_name",
    "find_runs",
    "get_run",
    "init_store",
    "open_store",
    "resolve_tracking_uri",
    "search_runs",
    "serve_ui",
    "standard_tags",
    "stop_server",
    "tracked_run",
    "wait_for_health",
]
