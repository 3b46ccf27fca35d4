"""Shared by the supuq.tracking tests: a fresh local MLflow store in tmp_path, and a free port."""

from __future__ import annotations


import pytest

from supuq import tracking


EXPERIMENT = tracking.experiment_name("synthetic")


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A fresh local store in tmp_path (the default layout, ./mlflow/mlflow.db), schema and experiment created."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = tracking.resolve_tracking_uri()
    tracking.init_store(uri, EXPERIMENT)
    return uri

