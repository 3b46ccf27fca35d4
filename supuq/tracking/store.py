"""The MLflow tracking store: which URI to use, where a local store keeps its artifacts, opening it once
(schema and experiment) and failing fast with one line when it cannot be reached.

Layout (see docs/architecture.md): one experiment per dataset, named `supuq/<dataset>`. A sweep or retrain is a
parent run; each trial or seed is a child run linked by the `mlflow.parentRunId` tag.

Everything goes through an explicit `MlflowClient(tracking_uri=...)` instead of MLflow's fluent API: the fluent
API keeps a process-global tracking URI and active-run stack, which is wrong as soon as several trials share a
Ray worker process or a thread.

sqlite concurrency rule: several processes opening a *fresh* sqlite store at the same time race on the schema
migration and can corrupt it for good. The driver therefore calls `init_store` once, before any worker starts;
after that, concurrent writers are safe (MLflow sets a 20 s sqlite busy timeout).
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SupuqError

if TYPE_CHECKING:  # mlflow takes ~1 s to import: only load it when tracking is actually used
    from mlflow import MlflowClient

DEFAULT_STORE = "mlflow"
"""Folder (relative to the working directory) of the default local store: mlflow.db and artifacts/."""




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
    path = sqlite_path(chosen)
    if path is not None and not path.is_absolute():
        return f"sqlite:///{(Path.cwd() / path).resolve()}"
    return chosen


def default_artifact_root(uri: str | None = None) -> str:
    """Where a local sqlite store keeps its artifacts: `<cwd>/mlflow/artifacts` for the default store.

    For another sqlite file the artifacts sit next to it (`<db folder>/artifacts`) so that a store and its
    artifacts move together; with no `uri` (or a non-sqlite one) this is the default `<cwd>/mlflow/artifacts`.
    """
    path = sqlite_path(uri) if uri else None
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
    check_reachable(uri)
    try:
        # No mlflow.set_tracking_uri(): it also writes $MLFLOW_TRACKING_URI into os.environ, a hidden global that
        # outlives this store (e.g. leaks between tests). Every function here takes the URI explicitly instead.
        client = client_for(uri)
        # Opening a sqlite store creates or migrates the schema; a read forces that here, in one process.
        client.search_experiments(max_results=1)
        return get_or_create_experiment(client, uri, experiment)
    except SupuqError:
        raise
    except Exception as err:  # MlflowException, sqlalchemy, OSError: all mean "this store is unusable"
        raise SupuqError(f"MLflow tracking store {uri}: {one_line(err)}") from err


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :]
    if not rest or rest == ":memory:":
        return None
    return Path(rest.split("?", 1)[0])


def check_reachable(uri: str) -> None:
    """Fail fast with one line for a store MLflow would otherwise retry against for minutes."""
    path = sqlite_path(uri)
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


def client_for(uri: str) -> "MlflowClient":
    from mlflow import MlflowClient

    # MLflow caches the underlying store (and its sqlalchemy engine) per URI, so a client per call is cheap.
    return MlflowClient(tracking_uri=uri)


def _sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "experiment"


def get_or_create_experiment(client: "MlflowClient", uri: str, name: str) -> str:
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
    if sqlite_path(uri) is not None:
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


def experiment_id_of(client: "MlflowClient", name: str) -> str | None:
    found = client.get_experiment_by_name(name)
    return found.experiment_id if found is not None else None


def one_line(err: BaseException) -> str:
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    first = str(text).strip().splitlines()[0] if str(text).strip() else type(err).__name__
    return first[:300]
