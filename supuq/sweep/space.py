"""Search-space files (`sweep/<name>.yaml`, docs/architecture.md, Configs and search spaces; `data.registry` names each dataset's), validated
before Ray starts.

A space maps dotted config keys to one distribution each:
`{loguniform: [lo, hi]}` | `{uniform: [lo, hi]}` | `{choice: [...]}` | `{int: [lo, hi]}`.
Every key must name a leaf of the config schema and none may be only another method's (`check_method_keys`),
and the first point evaluated is the dataset config's own values (Table 1 of the paper for LIDC and MICCAI2012)
unless the file gives `points_to_evaluate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..config import Config, is_config_key, read_yaml
from ..errors import ConfigError
from ..models.registry import foreign_keys

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "int")


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Distribution(_Strict):
    """One distribution, written in YAML as a one-key mapping such as `{loguniform: [1e-5, 1e-2]}`."""

    kind: Literal["loguniform", "uniform", "choice", "int"]
    value: Any

    @model_validator(mode="before")
    @classmethod
    def _from_mapping(cls, raw: Any) -> Any:
        if not isinstance(raw, dict) or len(raw) != 1:
            raise ValueError(f"give exactly one of {', '.join(DISTRIBUTIONS)}, e.g. {{loguniform: [1e-5, 1e-2]}}")
        kind, value = next(iter(raw.items()))
        if kind not in DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {kind!r}; use one of {', '.join(DISTRIBUTIONS)}")
        return {"kind": kind, "value": value}

    @model_validator(mode="after")
    def _bounds(self) -> "Distribution":
        kind, value = self.kind, self.value
        if kind == "choice":
            if not isinstance(value, list) or not value:
                raise ValueError("choice needs a non-empty list of options")
            return self
        if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
            raise ValueError(f"{kind} needs [lo, hi] numbers, got {value!r}")
        lo, hi = value
        if kind == "int" and not all(float(v).is_integer() for v in value):
            raise ValueError(f"int bounds must be integers, got {value!r}")
        if not lo < hi:
            raise ValueError(f"{kind} bounds must satisfy lo < hi, got [{lo}, {hi}]")
        if kind == "loguniform" and lo <= 0:
            raise ValueError(f"loguniform bounds must be positive, got [{lo}, {hi}]")
        return self

    def contains(self, x: Any) -> bool:
        if self.kind == "choice":
            return x in self.value
        lo, hi = self.value
        return _is_number(x) and lo <= x <= hi


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


class Scheduler(_Strict):
    type: Literal["asha", "none"] = "asha"
    grace_period: int = Field(2, ge=1)
    reduction_factor: float = Field(2.0, gt=1)
    max_epochs: int | None = Field(None, ge=1, description="default: train.epochs of the config")


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


OBJECTIVES = {"ged": ("val/ged", "min"), "ncc": ("val/ncc", "max")}
"""`supuq sweep --objective` names -> (metric, mode); `both` searches the two together (see `Objective`)."""


class Objective(_Strict):
    """One objective of a multi-objective search."""

    metric: str
    mode: Literal["min", "max"]


class SweepSpace(_Strict):
    metric: str = "val/ged"
    mode: Literal["min", "max"] = "min"
    objectives: list[Objective] | None = Field(
        None, description="multi-objective search (Optuna's TPE over all of them, a Pareto front); `metric` and "
        "`mode` are then the first objective's: the progress bar's and best.yaml's metric",
    )
    num_samples: int = Field(8, ge=1)
    max_concurrent: int = Field(2, ge=1)
    seed: int = 0
    max_failures: int = Field(1, ge=1)
    scheduler: Scheduler = Scheduler()
    resources: Resources = Resources()
    space: dict[str, Distribution]
    points_to_evaluate: list[dict[str, Any]] | None = None

    @field_validator("space")
    @classmethod
    def _keys_in_schema(cls, space: dict[str, Distribution]) -> dict[str, Distribution]:
        if not space:
            raise ValueError("space is empty: give at least one dotted config key to search")
        for key in space:
            if not is_config_key(key):
                raise ValueError(f"{key!r} is not a config key (e.g. loss.beta, optim.lr)")
        return space

    @model_validator(mode="before")
    @classmethod
    def _primary_from_objectives(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and raw.get("objectives"):
            first = raw["objectives"][0]
            if isinstance(first, dict):
                raw = {**raw, "metric": raw.get("metric", first.get("metric")), "mode": raw.get("mode", first.get("mode"))}
        return raw

    @model_validator(mode="after")
    def _objectives(self) -> "SweepSpace":
        if self.objectives is None:
            return self
        if len(self.objectives) < 2 or len({o.metric for o in self.objectives}) != len(self.objectives):
            raise ValueError("objectives needs two or more different metrics (one objective: use metric and mode)")
        if (self.metric, self.mode) != (self.objectives[0].metric, self.objectives[0].mode):
            raise ValueError("with objectives, metric and mode must be the first objective's (or left out)")
        if self.scheduler.type == "asha":
            raise ValueError("ASHA stops trials by one metric, which would prune the other objective's end of the "
                             "Pareto front: use scheduler: {type: none} with objectives")
        return self

    @property
    def objective(self) -> str:
        """`both` for the GED + NCC search, else `ged` / `ncc` / the metric's name."""
        if self.objectives:
            pairs = {(o.metric, o.mode) for o in self.objectives}
            return "both" if pairs == set(OBJECTIVES.values()) else "+".join(o.metric for o in self.objectives)
        return next((name for name, pair in OBJECTIVES.items() if pair == (self.metric, self.mode)), self.metric)

    def first_points(self, base: Config) -> list[dict[str, Any]]:
        """Points evaluated before the searcher's own, each over every searched key: `points_to_evaluate`
        completed with the base config's values, else one point of the base config's values (Table 1 of
        the paper for LIDC and MICCAI2012). No point is made when a base value lies outside its range: the
        searcher starts on its own rather than from a silently clipped value."""
        flat = base.flat()
        defaults = {k: flat[k] for k in self.space}
        given = self.points_to_evaluate if self.points_to_evaluate is not None else [{}]
        points = []
        for point in given:
            unknown = [k for k in point if k not in self.space]
            if unknown:
                raise ConfigError(f"points_to_evaluate keys not in space: {', '.join(unknown)}")
            full = {**defaults, **point}
            outside = [k for k, v in full.items() if not self.space[k].contains(v)]
            if outside and point:
                raise ConfigError(f"points_to_evaluate value outside its range for: {', '.join(outside)}")
            if not outside:
                points.append(full)
        return points


def check_method_keys(space: SweepSpace, base: Config) -> None:
    """A one-line `ConfigError` when the space searches a key that only another method reads (e.g. model.dropout
    for the supervised method): those trials would differ in nothing but their seed. The methods are the base
    config's, or every choice when the space searches `model.method` itself (registry: `Method.keys`)."""
    searched = space.space.get("model.method")
    methods = searched.value if searched is not None and searched.kind == "choice" else [base.model.method]
    foreign = foreign_keys(methods, list(space.space))
    if foreign:
        raise ConfigError(f"the space searches {', '.join(foreign)}, which method {'/'.join(methods)} does not use "
                          "(supuq.models.registry lists each method's keys); drop it or set model.method")


def load_space(path: str | Path) -> SweepSpace:
    """Read and validate a search-space YAML; errors are one line naming the file and the key."""
    raw = read_yaml(path)
    try:
        return SweepSpace.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "space"
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{path}: {where}: {msg}") from None


def check_objective(objective: str | None) -> None:
    """`--objective` is ged, ncc or both (None: the space file's or sweep's own), else a one-line error."""
    if objective is not None and objective != "both" and objective not in OBJECTIVES:
        raise ConfigError(f"--objective must be ged, ncc or both, got {objective!r}")


def objective_changes(objective: str, space: SweepSpace) -> dict[str, Any]:
    """Search-space fields for `supuq sweep --objective ged|ncc|both`.

    `ged` (min) and `ncc` (max) are single-objective TPE, with the space file's scheduler (ASHA on that metric).
    `both` is Optuna's multi-objective TPE over val/ged (min) and val/ncc (max) and turns ASHA off: ASHA ranks
    trials by one metric, so it would stop the trials of the front's high-NCC end for their GED, and a stopped
    trial's last values come from fewer epochs than a finished one's, so they cannot be compared on the front.
    Every trial then runs all epochs. Where NCC is NaN (no validation image with a non-constant map), the
    searcher alone is told -1, the worst NCC (`supuq.sweep.search.NanSafeOptunaSearch`); MLflow keeps the NaN."""
    if objective == "both":
        return {
            "metric": OBJECTIVES["ged"][0], "mode": OBJECTIVES["ged"][1],
            "objectives": [{"metric": m, "mode": d} for m, d in (OBJECTIVES["ged"], OBJECTIVES["ncc"])],
            "scheduler": {**space.scheduler.model_dump(mode="json"), "type": "none"},
        }
    check_objective(objective)
    metric, mode = OBJECTIVES[objective]
    return {"metric": metric, "mode": mode, "objectives": None}
