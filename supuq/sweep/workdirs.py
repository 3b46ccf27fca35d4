"""Trial work folders: where a trial's `fit` writes its checkpoint before `tune.report` persists it into the
sweep's storage (so nothing in one is needed once its trial process is gone).

Each is `<tmp>/supuq-trial-<sweep>-<random>/` holding `supuq-owner.json` (host, pid and start time of the Ray
worker process that made it, the sweep's name). A worker killed with its driver (kill -9, a lost node) cannot
remove its folder; so each new trial, and each sweep driver as it starts, removes the marked folders on its
host whose owner process is gone. Unmarked folders, other users' and live processes' are never touched.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

PREFIX = "supuq-trial-"
MARKER = "supuq-owner.json"


@contextlib.contextmanager
def trial_workdir(sweep: str) -> Iterator[Path]:
    """A fresh marked work folder for one trial of `sweep`, removed when the block ends; leftovers of dead
    trial processes on this host are removed first."""
    remove_leftovers()
    path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{sweep}-"))
    try:
        pid = os.getpid()
        (path / MARKER).write_text(json.dumps({"host": socket.gethostname(), "pid": pid,
                                               "started": _start_time(pid), "sweep": sweep}))
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_leftovers(folder: str | Path | None = None) -> list[Path]:
    """Remove the marked trial folders in `folder` (default: the temporary folder) that belong to this user and
    this host and whose owner process has ended (a reused pid is told apart by its start time); returns them."""
    removed = []
    host, uid = socket.gethostname(), os.geteuid()
    for path in Path(folder or tempfile.gettempdir()).glob(f"{PREFIX}*"):
        try:
            info = path.lstat()
            owner = json.loads((path / MARKER).read_text())
        except (OSError, ValueError):
            continue  # vanished meanwhile, not ours to read, or not marked (never removed)
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != uid or not isinstance(owner, dict):
            continue
        if owner.get("host") != host or _alive(owner.get("pid"), owner.get("started")):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid, started) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return True  # a marker we cannot read as ours: keep the folder
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process holds that pid now: alive, and not ours to judge
    return started is None or _start_time(pid) in (None, started)


def _start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux /proc), None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None
