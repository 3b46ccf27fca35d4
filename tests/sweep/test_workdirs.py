"""Trial work folders (`supuq.sweep.workdirs`): marked with their owner process, removed by the next trial or
sweep once that process is gone, and never when it lives, is another host's, or the folder is not marked."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from supuq.sweep.workdirs import MARKER, PREFIX, remove_leftovers, trial_workdir


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid  # reaped: no process holds this pid now (pids are not reused this fast)


def _marked(folder: Path, name: str, **owner) -> Path:
    path = folder / f"{PREFIX}{name}"
    (path / "checkpoint").mkdir(parents=True)
    (path / "checkpoint" / "checkpoint.pt").write_bytes(b"weights")
    (path / MARKER).write_text(json.dumps({"host": socket.gethostname(), "sweep": "s", **owner}))
    return path


def test_only_the_folders_of_gone_processes_are_removed(tmp_path):
    dead = _marked(tmp_path, "s-dead", pid=_dead_pid())
    live = _marked(tmp_path, "s-live", pid=os.getpid())
    elsewhere = _marked(tmp_path, "s-other-host", pid=_dead_pid(), host="another-host")
    unmarked = tmp_path / f"{PREFIX}old"
    unmarked.mkdir()
    reused = _marked(tmp_path, "s-reused", pid=os.getpid(), started=-1)  # our pid, but another process's start
    removed = remove_leftovers(tmp_path)
    assert sorted(removed) == sorted([dead, reused])
    assert not dead.exists() and not reused.exists()
    assert live.is_dir() and elsewhere.is_dir() and unmarked.is_dir()


def test_a_trial_folder_is_marked_and_removed_at_its_end(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    left = _marked(tmp_path, "s-killed", pid=_dead_pid())
    with trial_workdir("s") as work:
        assert work.parent == tmp_path and work.name.startswith(f"{PREFIX}s-")
        owner = json.loads((work / MARKER).read_text())
        assert owner["pid"] == os.getpid() and owner["sweep"] == "s"
        assert not left.exists()  # the leftover of a killed trial went first
        assert remove_leftovers(tmp_path) == []  # a live trial's folder stays
    assert not work.exists()
