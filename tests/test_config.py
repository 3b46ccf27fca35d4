"""Config loading, validation and overrides (supuq.config); the CLI's one-line errors for bad configs."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from supuq.cli import app
from supuq.config import Config, dump_config, load_config, parse_override
from supuq.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()


@pytest.mark.parametrize("name", ["synthetic", "lidc", "miccai2012"])
def test_every_shipped_config_loads(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert cfg.data.dataset == name


def test_paper_table1_values():
    lidc, prostate = load_config(ROOT / "configs/lidc.yaml"), load_config(ROOT / "configs/miccai2012.yaml")
    assert (lidc.train.epochs, lidc.train.batch_size, lidc.loss.beta, lidc.loss.gamma, lidc.optim.lr) == (800, 32, 1, 100, 1e-6)
    assert (prostate.train.epochs, prostate.train.batch_size, prostate.loss.beta, prostate.loss.gamma,
            prostate.optim.lr) == (1000, 12, 100, 100, 1e-4)
    assert not lidc.train.augment.elastic and prostate.train.augment.elastic
    assert lidc.model.num_filters == (32, 64, 128, 192) and lidc.model.latent_dim == 6


def test_overrides_are_typed_and_validated():
    cfg = load_config(ROOT / "configs/synthetic.yaml", ["loss.gamma=3", "model.num_filters=[4,8]", "train.amp=true"])
    assert cfg.loss.gamma == 3.0 and cfg.model.num_filters == (4, 8) and cfg.train.amp is True
    assert parse_override("data.cache=null") == ("data.cache", None)


@pytest.mark.parametrize(
    "override, needle",
    [("loss.gama=1", "loss.gama"), ("loss.gamma=-1", "loss.gamma"), ("optim.lr=0", "optim.lr"),
     ("nothing", "key=value"), ("model.method=kohl", "weight_noise")],
)
def test_bad_overrides_name_the_problem(override, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config(ROOT / "configs/synthetic.yaml", [override])


def test_typo_in_yaml_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss:\n  gamam: 1\n")
    with pytest.raises(ConfigError, match=r"loss\.gamam: unknown key"):
        load_config(bad)


def test_config_is_frozen_and_roundtrips(tmp_path):
    cfg = load_config(ROOT / "configs/synthetic.yaml")
    with pytest.raises(Exception):
        cfg.loss.gamma = 1.0  # type: ignore[misc]
    dump_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_with_method_sets_the_baselines_fixed_settings():
    cfg = Config().with_method("kohl")
    assert cfg.loss.gamma == 0 and not cfg.model.weight_noise.enabled
    back = cfg.with_method("supervised")
    assert back.model.weight_noise.enabled


@pytest.mark.parametrize(
    "args, needle",
    [(["train", "--config", "nope.yaml"], "nope.yaml: no such file"),
     (["train", "--set", "loss.gamma=-2"], "loss.gamma"),
     (["train", "--set", "loss.gamam=2"], "unknown config key 'loss.gamam'")],
)
def test_cli_bad_config_is_one_line_exit_2(args, needle):
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert needle in result.output
    assert "Traceback" not in result.output
