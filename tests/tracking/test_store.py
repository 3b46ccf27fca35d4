"""supuq.tracking.store against real MLflow: the default store location, and one-line errors for unreachable or
unusable stores."""

from __future__ import annotations

import subprocess
import sys

import pytest

from supuq import tracking
from supuq.errors import SupuqError
from supuq.tracking import store as store_module

from ..processes import free_port
from .conftest import EXPERIMENT


def test_default_uri_and_artifact_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    real = tmp_path.resolve()
    assert tracking.resolve_tracking_uri() == f"sqlite:///{real}/mlflow/mlflow.db"
    assert (tmp_path / "mlflow").is_dir()
    assert tracking.default_artifact_root() == f"{real}/mlflow/artifacts"
    # a relative sqlite path is pinned to the current directory (Ray workers run elsewhere)
    assert tracking.resolve_tracking_uri("sqlite:///x/s.db") == f"sqlite:///{real}/x/s.db"
    assert tracking.default_artifact_root("sqlite:///x/s.db") == f"{real}/x/artifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example.invalid:5000")
    assert tracking.resolve_tracking_uri() == "http://example.invalid:5000"
    assert tracking.resolve_tracking_uri("sqlite:////a/b.db") == "sqlite:////a/b.db"
    assert tracking.experiment_name("lidc") == "supuq/lidc"


def test_errors_are_one_line(store, tmp_path, monkeypatch):
    with pytest.raises(SupuqError, match="no MLflow run"):
        tracking.get_run(store, "f" * 32)
    port = free_port()  # nothing listens there
    # Fails on the /health probe, before an MLflow client exists (MLflow's own client retries for minutes).
    with monkeypatch.context() as patch, pytest.raises(SupuqError, match=f"127.0.0.1:{port} is not reachable") as err:
        patch.setattr(store_module, "client_for", lambda uri: pytest.fail(f"an MLflow client was opened for {uri}"))
        tracking.init_store(f"http://127.0.0.1:{port}", EXPERIMENT)
    assert "\n" not in str(err.value)
    with pytest.raises(SupuqError, match="nosuchscheme") as err:
        tracking.init_store("nosuchscheme://x", EXPERIMENT)
    assert "\n" not in str(err.value)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SupuqError, match="cannot create"):
        tracking.init_store(f"sqlite:///{blocker}/sub/mlflow.db", EXPERIMENT)


def test_two_processes_creating_one_fresh_store_both_succeed(tmp_path):
    code = ("import sys; from supuq import tracking; "
            "print(tracking.init_store(sys.argv[1], 'supuq/synthetic'))")
    for attempt in range(3):
        uri = f"sqlite:///{tmp_path / f'store{attempt}' / 'mlflow.db'}"
        procs = [subprocess.Popen([sys.executable, "-c", code, uri], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        outs = [p.communicate(timeout=120) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [err[-500:] for _, err in outs]
        ids = {out.strip().splitlines()[-1] for out, _ in outs}
        assert len(ids) == 1  # one experiment, created once
