"""MLflow run queries: runs of an experiment or of several, a sweep's or retrain's child runs, one run, and
artifact downloads. Every call goes through an explicit client for the given tracking URI (see
`supuq.tracking.store`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SupuqError
from .store import client_for, experiment_id_of, one_line, resolve_tracking_uri

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

def find_runs(uri: str, experiment: str, filter_string: str = "", order_by: list[str] | None = None) -> list["Run"]:
    """All active runs of the experiment named `experiment` matching `filter_string`; [] if it does not exist.

    Without `order_by`, newest first (MLflow's default order).
    """
    return search_runs(uri, [experiment], filter_string, order_by)


def search_runs(
    uri: str, experiments: list[str] | None = None, filter_string: str = "", order_by: list[str] | None = None
) -> list["Run"]:
    """Like `find_runs` over several experiments (by name; missing ones are skipped), or all when None."""
    uri = resolve_tracking_uri(uri)
    client = client_for(uri)
    if experiments is None:
        ids = [e.experiment_id for e in _all_experiments(client)]
    else:
        ids = [i for i in (experiment_id_of(client, name) for name in experiments) if i is not None]
    if not ids:
        return []
    return _search_all(client, ids, filter_string, order_by)


def child_runs(uri: str, parent_run_id: str, filter_string: str = "") -> list["Run"]:
    """The runs whose `mlflow.parentRunId` tag is `parent_run_id` (trials of a sweep, seeds of a retrain),
    oldest first, optionally narrowed by `filter_string` (ANDed)."""
    parent = get_run(uri, parent_run_id)
    client = client_for(resolve_tracking_uri(uri))
    quoted = parent_run_id.replace("'", "")  # run ids are hex; never let one break out of the quotes
    combined = f"tags.mlflow.parentRunId = '{quoted}'"
    if filter_string.strip():
        combined += f" and {filter_string}"
    return _search_all(client, [parent.info.experiment_id], combined, ["attributes.start_time ASC"])


def _all_experiments(client: "MlflowClient") -> list:
    experiments, token = [], None
    while True:
        page = client.search_experiments(max_results=1000, page_token=token)
        experiments.extend(page)
        token = page.token
        if not token:
            return experiments


def _search_all(
    client: "MlflowClient", experiment_ids: list[str], filter_string: str, order_by: list[str] | None
) -> list["Run"]:
    from mlflow.exceptions import MlflowException

    runs: list[Run] = []
    token = None
    while True:
        try:
            page = client.search_runs(
                experiment_ids, filter_string=filter_string, order_by=order_by, max_results=1000, page_token=token
            )
        except MlflowException as err:
            if err.error_code == "INVALID_PARAMETER_VALUE":
                raise SupuqError(f"bad MLflow run filter {filter_string!r}: {one_line(err)}") from None
            raise
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def get_run(uri: str, run_id: str) -> "Run":
    """The run with id `run_id`; an unknown id is a `SupuqError`."""
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(uri)
    try:
        return client_for(uri).get_run(run_id)
    except MlflowException as err:
        if err.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise SupuqError(f"no MLflow run {run_id!r} in {uri}") from None
        raise


def download_artifact(uri: str, run_id: str, path: str, dst: str | os.PathLike[str]) -> Path:
    """Copy the artifact `path` (file or folder) of a run into the folder `dst`; returns the local path."""
    from mlflow.exceptions import MlflowException

    uri = resolve_tracking_uri(uri)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    get_run(uri, run_id)  # unknown run -> SupuqError before the artifact layer's less specific message
    try:
        local = client_for(uri).download_artifacts(run_id, path, str(dst))
    except (MlflowException, OSError) as err:
        raise SupuqError(f"MLflow run {run_id}: cannot download artifact {path!r}: {one_line(err)}") from None
    return Path(local)


