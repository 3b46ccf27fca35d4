"""The searcher Tune asks for each trial's params: Optuna's TPE through Ray's OptunaSearch, with the search
space of a `SweepSpace` in Tune's distributions, a NaN NCC told to the searcher as the worst NCC, and a trial
that ended itself as failed told as failed.
"""

from __future__ import annotations

import math
from typing import Any

from ray.tune.search.optuna import OptunaSearch

from ..verbosity import verbose
from .results import FAILED_KEY
from .space import SweepSpace

NCC_WORST = -1.0
"""What the searcher is told where val/ncc is NaN: NCC lies in [-1, 1], so -1 is its worst value."""


def searchable(result: dict[str, Any]) -> dict[str, Any]:
    """A copy of a trial result for the searcher: a NaN val/ncc becomes `NCC_WORST`."""
    value = result.get("val/ncc")
    if isinstance(value, float) and math.isnan(value):
        return {**result, "val/ncc": NCC_WORST}
    return result


class NanSafeOptunaSearch(OptunaSearch):
    """Ray's OptunaSearch, told `NCC_WORST` instead of a NaN NCC: Optuna would otherwise fail that trial (a
    NaN objective is not acceptable to `study.tell`) and TPE would learn nothing from it. Only the searcher
    sees the substitute; Tune's results and MLflow keep the NaN. Optuna's own INFO lines are silenced unless
    the user asked for them (`supuq.verbosity`)."""

    def __init__(self, *args, **kwargs):
        if not verbose():  # Optuna logs "A new study created" at INFO on every sweep; keep its warnings
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
        super().__init__(*args, **kwargs)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if FAILED_KEY not in result:  # a failed trial's last result holds NaN objectives, not a measurement
            super().on_trial_result(trial_id, searchable(result))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if result and FAILED_KEY in result:  # it ended itself as failed (diverged): Optuna's FAIL, as for an error
            super().on_trial_complete(trial_id, None, error=True)
            return
        super().on_trial_complete(trial_id, searchable(result) if result else result, error)


def param_space(space: SweepSpace) -> dict[str, Any]:
    from ray import tune

    make = {
        "loguniform": lambda v: tune.loguniform(*v),
        "uniform": lambda v: tune.uniform(*v),
        "int": lambda v: tune.randint(int(v[0]), int(v[1]) + 1),
        "choice": lambda v: tune.choice(v),
    }
    return {key: make[dist.kind](dist.value) for key, dist in space.space.items()}
