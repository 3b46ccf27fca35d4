"""A sweep's trials as they end: the live progress bar over trials (`TrialProgress`, a Tune callback), one
summary dict per trial from Tune's result grid, and the final status of each trial's MLflow child run. The
best trial is `sweep.selection`'s rule, for the bar as for best.yaml.

Driver-side only (the trials themselves run `sweep.trainable.trial_main`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from ray.tune import Callback
from rich.progress import Progress
from rich.text import Text

from .selection import best_row
from .space import SweepSpace

TRIAL_TAG = "supuq.trial_id"
"""The child-run tag naming its Ray trial: how a resumed trial finds its run, and the driver its trials' runs."""

FAILED_KEY = "supuq_failed"
"""A trial's last Tune result carries this key (the reason, e.g. "training diverged at epoch 3: loss is NaN")
when the trial ended itself as failed rather than raise (which Tune would retry): `sweep.trainable`."""


class TrialProgress(Callback):
    """A rich progress bar over trials (finished / total, elapsed, ETA, each running trial's epochs, best
    metric so far), fed by Tune's driver-side callback hooks; replaces Tune's verbose tables.

    The bar counts a running trial's epochs as a fraction of a trial (3 of 6 epochs: half a trial done), so it
    moves while trials train and the ETA (rich's, from the mean rate so far) is in epochs: it assumes the trials
    still to come run all `max_epochs`, so ASHA's early stops make the sweep end sooner than it says.

    "Best" is the best trial by `selection.best_row` over each trial's last reported value and epoch, the
    rule best.yaml and `supuq best` use, so the bar ends on their number (not on the best value any trial
    reached at any epoch). Until a trial has run all `max_epochs`, it is the best last value so far, marked so."""

    SHOWN_RUNNING = 4  # trials listed with their epochs; more are counted (a cluster may run dozens at once)

    def __init__(self, total: int, metric: str, mode: str, max_epochs: int):
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        super().__init__()
        self.metric, self.mode, self.max_epochs = metric, mode, max_epochs
        self.last: dict[str, dict[str, Any]] = {}  # trial id -> its row: trial_id, {metric: last value}, epochs
        self.running: dict[str, int] = {}  # running trial id -> epochs it reached
        self.ended = 0
        self._bar = _LinesBelow(TextColumn("[bold]trials"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                speed_estimate_period=7 * 24 * 3600.0)
        self._task = self._bar.add_task("trials", total=total)

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

    def done(self) -> float:
        """Trials done, a running trial counting as the fraction of `max_epochs` it has run."""
        return self.ended + sum(min(e, self.max_epochs) for e in self.running.values()) / max(self.max_epochs, 1)

    def info(self) -> list[str]:
        """The lines under the bar: "best val/ged 0.2817" (marked while no trial ran all epochs) and
        "running 00003 4/6, 00004 1/6" (each running trial's epochs); one short line each, for 80 columns."""
        value, full = self.best()
        best = "-" if value is None else f"{value:.4f}"
        if value is not None and not full:
            best += f" (no trial at {self.max_epochs} epochs yet)"
        shown = [f"{_short_trial(tid)} {epochs}/{self.max_epochs}"
                 for tid, epochs in sorted(self.running.items())[: self.SHOWN_RUNNING]]
        if len(self.running) > self.SHOWN_RUNNING:
            shown.append(f"+{len(self.running) - self.SHOWN_RUNNING} more")
        return [f"best {self.metric} {best}"] + ([f"running {', '.join(shown)}"] if shown else [])

    def _show(self) -> None:
        if self._bar is not None:
            self._bar.lines = self.info()
            self._bar.update(self._task, completed=self.done())

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.setdefault(trial.trial_id, 0)
        self._show()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.metric in result:  # every Tune report is a validation epoch (sweep.trainable)
            epochs = int(result.get("epoch", 0))
            self.last[trial.trial_id] = {"trial_id": trial.trial_id, "metrics": {self.metric: result[self.metric]},
                                         "epochs": epochs}
            if trial.trial_id in self.running:
                self.running[trial.trial_id] = epochs
        self._show()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._end(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial)

    def _end(self, trial) -> None:
        self.running.pop(trial.trial_id, None)
        self.ended += 1
        self._show()


class _LinesBelow(Progress):
    """A rich Progress that draws `lines` (plain text, one per line, cut with an ellipsis rather than wrapped)
    under its bar: the bar's own row stays short enough for an 80-column terminal whatever the lines say."""

    lines: list[str] = []

    def get_renderables(self):
        yield self.make_tasks_table(self.tasks)
        for line in self.lines:
            yield Text(line, overflow="ellipsis", no_wrap=True)


def _short_trial(trial_id: str) -> str:
    """Ray's trial ids are `<experiment>_<number>`: the number tells a sweep's trials apart."""
    return trial_id.rsplit("_", 1)[-1]


def fit_noting_interrupts(tuner) -> tuple[Any, bool]:
    """`tuner.fit()` and whether Ctrl-C interrupted it. Tune returns normally on SIGINT (with the trials cut short
    marked TERMINATED): its handler, on the first SIGINT, puts back the handler it found, so a marker handler
    installed here and back in place afterwards means Tune was interrupted."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return tuner.fit(), False

    def marker(signum, frame):  # a second Ctrl-C after Tune's: stop at once, as Python's default does
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, marker)
    try:
        grid = tuner.fit()
        return grid, signal.getsignal(signal.SIGINT) is marker
    finally:
        signal.signal(signal.SIGINT, previous)


def summarize_trials(grid, space: SweepSpace, max_epochs: int, interrupted: bool = False) -> list[dict[str, Any]]:
    """One dict per trial: id, status, params, last metrics, epochs reached, node.

    The status is Tune's: ERROR for a trial that raised (after Ray's retries) or ended itself as failed
    (`FAILED_KEY`: it diverged), with a readable one-line `error`; TERMINATED for a trial Tune ended (it ran all
    its epochs, or the scheduler stopped it); otherwise INTERRUPTED when it had reported something before the
    sweep stopped (Ctrl-C, a killed driver) and PENDING when it never reported. A trial ended when its last
    result is `done` or at `max_epochs`, or when Tune's own status (the grid's trials, which Ray's
    `ResultGrid.num_terminated` counts) says TERMINATED in a session that was not `interrupted`: a restored
    experiment's last results do not always carry `done`, and Tune marks a trial cut short by Ctrl-C TERMINATED."""
    trials = list(getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or [])
    results = list(grid)
    statuses = [str(trial.status) for trial in trials] if len(trials) == len(results) else [None] * len(results)
    rows = []
    for result, tune_status in zip(results, statuses):
        metrics = result.metrics or {}
        config = result.config or {}
        trial_id = metrics.get("trial_id") or _trial_id_from_path(result.path)
        failed = metrics.get(FAILED_KEY)
        if result.error is not None or failed:
            status, error = "ERROR", str(failed) if failed else readable_error(result.error)
        else:
            ended = (bool(metrics.get("done")) or int(metrics.get("epoch", 0)) >= max_epochs
                     or (tune_status == "TERMINATED" and not interrupted))
            status, error = ("TERMINATED" if ended else "INTERRUPTED" if metrics else "PENDING"), None
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


STOP_TAGS = ("supuq.stop_reason", "supuq.stopped_by", "supuq.stopped_at_epoch")
"""The tags saying how a trial's run ended when it did not simply run all its epochs: why, who stopped it
(asha | error | interrupt) and at which epoch."""


def finalize_child_runs(uri: str, parent_id: str, trials: list[dict], max_epochs: int, complete: bool,
                        metric: str = "val/ged") -> int:
    """Give every child run the status its trial really ended with, whatever the trial process managed to
    write before Ray stopped or killed it, and a one-line description (`trial_summary`). All epochs ->
    FINISHED; stopped by ASHA -> FINISHED too (an early stop is a normal end of a search, not a crash), with
    tags saying ASHA stopped it and at which epoch; errored (NaN loss, dead worker) -> FAILED; unfinished
    when the sweep was interrupted -> KILLED (a resume reopens it). FINISHED therefore does not mean "ran
    all epochs": `sweep.selection` ranks on the epochs reached. Returns how many trials ASHA stopped early."""
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
        status, stopped_by, reason = final_status(trial, max_epochs, complete)
        stopped += stopped_by == "asha"
        tags = {"mlflow.note.content": trial_summary(trial, metric, max_epochs, reason)}
        if reason:
            tags.update(zip(STOP_TAGS, (reason, stopped_by, trial["epochs"])))
        else:  # a resumed trial that now ran all its epochs: the interruption's tags no longer hold
            client = tracking.client_for(uri)
            for key in STOP_TAGS:
                if key in run.data.tags:
                    client.delete_tag(run.info.run_id, key)
        tracking.end_run(uri, run.info.run_id, status, tags)
    return stopped


def final_status(trial: dict, max_epochs: int, complete: bool) -> tuple[str, str, str]:
    """(MLflow status, who stopped the trial: "" | asha | error | interrupt, why in words) of a trial row."""
    if trial["status"] == "ERROR":
        return "FAILED", "error", trial["error"] or "error"
    if trial["status"] == "TERMINATED":
        if trial["epochs"] >= max_epochs:
            return "FINISHED", "", ""
        return "FINISHED", "asha", f"stopped early by ASHA at epoch {trial['epochs']} of {max_epochs}"
    if complete:
        return "KILLED", "interrupt", "trial never ran"
    return "KILLED", "interrupt", "sweep interrupted; resume with supuq sweep --resume"


def trial_summary(trial: dict, metric: str, max_epochs: int, reason: str = "") -> str:
    """One line for a trial run's MLflow description: its searched params, its last `metric` and the epochs
    it reached, and how it ended when it did not run all epochs; params only while it has no result yet.
    E.g. "beta=0.31 gamma=12.4 lr=0.00042; val/ged 0.2817 at epoch 6 of 6"."""
    params = " ".join(f"{key.split('.')[-1]}={_short(value)}" for key, value in trial.get("params", {}).items())
    value = trial.get("metrics", {}).get(metric)
    if value is None:
        return params
    result = f"{metric} {value:.4f} at epoch {trial['epochs']} of {max_epochs}" + (f" ({reason})" if reason else "")
    return f"{params}; {result}" if params else result


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


# ------------------------------------------------------------------------------------------------- the parent run


def space_params(space: SweepSpace) -> dict[str, str]:
    """The sweep parent run's params that describe the search, beside the base config's own keys (which hold
    the first point's values): `space.<key>` -> e.g. "loguniform [0.001, 10.0]" for each searched key, and
    the objective, trial count and scheduler as `sweep.*`."""
    params = {f"space.{key}": f"{dist.kind} {json.dumps(dist.value)}" for key, dist in space.space.items()}
    params.update({
        "sweep.objective": space.objective, "sweep.metric": space.metric, "sweep.mode": space.mode,
        "sweep.num_samples": str(space.num_samples), "sweep.max_concurrent": str(space.max_concurrent),
        "sweep.scheduler": space.scheduler.type,
    })
    if space.scheduler.type == "asha":
        params["sweep.grace_period"] = str(space.scheduler.grace_period)
        params["sweep.reduction_factor"] = str(space.scheduler.reduction_factor)
    return params


def best_params(best: dict[str, Any]) -> dict[str, Any]:
    """The best trial as params of the sweep parent run (`best.<key>` for each searched key, its trial and
    run, the epochs it ran); its metrics go to the parent as `best/<metric>`. Logged once, when the sweep is
    complete: MLflow params cannot change, and an interrupted sweep's best may still change on resume."""
    return {**{f"best.{key}": value for key, value in best["params"].items()}, "best.trial_id": best["trial_id"],
            "best.run_id": best.get("run_id", ""), "best.epochs": best["epochs"]}


def sweep_description(name: str, trials: list[dict], best: dict | None, space: SweepSpace, max_epochs: int) -> str:
    """The sweep parent run's MLflow description (markdown): how its trials ended, the best trial, and the
    search space beside the best trial's values."""
    ended = {"ran all epochs": 0, "stopped early by ASHA": 0, "failed": 0, "interrupted": 0}
    for trial in trials:
        status = trial["status"]
        key = ("failed" if status == "ERROR" else "interrupted" if status != "TERMINATED"
               else "ran all epochs" if trial["epochs"] >= max_epochs else "stopped early by ASHA")
        ended[key] += 1
    counts = ", ".join(f"{n} {what}" for what, n in ended.items() if n)
    lines = [f"**Sweep {name}**: {space.objective} ({space.mode} {space.metric}), {len(trials)} of "
             f"{space.num_samples} trials, up to {max_epochs} epochs each ({counts or 'none ran'}).", ""]
    if best is not None:
        value = best["metrics"].get(space.metric)
        shown = "-" if value is None else f"{value:.4f}"
        lines += [f"Best trial `{best['trial_id']}`: {space.metric} **{shown}** at epoch {best['epochs']} of "
                  f"{max_epochs} (run `{best.get('run_id', '')}`).", ""]
    lines += ["| searched key | distribution | best trial |", "|---|---|---|"]
    for key, dist in space.space.items():
        value = best["params"].get(key) if best is not None else None
        lines.append(f"| {key} | {dist.kind} {json.dumps(dist.value)} | {'-' if value is None else _short(value)} |")
    return "\n".join(lines) + "\n"
