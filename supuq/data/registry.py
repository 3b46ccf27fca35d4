"""The one table of datasets: for each name `supuq data prepare` knows, the reader that builds it, the files its
training and its sweep start from, its default cache folder and its family.

Every place that needs to know something about a dataset asks here: `data.prepare` (build, cache folder, stale
caches), the CLI (names, help texts, default configs), the sweep (default config and search space, which config
a dataset may borrow) and the report (the family whose published values apply).

Families: datasets that are versions of one source share a family (the four LIDC routes are all LIDC-IDRI). A
dataset without its own files uses its family's `configs/<family>.yaml` and `sweep/<family>.yaml`: the paper's
Table 1 settings belong to the source, not to the route it was read by (`load_dataset_config`).

Readers import their loader inside the call, so importing this module (and the synthetic path) needs neither
pylidc nor SimpleITK.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from ..config import DATASETS, Config, DataConfig, load_config
from ..errors import ConfigError, DataError
from .types import MultiGraderSet

_SOURCE_TREE = Path(__file__).resolve().parents[2]
"""The checkout or installed tree holding configs/ and sweep/ (the fallback after the working directory)."""

RootKind = Literal["generated", "optional", "path", "folder"]
"""What `--root` must be: nothing (the data are generated), optional (the reader finds a default), a file or
folder, or a folder."""

Reader = Callable[[Path | None, DataConfig, int | None, Path | None, "list[str] | None"], MultiGraderSet]
"""`reader(root, data_cfg, workers, work_dir, scans)` -> the in-memory dataset (workers, work_dir and scans, the
patient ids to restrict to: LIDC DICOM only)."""


@dataclass(frozen=True)
class Dataset:
    """One entry of the registry.

    cache_name(cfg): the default cache folder's name under `data/`; cache_settings(cfg): the config values a
    prepared cache must have been made with (compared with its meta.json; generated data compare their
    generator instead, see `data.prepare`)."""

    name: str
    family: str
    root: RootKind
    read: Reader
    cache_name: Callable[[DataConfig], str]
    cache_settings: Callable[[DataConfig], dict[str, Any]]
    config: str  # configs/<config>.yaml
    space: str  # sweep/<space>.yaml

    @property
    def generated(self) -> bool:
        """True when the data are generated (no raw data; a missing cache is made on first use)."""
        return self.root == "generated"

    def config_path(self) -> Path:
        return _find("configs", self.config, f"no config for dataset {self.name!r}")

    def space_path(self) -> Path:
        return _find("sweep", self.space, f"no search space for dataset {self.name!r}")


def _find(folder: str, stem: str, missing: str) -> Path:
    """<folder>/<stem>.yaml under the working directory, else under the source tree."""
    for root in (Path.cwd(), _SOURCE_TREE):
        candidate = root / folder / f"{stem}.yaml"
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{missing} (looked for {folder}/{stem}.yaml)")


# ------------------------------------------------------------------------------------------------- readers


def _read_synthetic(root, cfg: DataConfig, workers, work_dir, scans=None) -> MultiGraderSet:
    from .synthetic import generate

    s = cfg.synthetic
    return generate(s.n, size=s.size, graders=s.graders, seed=s.seed)


def _read_lidc(root, cfg: DataConfig, workers, work_dir, scans=None) -> MultiGraderSet:
    from .lidc import load_lidc  # root None: $SUPUQ_LIDC_ROOT, else ~/.pylidcrc (load_lidc resolves it)

    return load_lidc(root, crop=cfg.crop, workers=workers, work_dir=work_dir, scans=scans)


def _read_toolbox(root, cfg: DataConfig, workers, work_dir, scans=None) -> MultiGraderSet:
    from .lidc_files import load_toolbox

    return load_toolbox(root, crop=cfg.crop)


def _read_pickle(root, cfg: DataConfig, workers, work_dir, scans=None) -> MultiGraderSet:
    from .lidc_release import load_lidc_pickle  # root: data_lidc.pickle or the folder holding it

    return load_lidc_pickle(root)


def _read_png(root, cfg: DataConfig, workers, work_dir, scans=None) -> MultiGraderSet:
    from .lidc_release import load_lidc_png

    return load_lidc_png(root, crop=cfg.crop)


def _read_prostate(root, cfg: DataConfig, workers, work_dir, scans=None) -> MultiGraderSet:
    from .prostate import load_prostate

    return load_prostate(root, crop=cfg.crop, min_graders=cfg.min_graders, keep_empty=cfg.keep_empty_slices)


def _read_qubiq(root, cfg: DataConfig, workers, work_dir, scans=None) -> MultiGraderSet:
    from .qubiq import load_qubiq

    return load_qubiq(root, qubiq_task(cfg), crop=cfg.crop, keep_empty=cfg.keep_empty_slices)


def qubiq_task(cfg: DataConfig) -> str:
    """QUBIQ's task (NAME or NAME:SUBTASK); a one-line error saying how to give it when the config has none."""
    if not cfg.task:
        raise DataError("dataset qubiq needs a task: pass --task NAME (a folder under --root, e.g. brain-growth; "
                        "NAME:2 for sub-task 2) or set data.task")
    return cfg.task


# ------------------------------------------------------------------------------------------------- cache rules


def _synthetic_cache_name(cfg: DataConfig) -> str:
    s = cfg.synthetic  # every generator size parameter in the name, so different sets never collide
    return f"synthetic-n{s.n}-s{s.size}-g{s.graders}-seed{s.seed}"


def _qubiq_cache_name(cfg: DataConfig) -> str:
    from .qubiq import task_slug

    return f"qubiq-{task_slug(qubiq_task(cfg))}"


def _qubiq_settings(cfg: DataConfig) -> dict[str, Any]:
    from .qubiq import canonical_task

    return {"crop": cfg.crop, "task": canonical_task(qubiq_task(cfg)), "keep_empty": cfg.keep_empty_slices}


def _crop_only(cfg: DataConfig) -> dict[str, Any]:
    return {"crop": cfg.crop}


def _no_settings(cfg: DataConfig) -> dict[str, Any]:
    return {}


def _named(name: str) -> Callable[[DataConfig], str]:
    return lambda cfg: name


def _lidc_route(name: str, root: RootKind, read: Reader) -> Dataset:
    """A route to LIDC-IDRI: Table 1's LIDC config and the LIDC search space, cache data/<name>/."""
    return Dataset(name, "lidc", root, read, _named(name), _crop_only, config="lidc", space="lidc")


_ENTRIES = (
    Dataset("synthetic", "synthetic", "generated", _read_synthetic, _synthetic_cache_name, _no_settings,
            config="synthetic", space="synthetic"),
    _lidc_route("lidc", "optional", _read_lidc),
    _lidc_route("lidc-toolbox", "folder", _read_toolbox),
    _lidc_route("lidc-pickle", "path", _read_pickle),
    _lidc_route("lidc-png", "folder", _read_png),
    Dataset("miccai2012", "miccai2012", "folder", _read_prostate, _named("miccai2012"),
            lambda cfg: {"crop": cfg.crop, "min_graders": cfg.min_graders, "keep_empty": cfg.keep_empty_slices},
            config="miccai2012", space="miccai2012"),
    Dataset("qubiq", "qubiq", "folder", _read_qubiq, _qubiq_cache_name, _qubiq_settings,
            config="qubiq", space="qubiq"),
)
REGISTRY: dict[str, Dataset] = {entry.name: entry for entry in _ENTRIES}
"""Dataset name -> its entry, in the order of `config.DATASETS` (the config schema's list of names)."""


def dataset(name: str) -> Dataset:
    """The registry entry of `name`; a one-line error listing the known names otherwise."""
    if name not in REGISTRY:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return REGISTRY[name]


def names_help() -> str:
    """`synthetic | lidc | ...`: the dataset names for CLI help texts."""
    return " | ".join(DATASETS)


def load_dataset_config(name: str, path: str | Path | None = None,
                        overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config to train or sweep dataset `name` with: `path` (default: the dataset's config file) with the
    `key=value` overrides applied.

    A config written for another dataset of the same family is taken with `data.dataset` set to `name` (e.g.
    `lidc-toolbox` trains from configs/lidc.yaml): the family shares Table 1's settings. A config of another
    family is an error, since its settings were never meant for this data."""
    entry = dataset(name)
    path = path if path is not None else entry.config_path()
    written_for = load_config(path).data.dataset
    if written_for != name:
        if dataset(written_for).family != entry.family:
            raise ConfigError(f"{path} is a config for dataset {written_for!r} ({dataset(written_for).family} "
                              f"family), not {name!r} ({entry.family} family)")
        overrides = [f"data.dataset={name}", *overrides]
    cfg = load_config(path, overrides)
    if cfg.data.dataset != name:
        raise ConfigError(f"config is for dataset {cfg.data.dataset!r}, not {name!r} (an override set data.dataset)")
    return cfg
