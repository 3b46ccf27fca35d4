"""The dataset registry (`supuq.data.registry`): every dataset `supuq data prepare` knows has a reader, a
config, a search space that validates against that config, a cache-folder rule and a family; a config of the
family is taken for a sibling dataset; readers load lazily."""

from __future__ import annotations

import subprocess
import sys

import pytest
from typer.testing import CliRunner

from supuq.cli import app
from supuq.config import DATASETS
from supuq.data.prepare import build, default_cache_dir
from supuq.data.registry import REGISTRY, dataset, load_dataset_config
from supuq.errors import ConfigError, DataError
from supuq.sweep.driver import SweepOptions, prepare_sweep

from ..conftest import ROOT

runner = CliRunner()
# What each dataset's config needs before it names a cache (qubiq: a task).
NEEDS = {"qubiq": ["data.task=brain-growth:2"]}


def test_registry_names_are_the_config_schemas():
    assert tuple(REGISTRY) == DATASETS
    with pytest.raises(DataError, match="unknown dataset 'mnist'; choose one of synthetic, lidc"):
        dataset("mnist")


@pytest.mark.parametrize("name", DATASETS)
def test_every_dataset_has_config_space_cache_rule_and_family(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # files are found in the source tree when the working directory has none
    entry = dataset(name)
    assert entry.config_path().parent == ROOT / "configs" and entry.space_path().parent == ROOT / "sweep"
    cfg = load_dataset_config(name, overrides=NEEDS.get(name, []))
    assert cfg.data.dataset == name
    # The space validates against the config: prepare_sweep checks each range's lower end and the first point.
    sweep_cfg, space = prepare_sweep(SweepOptions(dataset=name, overrides=NEEDS.get(name, [])))
    assert sweep_cfg.data.dataset == name and space.space
    assert space.first_points(sweep_cfg), f"{name}: the config's own values lie outside its search space"
    folder = default_cache_dir(name, cfg.data)
    assert folder.parent == tmp_path / "data" and folder.name.startswith(name)
    assert isinstance(entry.cache_settings(cfg.data), dict)
    assert entry.family == (name.split("-")[0] if name.startswith("lidc") else name)


def test_cache_folder_names():
    assert default_cache_dir("lidc-toolbox").name == "lidc-toolbox"
    cfg = load_dataset_config("qubiq", overrides=["data.task=brain-growth:2"])
    assert default_cache_dir("qubiq", cfg.data).name == "qubiq-brain-growth-2"
    assert default_cache_dir("synthetic").name == "synthetic-n1200-s64-g4-seed0"


def test_a_sibling_dataset_borrows_its_family_config_and_a_stranger_is_refused():
    cfg = load_dataset_config("lidc-png", ROOT / "configs" / "lidc.yaml", ["optim.lr=1e-5"])
    assert cfg.data.dataset == "lidc-png" and cfg.optim.lr == 1e-5 and cfg.train.epochs == 800  # Table 1's LIDC
    with pytest.raises(ConfigError, match=r"config for dataset 'lidc' \(lidc family\), not 'miccai2012'"):
        load_dataset_config("miccai2012", ROOT / "configs" / "lidc.yaml")
    with pytest.raises(ConfigError, match="an override set data.dataset"):
        load_dataset_config("lidc-toolbox", overrides=["data.dataset=lidc"])


def test_sweep_cli_refuses_a_config_of_another_family(tmp_path):
    result = runner.invoke(app, ["sweep", "--dataset", "miccai2012", "--config", str(ROOT / "configs/lidc.yaml"),
                                 "--storage", str(tmp_path)])
    assert result.exit_code == 2 and "lidc family" in result.output and "Traceback" not in result.output


def test_root_rules(tmp_path):
    with pytest.raises(DataError, match="dataset lidc-png needs --root"):
        build("lidc-png")
    with pytest.raises(DataError, match="no such dataset folder"):
        build("lidc-toolbox", root=tmp_path / "absent")


def test_importing_the_registry_loads_no_reader():
    code = ("import sys, supuq.data.registry, supuq.data.prepare; "
            "print(sorted(m for m in ('pylidc', 'SimpleITK', 'pydicom', 'supuq.data.lidc', 'supuq.data.qubiq') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_cli_help_lists_every_dataset():
    for command in (["data", "prepare", "--help"], ["sweep", "--help"]):
        result = runner.invoke(app, command, terminal_width=400)
        assert result.exit_code == 0
        assert all(name in result.output for name in DATASETS), (command, result.output)
