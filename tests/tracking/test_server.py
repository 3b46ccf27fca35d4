"""`supuq ui` and its MLflow server as a user runs them: a real `supuq ui` process, the real server, real
signals. Whatever ends `supuq ui` (SIGTERM, SIGHUP, SIGKILL) ends the server it started; its log goes to a
private folder, never through a planted symlink; a fresh sqlite store created by two processes at once works."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from supuq import tracking
from supuq.errors import SupuqError

DEADLINE_S = 60.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited; only its parent has not reaped it yet
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


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
    port = _free_port()
    everywhere = sig == signal.SIGTERM
    ui = _start_ui(tmp_path, port, *(["--host", "0.0.0.0"] if everywhere else []))
    link = ui.stdout.readline()
    assert "#/experiments/" in link and link.rstrip().endswith("/runs?workflowType=machine_learning"), link
    server = _descendants(ui.pid)
    assert server and _answers(port)
    os.kill(ui.pid, sig)
    ui.wait(timeout=DEADLINE_S)
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline and (any(_alive(p) for p in server) or _answers(port)):
        time.sleep(0.2)
    left = sorted(p for p in server if _alive(p))
    assert not left and not _answers(port), f"after {sig.name}: processes {left} still alive"
    warning = "no authentication" in ui.stderr.read()
    assert warning == everywhere


def test_server_log_is_private_and_never_follows_a_planted_link(tmp_path):
    port = _free_port()
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
        tracking.serve_ui(store, port=_free_port(), log_path=link)
    assert victim.read_text() == "keep me"


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
