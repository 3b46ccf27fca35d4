"""The MLflow tracking store: which URI to use, where a local store keeps its artifacts, opening it once
(schema and experiment) and failing fast with one line when it cannot be reached.

Layout (see docs/architecture.md): one experiment per dataset, named `supuq/<dataset>`. A sweep or retrain is a
parent run; each trial or seed is a child run linked by the `mlflow.parentRunId` tag.

Everything goes through an explicit `MlflowClient(tracking_uri=...)` instead of MLflow's fluent API: the fluent
API keeps a process-global tracking URI and active-run stack, which is wrong as soon as several trials share a
Ray worker process or a thread.

sqlite concurrency rule: several processes opening a *fresh* sqlite store at the same time race on the schema
migration and can corrupt it for good. `open_store` creates the schema under a file lock, and every command
(and the sweep driver, before any worker starts) calls it first; after that, concurrent writers are safe
(MLflow sets a 20 s sqlite busy timeout).
"""

from __future__ import annotations

import fcntl
import os
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SupuqError

if TYPE_CHECKING:  # mlflow takes ~1 s to import: only load it when tracking is actually used
    from mlflow import MlflowClient

DEFAULT_STORE = "mlflow"
"""Folder (relative to the working directory) of the default local store: mlflow.db and artifacts/."""

HEALTH_TIMEOUT_S = 5.0
"""How long one check of a tracking server may take before the command gives up with one line."""

SQLITE_MAGIC = b"SQLite format 3\x00"


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


def open_store(uri: str | None = None) -> str:
    """Resolve `uri` (see `resolve_tracking_uri`), make sure the store answers and its schema exists; returns
    the URI. Every command calls this once before it reads or writes runs.

    A server is asked for `/health` once (`HEALTH_TIMEOUT_S`); a sqlite file must be a sqlite database. Creating
    a fresh sqlite store is serialised by a lock file beside the database: two processes migrating the same new
    store at once corrupt it (MLflow's alembic migration is not safe under concurrency). Raises `SupuqError`
    with one line naming the URI when the store cannot be used.
    """
    uri = resolve_tracking_uri(uri)
    check_reachable(uri)
    path = sqlite_path(uri)
    try:
        with _creation_lock(path):
            # Opening a sqlite store creates or migrates the schema; a read forces that here, under the lock.
            client_for(uri).search_experiments(max_results=1)
    except SupuqError:
        raise
    except Exception as err:  # MlflowException, sqlalchemy, OSError: all mean "this store is unusable"
        raise SupuqError(f"MLflow tracking store {uri}: {one_line(err)}") from None
    return uri


@contextmanager
def _creation_lock(path: Path | None) -> Iterator[None]:
    """An exclusive lock on `<db>.lock` for the duration of the block (no lock for a server URI)."""
    if path is None:
        yield
        return
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def init_store(uri: str, experiment: str) -> str:
    """Open the store (`open_store`) and get or create `experiment`; returns its id.

    Call once in the driver before any other process opens the store (see the module docstring).
    """
    uri = open_store(uri)
    try:
        # No mlflow.set_tracking_uri(): it also writes $MLFLOW_TRACKING_URI into os.environ, a hidden global that
        # outlives this store (e.g. leaks between tests). Every function here takes the URI explicitly instead.
        return get_or_create_experiment(client_for(uri), uri, experiment)
    except SupuqError:
        raise
    except Exception as err:
        raise SupuqError(f"MLflow tracking store {uri}: {one_line(err)}") from None


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative or absolute), else None."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///") :]
    if not rest or rest == ":memory:":
        return None
    return Path(rest.split("?", 1)[0])


def check_reachable(uri: str) -> None:
    """Fail fast with one line for a store MLflow would otherwise retry against for minutes: a server that
    does not answer `/health` within `HEALTH_TIMEOUT_S`, a sqlite path whose folder cannot be made, or a file
    there that is not a sqlite database (a truncated or foreign file)."""
    path = sqlite_path(uri)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SupuqError(f"MLflow tracking store {uri}: cannot create {path.parent}: {err.strerror}") from None
        if path.is_dir():
            raise SupuqError(f"MLflow tracking store {uri}: {path} is a folder, not a sqlite file")
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as handle:
                if handle.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
                    raise SupuqError(f"MLflow tracking store {uri}: {path} is not a sqlite database")
        return
    if uri.startswith(("http://", "https://")):
        health = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(health, timeout=HEALTH_TIMEOUT_S) as response:
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
