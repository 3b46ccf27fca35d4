"""A sweep's trials as they end: the live progress bar over trials (`TrialProgress`, a Tune callback), one
summary dict per trial from Tune's result grid, and the final status of each trial's MLflow child run. The
best trial is `sweep.selection`'s rule, for the bar as for best.yaml.

Driver-side only (the trials themselves run `sweep.trainable.trial_main`).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ray.tune import Callback

from .selection import best_row
from .space import SweepSpace

TRIAL_TAG = "supuq.trial_id"
"""The child-run tag naming its Ray trial: how a resumed trial finds its run, and the driver its trials' runs."""

FAILED_KEY = "supuq_failed"
"""A trial's last Tune result carries this key (the reason, e.g. "training diverged at epoch 3: loss is NaN")
when the trial ended itself as failed rather than raise (which Tune would retry): `sweep.trainable`."""


class TrialProgress(Callback):
    """A rich progress bar over trials (finished / total, running, best metric so far), fed by Tune's
    driver-side callback hooks; replaces Tune's verbose tables.

    "Best" is the best trial by `selection.best_row` over each trial's last reported value and epoch, the
    rule best.yaml and `supuq best` use, so the bar ends on their number (not on the best value any trial
    reached at any epoch). Until a trial has run all `max_epochs`, it is the best last value so far, marked so."""

    def __init__(self, total: int, metric: str, mode: str, max_epochs: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        super().__init__()
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.last: dict[str, dict[str, Any]] = {}  # trial id -> its row: trial_id, {metric: last value}, epochs
        self.running: set[str] = set()
        self._bar = Progress(TextColumn("[bold]trials"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TextColumn("{task.fields[info]}"))
        self._task = self._bar.add_task("trials", total=total, info="")

    def __getstate__(self):  # Tune pickles its callbacks with the experiment; the live bar stays behind
        return {k: v for k, v in self.__dict__.items() if k not in ("_bar", "_task")}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._bar = self._task = None

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)

    def best(self) -> tuple[float | None, bool]:
        """The best trial's last value (None before any) and whether that trial ran all `max_epochs`."""
        row, full = best_row(list(self.last.values()), self.metric, self.mode, self.max_epochs)
        return (None if row is None else row["metrics"][self.metric]), full

    def _show(self, advance: int = 0) -> None:
        if self._bar is None:
            return
        value, full = self.best()
        best = "-" if value is None else f"{value:.4f}"
        if value is not None and not full:
            best += f" (no trial at {self.max_epochs} epochs yet)"
        self._bar.update(self._task, advance=advance, info=f"running {len(self.running)}  best {self.metric} {best}")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.metric in result:  # every Tune report is a validation epoch (sweep.trainable)
            self.last[trial.trial_id] = {"trial_id": trial.trial_id, "metrics": {self.metric: result[self.metric]},
                                         "epochs": int(result.get("epoch", 0))}
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self._show(advance=1)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self._show(advance=1)


def summarize_trials(grid, space: SweepSpace) -> list[dict[str, Any]]:
    """One dict per trial: id, status, params, last metrics, epochs reached, node.

    The status is Tune's: ERROR for a trial that raised (after Ray's retries) or ended itself as failed
    (`FAILED_KEY`: it diverged), with a readable one-line `error`; TERMINATED for one whose last result is
    `done` (it ran all its epochs, or the scheduler stopped it); otherwise INTERRUPTED when it had reported
    something before the sweep stopped (Ctrl-C, a killed driver) and PENDING when it never reported."""
    rows = []
    for result in grid:
        metrics = result.metrics or {}
        config = result.config or {}
        trial_id = metrics.get("trial_id") or _trial_id_from_path(result.path)
        failed = metrics.get(FAILED_KEY)
        if result.error is not None or failed:
            status, error = "ERROR", str(failed) if failed else readable_error(result.error)
        else:
            status, error = ("TERMINATED" if metrics.get("done") else "INTERRUPTED" if metrics else "PENDING"), None
        rows.append({
            "trial_id": trial_id,
            "status": status,
            "error": error,
            "params": {k: config[k] for k in space.space if k in config},
            "metrics": {k: float(v) for k, v in metrics.items() if "/" in k and isinstance(v, (int, float))},
            "epochs": int(metrics.get("epoch", 0)),
            "node_ip": metrics.get("node_ip"),
            "node_id": metrics.get("node_id"),
            "path": result.path,
        })
    return rows


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def readable_error(error: BaseException) -> str:
    """One line for a trial's error without Ray's wrapping: the original exception (a RayTaskError's cause) as
    "Type: message", colour codes removed; Ray's own errors (a dead worker) keep their first line."""
    cause = getattr(error, "cause", None)
    shown = cause if isinstance(cause, BaseException) else error
    text = _ANSI.sub("", str(shown)).strip()
    first = text.splitlines()[0].strip() if text else ""
    if shown is cause:
        first = f"{type(cause).__name__}: {first}" if first else type(cause).__name__
    return (first or type(error).__name__)[:300]


def _trial_id_from_path(path: str | None) -> str:
    return Path(path).name.split("_")[1] if path and "_" in Path(path).name else ""


def finalize_child_runs(uri: str, parent_id: str, trials: list[dict], max_epochs: int, complete: bool) -> int:
    """Give every child run the status its trial really ended with, whatever the trial process managed to
    write before Ray stopped or killed it: all epochs -> FINISHED; stopped by ASHA -> KILLED with a tag
    saying why; errored (NaN loss, dead worker) -> FAILED; unfinished when the sweep was interrupted ->
    KILLED (a resume reopens it). Returns how many trials ASHA stopped early."""
    from .. import tracking

    by_trial = {t["trial_id"]: t for t in trials}
    stopped = 0
    for run in tracking.child_runs(uri, parent_id):
        trial = by_trial.get(run.data.tags.get(TRIAL_TAG, ""))
        if trial is None:
            # A trial that had started when the driver died but was not yet in Tune's saved experiment state:
            # the restored sweep re-ran that search slot under a new trial id, so this run is a stray copy.
            tracking.archive_run(uri, run.info.run_id, "trial lost with the interrupted driver; re-run after resume")
            continue
        trial["run_id"] = run.info.run_id
        status, reason = _final_status(trial, max_epochs, complete)
        stopped += reason.startswith("stopped early")
        if run.info.status != status or reason:
            tracking.end_run(uri, run.info.run_id, status, {"supuq.stop_reason": reason} if reason else None)
    return stopped


def _final_status(trial: dict, max_epochs: int, complete: bool) -> tuple[str, str]:
    if trial["status"] == "ERROR":
        return "FAILED", trial["error"] or "error"
    if trial["status"] == "TERMINATED":
        if trial["epochs"] >= max_epochs:
            return "FINISHED", ""
        return "KILLED", f"stopped early by ASHA at epoch {trial['epochs']} of {max_epochs}"
    return "KILLED", "sweep interrupted; resume with supuq sweep --resume" if not complete else "trial never ran"
