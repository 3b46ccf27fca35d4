"""Finding and killing the processes a test started, by a marker in their environment.

Ray workers put themselves in process groups of their own and outlive a killed raylet for a few seconds, so
neither the driver's process group nor its process tree (workers are re-parented when the raylet dies) reaches
all of them; the environment every process of a Ray instance inherits from the process that started it does.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path


def processes_with_env(marker: bytes) -> list[int]:
    """Pids of processes whose initial environment contains `marker` (e.g. b"RAY_AUTH_TOKEN=<token>")."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if marker + b"\0" in handle.read() + b"\0":
                    found.append(int(entry))
        except OSError:
            continue
    return found


def kill_processes_with_env(marker: bytes, timeout: float = 10.0) -> int:
    """SIGKILL every process carrying `marker` until none is left (or `timeout` passes); returns how many
    distinct pids were killed. Zombies keep their environ readable until reaped, so a pid that survives a
    SIGKILL is only counted, never waited on forever."""
    killed: set[int] = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pids = [p for p in processes_with_env(marker) if p not in killed]
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            killed.add(pid)
        time.sleep(0.2)
    return len(killed)


def free_port() -> int:
    """A loopback TCP port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def running(pid: int) -> bool:
    """True while `pid` exists and has not exited: a zombie (exited, not yet reaped by its parent) is not running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    """True while the process group `pgid` has a member."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
