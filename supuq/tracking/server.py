"""The local MLflow UI server: start `mlflow server` on a sqlite store, wait for `/health`, stop it.

Process management only; the store itself is `supuq.tracking.store`. This module loads without MLflow
(it starts `mlflow server` as a subprocess).
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
from .store import check_reachable, client_for, default_artifact_root, one_line, resolve_tracking_uri, sqlite_path


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
    Its output goes to `log_path` (default: a `mlflow-server-<port>.log` in the temp folder), named in errors.
    Stop it with `stop_server(proc)`; `proc.terminate()` also works (the mlflow CLI forwards SIGTERM to uvicorn).
    `allowed_hosts` is passed to `--allowed-hosts` for serving under a name other than localhost or a private IP.
    """
    uri = resolve_tracking_uri(uri)
    if uri.startswith(("http://", "https://")):
        raise SupuqError(f"{uri} is already an MLflow server: open it in a browser")
    if sqlite_path(uri) is None:
        raise SupuqError(f"cannot serve {uri}: `supuq ui` serves a local sqlite store (sqlite:///path/to/mlflow.db)")
    if _port_in_use(host, port):
        raise SupuqError(f"port {port} on {host} is already in use: choose another with --port")
    # Create the schema here rather than in the server, for the same reason as init_store.
    check_reachable(uri)
    try:
        client_for(uri).search_experiments(max_results=1)
    except Exception as err:
        raise SupuqError(f"MLflow tracking store {uri}: {one_line(err)}") from err

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
    log_path = Path(log_path) if log_path else Path(tempfile.gettempdir()) / f"mlflow-server-{port}.log"
    with open(log_path, "wb") as log:
        # Own session, so stop_server can signal uvicorn as well if the mlflow CLI itself is stuck.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
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
    """Stop a server started by `serve_ui`: SIGTERM to its process group, SIGKILL if it lingers."""
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



