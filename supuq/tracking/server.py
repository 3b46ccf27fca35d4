"""The local MLflow UI server: start `mlflow server` on a sqlite store, wait for `/health`, stop it.

Process management only; the store itself is `supuq.tracking.store`. This module loads without MLflow
(it starts `mlflow server` as a subprocess). The server never outlives the process that started it: a normal
exit or a signal stops it through `stop_server`, and a watchdog (`supuq.tracking.watchdog`) stops it when the
parent is killed outright.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import SupuqError
from .store import client_for, default_artifact_root, open_store, resolve_tracking_uri, sqlite_path


def wait_for_health(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> float:
    """Poll `url` (e.g. http://127.0.0.1:5000/health) until it answers 200; returns the seconds waited.

    Gives up early when `proc` (the server) exits. Raises `SupuqError` on timeout or exit.
    """
    start = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass  # not listening yet
        if proc is not None and proc.poll() is not None:
            raise SupuqError(f"MLflow server exited with status {proc.returncode} before {url} answered")
        if time.monotonic() - start > timeout:
            raise SupuqError(f"MLflow server did not answer {url} within {timeout:.0f} s")
        time.sleep(0.25)


def _port_in_use(host: str, port: int) -> bool:
    # SO_REUSEADDR like uvicorn: a port in TIME_WAIT is usable, one with a listener is not.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def serve_ui(
    uri: str | None = None,
    host: str = "127.0.0.1",
    port: int = 5000,
    wait: bool = True,
    timeout: float = 60.0,
    log_path: str | os.PathLike[str] | None = None,
    allowed_hosts: str | None = None,
) -> subprocess.Popen:
    """Start `mlflow server` on a local sqlite store and (with `wait`) block until `/health` answers.

    The server runs with this interpreter, one worker and job execution off (it would start extra processes).
    Its output goes to `log_path`, by default `mlflow-server.log` in a fresh private folder (mode 0700, made by
    `tempfile.mkdtemp`, so nothing planted in the temp folder is followed), named in errors and kept as
    `proc.log_path` (the store's URI as `proc.store_uri`). Stop it with `stop_server(proc)`, which stops its process group and its watchdog.
    `allowed_hosts` is passed to `--allowed-hosts` for serving under a name other than localhost or a private IP.
    """
    chosen = resolve_tracking_uri(uri)
    if chosen.startswith(("http://", "https://")):
        open_store(chosen)  # an unreachable server is named as such, not as "already a server"
        raise SupuqError(f"{chosen} is already an MLflow server: open it in a browser")
    if sqlite_path(chosen) is None:
        raise SupuqError(f"cannot serve {chosen}: `supuq ui` serves a local sqlite store (sqlite:///path/to/mlflow.db)")
    if not 1 <= int(port) <= 65535:
        raise SupuqError(f"--port must be between 1 and 65535, got {port}")
    if _port_in_use(host, port):
        raise SupuqError(f"port {port} on {host} is already in use: choose another with --port")
    uri = open_store(chosen)  # the schema is created here, under the store's lock, not by the server

    artifacts = default_artifact_root(uri)
    Path(artifacts).mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", uri,
        "--artifacts-destination", artifacts,
        "--host", host,
        "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    if allowed_hosts:
        command += ["--allowed-hosts", allowed_hosts]
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    log_path = Path(log_path) if log_path else Path(tempfile.mkdtemp(prefix="supuq-ui-")) / "mlflow-server.log"
    # O_EXCL in a fresh folder; the caller's own path is opened without following a final symlink.
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(log_path, flags, 0o600)
    except OSError as err:
        raise SupuqError(f"cannot write the server log {log_path}: {err.strerror}") from None
    with os.fdopen(fd, "wb") as log:
        # Own session, so stop_server can signal uvicorn as well if the mlflow CLI itself is stuck.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    proc.log_path, proc.store_uri = log_path, uri  # type: ignore[attr-defined]
    proc.watchdog = subprocess.Popen(  # type: ignore[attr-defined]
        [sys.executable, "-m", "supuq.tracking.watchdog", str(proc.pid), str(os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    if not wait:
        return proc
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    probe_host = f"[{probe_host}]" if ":" in probe_host and not probe_host.startswith("[") else probe_host
    try:
        wait_for_health(f"http://{probe_host}:{port}/health", timeout=timeout, proc=proc)
    except SupuqError as err:
        stop_server(proc)
        raise SupuqError(f"{err} (log: {log_path})") from None
    return proc


def stop_server(proc: subprocess.Popen, timeout: float = 15.0) -> int | None:
    """Stop a server started by `serve_ui`: SIGTERM to its process group, SIGKILL if it lingers; then its
    watchdog. Returns the server's exit status."""
    try:
        if proc.poll() is not None:
            return proc.returncode
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                continue
        return proc.wait(timeout=timeout)
    finally:
        _reap_group(proc.pid)
        watchdog = getattr(proc, "watchdog", None)
        if watchdog is not None and watchdog.poll() is None:
            watchdog.kill()
            watchdog.wait(timeout=timeout)


def _reap_group(pgid: int) -> None:
    """SIGKILL what is left of the server's group (the uvicorn worker, if the mlflow CLI exited first)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


ML_VIEW = "?workflowType=machine_learning"
"""MLflow 3's UI opens an experiment in its GenAI view (traces, no runs); this query opens the runs table."""


def ui_links(uri: str, base: str) -> list[tuple[str, str]]:
    """(experiment name, URL of its runs table in the model-training view) for each supuq experiment of the
    store, the one with the latest run first."""
    client = client_for(uri)
    found = []
    for experiment in client.search_experiments(filter_string="name LIKE 'supuq/%'"):
        latest = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"],
                                    max_results=1)
        started = latest[0].info.start_time if latest else 0
        found.append((started or 0, experiment.name, f"{base}/#/experiments/{experiment.experiment_id}/runs{ML_VIEW}"))
    return [(name, url) for _, name, url in sorted(found, key=lambda item: -item[0])]
