"""`supuq sweep --resume`: whether a sweep folder may be restored, the restore of Tune's state, and the live
progress bar of a restored sweep.

Ray keeps an experiment's state as pickles (`tuner.pkl`, the searcher's state, and trials encoded with
cloudpickle inside `experiment_state-*.json`): restoring it runs whatever code those files hold, by Ray's
design. So before Ray reads a local sweep folder, supuq requires that nobody but this user could have written
it (`check_trusted`). On s3:// storage there are no owners or mode bits to read: `--resume` then trusts
everyone who may write the bucket prefix (README, "Resuming a sweep").
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ray.tune import Callback

from ..errors import SupuqError

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def check_trusted(root: str, name: str) -> None:
    """A one-line SupuqError, before anything in the folder is read, unless the local sweep folder
    `<root>/<name>` and every file and folder in it belong to this user and are writable by no one else
    (no group or other write bit, no symbolic link), and the storage root cannot be used by others to swap the
    sweep folder (owned by this user or root, and not writable by others unless sticky, as /tmp is).
    A missing folder passes: the caller says there is no such sweep."""
    if "://" in root:
        return
    folder = Path(root) / name
    if not folder.is_dir():
        return
    uid = os.geteuid()
    parent = Path(root).lstat()
    # Others may write a sticky folder (/tmp) but not rename or remove what is ours in it.
    if parent.st_uid not in (uid, 0) or (parent.st_mode & _OTHERS_WRITE and not parent.st_mode & stat.S_ISVTX):
        _refuse(Path(root), parent, uid, folder, "the storage folder")
    for top, dirs, files in os.walk(folder, followlinks=False):
        for entry in [top, *(os.path.join(top, d) for d in dirs), *(os.path.join(top, f) for f in files)]:
            info = os.lstat(entry)
            if stat.S_ISLNK(info.st_mode):
                raise SupuqError(f"refusing to resume: {entry} is a symbolic link; a sweep folder written by Ray "
                                 "holds none, and Ray would restore (unpickle) what it points to")
            if info.st_uid != uid or info.st_mode & _OTHERS_WRITE:
                _refuse(Path(entry), info, uid, folder, "sweep state")


def _refuse(path: Path, info: os.stat_result, uid: int, folder: Path, what: str) -> None:
    if info.st_uid not in (uid, 0) or (info.st_uid != uid and what == "sweep state"):
        problem = f"owned by {_user(info.st_uid)}, not by {_user(uid)}"
    else:
        who = {stat.S_IWGRP: "its group", stat.S_IWOTH: "all users"}.get(info.st_mode & _OTHERS_WRITE,
                                                                        "its group and all users")
        problem = f"writable by {who} (mode {stat.filemode(info.st_mode)})"
    raise SupuqError(f"refusing to resume: {path} ({what}) is {problem}; Ray restores a sweep by unpickling its "
                     f"files, which runs any code whoever could write them put there (if all of {folder} is yours "
                     f"and unchanged: chmod -R go-w {folder})")


def _user(uid: int) -> str:
    try:
        return f"user {pwd.getpwuid(uid).pw_name!r}"
    except KeyError:
        return f"uid {uid}"


def restore_tuner(path: str, trainable: Any, filesystem: Any):
    """Tune's `Tuner.restore` of the sweep folder `path` (already `check_trusted`): unfinished trials continue
    from their last checkpoint, errored ones (a lost node) start again. A state Ray cannot read (not Ray's
    pickle, another Ray version's, a truncated file) is one line naming the file."""
    from ray import tune

    from ..tracking.store import one_line

    def refuse(why: str):
        return SupuqError(f"{path}/tuner.pkl: not a Ray Tune sweep state this Ray can restore ({why})")

    try:
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True, restart_errored=True,
                                   storage_filesystem=filesystem)
    except Exception as err:  # whatever the unpickled object lacks (KeyError, AttributeError, EOFError, ...)
        raise refuse(f"{type(err).__name__}: {one_line(err)}") from None
    # Ray's restore takes any pickled dict as its state and fails only later, inside fit; so check that the
    # restored Tuner holds what Ray's own TunerInternal.__getstate__ saves (none of it with Ray Client).
    internal = getattr(tuner, "_local_tuner", None)
    missing = [name for name in ("_tuner_kwargs", "_tune_config", "_run_config")
               if internal is not None and not hasattr(internal, name)]
    if missing:
        raise refuse(f"it holds no {', '.join(missing)}")
    return tuner


def finished_trials(tuner) -> list[dict[str, Any]]:
    """The last result of each trial the restored state holds as finished (Tune's `done` flag): the progress
    bar counts them at the restore, since Tune does not run them again and so never reports them."""
    try:
        grid = tuner.get_results()
    except Exception:  # no experiment state to read back yet (the driver died before Tune saved any)
        return []
    return [dict(result.metrics) for result in grid if result.metrics and result.metrics.get("done")]


_LIVE: dict[str, Callback] = {}
"""The driver's live Tune callbacks (the progress bar) by sweep name, looked up by `LiveCallback`."""


class LiveCallback(Callback):
    """What Tune is given as callback: a name that forwards every hook to the driver's live callback of that
    name. Tune pickles its callbacks into tuner.pkl and a restore brings back those copies, which have no
    terminal to draw on; this stand-in holds only the name, so a restored sweep draws on the new driver's bar."""

    def __init__(self, name: str, live: Callback | None = None):
        super().__init__()
        self.name = name
        if live is not None:
            _LIVE[name] = live

    def release(self) -> None:
        _LIVE.pop(self.name, None)

    def replay_finished(self, results: list[dict[str, Any]]) -> None:
        """Report the trials finished before the restore to the live callback, as Tune would have."""
        for result in results:
            trial = SimpleNamespace(trial_id=result.get("trial_id", ""))
            self._forward("on_trial_result", iteration=0, trials=[], trial=trial, result=result)
            self._forward("on_trial_complete", iteration=0, trials=[], trial=trial)

    def _forward(self, hook: str, **info) -> None:
        live = _LIVE.get(self.name)
        if live is not None:
            getattr(live, hook)(**info)


def _forwarding(hook: str):
    def method(self, **info):
        self._forward(hook, **info)

    method.__name__ = hook
    return method


for _hook in ("on_step_begin", "on_step_end", "on_trial_start", "on_trial_restore", "on_trial_save",
              "on_trial_result", "on_trial_complete", "on_trial_recover", "on_trial_error", "on_checkpoint",
              "on_experiment_end"):
    setattr(LiveCallback, _hook, _forwarding(_hook))
