"""What `supuq sweep` accepts (`SweepOptions`) and its check before Ray starts (`prepare_sweep`): the config and
search space with the command line's values, every value a trial can draw accepted by the config schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ..config import Config
from ..data.registry import dataset as registry_entry, load_dataset_config
from ..errors import ConfigError
from .space import SweepSpace, check_method_keys, load_space, objective_changes


@dataclass
class SweepOptions:
    """Everything `supuq sweep` accepts; None means "from the space file / config"."""

    dataset: str = "synthetic"
    config: Path | None = None
    space: Path | None = None
    samples: int | None = None
    concurrent: int | None = None
    overrides: list[str] = field(default_factory=list)
    gpus_per_trial: float | None = None
    cpus_per_trial: float | None = None
    address: str | None = None
    storage: str | None = None
    tracking_uri: str | None = None
    name: str | None = None
    resume: str | None = None
    objective: str | None = None  # ged | ncc | both (None: the space file's metric); see objective_changes
    wait_for_resources: float = 0.0  # seconds to wait (asking the autoscaler) for nodes that can run a trial



def prepare_sweep(opts: SweepOptions) -> tuple[Config, SweepSpace]:
    """Load and validate the config and search space (before Ray starts), with CLI overrides applied.

    Both default to the dataset's files in `data.registry`; a config of the dataset's family is taken for it
    (`--dataset lidc-toolbox` sweeps configs/lidc.yaml with data.dataset=lidc-toolbox)."""
    entry = registry_entry(opts.dataset)
    cfg = load_dataset_config(opts.dataset, opts.config, opts.overrides)
    space = load_space(opts.space or entry.space_path())
    changes: dict[str, Any] = {}
    if opts.samples is not None:
        changes["num_samples"] = opts.samples
    if opts.concurrent is not None:
        changes["max_concurrent"] = opts.concurrent
    resources = space.resources.model_dump()
    if opts.cpus_per_trial is not None:
        resources["cpu"] = opts.cpus_per_trial
    if opts.gpus_per_trial is not None:
        resources["gpu"] = opts.gpus_per_trial
    changes["resources"] = resources
    if opts.objective is not None:
        changes.update(objective_changes(opts.objective, space))
    raw = {**space.model_dump(mode="json"), **changes}
    raw["space"] = {k: {d["kind"]: d["value"]} for k, d in raw["space"].items()}
    space = validated_space(raw, space_file=opts.space or entry.space_path())
    check_method_keys(space, cfg)
    check_space_values(space, cfg)
    return cfg, space


_OPTION_OF_FIELD = {"num_samples": "--samples", "max_concurrent": "--concurrent", "resources": "--cpus-per-trial / "
                    "--gpus-per-trial"}
"""The command-line option that sets a space field, for naming it in an error (the file is named otherwise)."""


def validated_space(raw: dict[str, Any], space_file: Path) -> SweepSpace:
    """The space with the command line's values applied; one line naming the option (or the file) when pydantic
    rejects a value, e.g. `--samples 0`."""
    try:
        return SweepSpace.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        field_name = str(first["loc"][0]) if first["loc"] else ""
        where = _OPTION_OF_FIELD.get(field_name) or f"{space_file}: {'.'.join(str(p) for p in first['loc'])}"
        value = first.get("input")
        raise ConfigError(f"{where}: {first['msg'].removeprefix('Value error, ')}"
                          + ("" if isinstance(value, dict) else f", got {value!r}")) from None


def check_space_values(space: SweepSpace, cfg: Config) -> None:
    """Every value a trial can draw must be one the config schema accepts, or each trial errors before it
    starts: both ends of each range (the schema's bounds are intervals, so the ends decide), every value of a
    short int range (train.augment.kernel_size must be odd), every choice and every given first point, each on
    the base config. A one-line ConfigError before Ray starts."""
    for key, dist in space.space.items():
        values = dist.value
        if dist.kind == "int" and values[1] - values[0] <= 100:  # every integer: a rule may be no interval (odd sizes)
            values = range(int(values[0]), int(values[1]) + 1)
        for value in values:
            try:
                cfg.updated({key: value})
            except ConfigError as err:
                raise ConfigError(f"search space {key}: {dist.kind} {dist.value} reaches {value!r}, which the "
                                  f"config rejects ({err})") from None
    for point in space.first_points(cfg):
        cfg.updated(point)
