"""supuq.sweep.search: the NaN-safe Optuna searcher hears the worst NCC for a NaN one."""

from __future__ import annotations

from supuq.sweep.search import NCC_WORST, NanSafeOptunaSearch


def test_searcher_hears_worst_ncc_for_nan():
    from ray import tune

    searcher = NanSafeOptunaSearch(metric=["val/ged", "val/ncc"], mode=["min", "max"], seed=0)
    searcher.set_search_properties(None, None, {"x": tune.uniform(0, 1)})
    assert searcher.suggest("t1") is not None
    searcher.on_trial_complete("t1", {"val/ged": 0.4, "val/ncc": float("nan"), "training_iteration": 1})
    (trial,) = searcher._ot_study.trials
    assert trial.state.name == "COMPLETE" and trial.values == [0.4, NCC_WORST]
