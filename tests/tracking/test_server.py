"""`supuq ui` and its MLflow server (supuq.tracking.server) as a user runs them: a real `supuq ui` process, the real
server, real signals. Whatever ends `supuq ui` (SIGTERM, SIGHUP, SIGKILL) ends the server it started; its log goes
to a private folder, never through a planted symlink; the server serves the runs and their artifacts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from supuq import tracking
from supuq.errors import SupuqError

from ..processes import free_port, group_alive, running
from .conftest import EXPERIMENT

DEADLINE_S = 60.0


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc: children, grandchildren, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _start_ui(tmp_path: Path, port: int, *extra: str) -> subprocess.Popen:
    store = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    tracking.init_store(store, "supuq/synthetic")
    proc = subprocess.Popen([sys.executable, "-m", "supuq.cli", "ui", "--port", str(port), "--tracking-uri", store,
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
                            start_new_session=True)
    first = proc.stdout.readline()  # printed once /health answers
    assert first.startswith("MLflow UI on"), first + proc.stderr.read()
    return proc


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGKILL])
def test_every_signal_that_ends_supuq_ui_ends_its_server(tmp_path, sig):
    """SIGTERM and SIGHUP: `supuq ui` stops the server itself; SIGKILL: its watchdog does. The SIGTERM case also
    serves on all interfaces, which must warn that the UI has no authentication."""
    port = free_port()
    everywhere = sig == signal.SIGTERM
    ui = _start_ui(tmp_path, port, *(["--host", "0.0.0.0"] if everywhere else []))
    link = ui.stdout.readline()
    assert "#/experiments/" in link and link.rstrip().endswith("/runs?workflowType=machine_learning"), link
    server = _descendants(ui.pid)
    assert server and _answers(port)
    os.kill(ui.pid, sig)
    ui.wait(timeout=DEADLINE_S)
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and (any(running(p) for p in server) or _answers(port)):
        time.sleep(0.2)
    left = sorted(p for p in server if running(p))
    assert not left and not _answers(port), f"after {sig.name}: processes {left} still alive"
    warning = "no authentication" in ui.stderr.read()
    assert warning == everywhere


def test_server_log_is_private_and_never_follows_a_planted_link(tmp_path):
    port = free_port()
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    planted = Path("/tmp") / f"mlflow-server-{port}.log"  # where the log used to go
    planted.unlink(missing_ok=True)
    planted.symlink_to(victim)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        proc = tracking.serve_ui(store, port=port)
        try:
            folder = proc.log_path.parent
            assert folder != Path("/tmp") and (folder.stat().st_mode & 0o777) == 0o700
            assert proc.log_path.is_file() and not proc.log_path.is_symlink()
        finally:
            tracking.stop_server(proc)
    finally:
        planted.unlink()
    assert victim.read_text() == "keep me"
    # a log path that is itself a symlink is refused, not followed
    link = tmp_path / "log-link"
    link.symlink_to(victim)
    with pytest.raises(SupuqError, match="server log"):
        tracking.serve_ui(store, port=free_port(), log_path=link)
    assert victim.read_text() == "keep me"


def test_serve_ui(store, tmp_path):
    with tracking.tracked_run(store, EXPERIMENT, run_name="shown") as run:
        run.log_metrics({"val/ged": 0.3}, step=1)
        run.log_text("local artifact", "note.txt")

    port = free_port()
    start = time.monotonic()
    proc = tracking.serve_ui(store, port=port, log_path=tmp_path / "server.log")
    try:
        startup = time.monotonic() - start
        print(f"\nmlflow server answered /health after {startup:.1f} s")
        base = f"http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"{base}/health", timeout=10) as response:
            assert response.status == 200 and response.read().strip() == b"OK"
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/search?max_results=10", timeout=10) as resp:
            names = {e["name"] for e in json.load(resp)["experiments"]}
        assert EXPERIMENT in names
        with urllib.request.urlopen(f"{base}/", timeout=10) as response:
            assert response.status == 200

        # The same API works against the server: a new experiment gets proxied artifacts (mlflow-artifacts:/).
        remote = tracking.init_store(base, "supuq/remote")
        with tracking.tracked_run(base, "supuq/remote", run_name="over-http") as remote_run:
            remote_run.log_metrics({"val/ged": 0.2}, step=1)
            remote_run.log_text("via server", "remote.txt")
        got = tracking.get_run(base, remote_run.run_id)
        assert got.info.experiment_id == remote and got.info.status == "FINISHED"
        assert got.info.artifact_uri.startswith("mlflow-artifacts:")
        stored = list(Path(tracking.default_artifact_root()).rglob("remote.txt"))
        assert len(stored) == 1 and stored[0].read_text() == "via server"
        # a second server on the same port is refused up front
        with pytest.raises(SupuqError, match="already in use"):
            tracking.serve_ui(store, port=port)
    finally:
        tracking.stop_server(proc)
    assert proc.returncode is not None
    # nothing of the server's process group (mlflow CLI + uvicorn) is left; its workers may take a moment to go
    deadline = time.monotonic() + 30
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def test_supuq_ui_serves_the_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking.init_store(uri, "supuq/synthetic")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "supuq.cli", "ui", "--port", str(port), "--tracking-uri", uri],
                            cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        tracking.wait_for_health(f"http://127.0.0.1:{port}/health", timeout=90)
        url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        assert "supuq/synthetic" in body
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).status == 200
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
