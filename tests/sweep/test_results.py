"""supuq.sweep.results: how Tune's trials are summarised (an interrupted last trial is not a finished one)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from supuq import tracking
from supuq.sweep.results import TrialProgress
from supuq.sweep.selection import best_row

from .test_driver import children, driver_log, interrupt_mid_trial, steps_of, write_space
from .test_selection import EPOCHS, TRIALS, driver_rows


def test_ctrl_c_during_the_last_trial_is_an_interrupted_sweep(tmp_path):
    """Ctrl-C while the only trial runs (it has logged an epoch, not all 40): the sweep is interrupted, not done."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    space = write_space(tmp_path, num_samples=1, scheduler={"type": "none"})
    # 40 tiny epochs: the trial is still running when the interrupt reaches it, even on an idle machine
    driver, _, state = interrupt_mid_trial(tmp_path, "last", space, epochs=40)
    errors = (tmp_path / "driver.err").read_text()
    (run,) = children(uri, state["parent_run_id"])
    if max(steps_of(uri, run.info.run_id, "train/total")) >= 40:
        pytest.fail("the trial finished before the interrupt reached it")
    assert driver.returncode == 130, (driver.returncode, driver_log(tmp_path))
    assert "sweep last stopped after 0 of 1 trials; continue it with: supuq sweep --resume last" in errors
    assert tracking.get_run(uri, state["parent_run_id"]).data.tags["supuq.complete"] == "false"
    assert "ASHA" not in run.data.tags.get("supuq.stop_reason", "")


def test_progress_bar_ends_on_the_best_eligible_trials_last_value():
    bar = TrialProgress(len(TRIALS), "val/ged", "min", EPOCHS)
    for epoch in range(EPOCHS):  # results arrive interleaved, as from concurrent trials
        for tid, (geds, _, _) in TRIALS.items():
            if epoch < len(geds):
                bar.on_trial_result(0, [], SimpleNamespace(trial_id=tid), {"val/ged": geds[epoch], "epoch": epoch + 1})
        if epoch == 1:  # nobody at 4 epochs yet: the best last value so far, marked as not full-length
            assert bar.best() == (0.30, False)
    assert bar.best() == (0.40, True)  # not 0.30 (bbb, stopped early) nor 0.35 (ccc's best epoch)
    assert bar.best()[0] == best_row(driver_rows(), "val/ged", "min", EPOCHS)[0]["metrics"]["val/ged"]
