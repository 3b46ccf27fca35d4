"""supuq.sweep.space: the shipped search spaces validate and start at Table 1's values; a bad space file is a
one-line error; a method's sweep may not search another method's keys."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from supuq.cli import app
from supuq.config import load_config
from supuq.errors import ConfigError
from supuq.sweep.driver import SweepOptions, prepare_sweep
from supuq.sweep.space import load_space

from ..conftest import ROOT

runner = CliRunner()


@pytest.mark.parametrize(
    "content, needle",
    [("space:\n  loss.beta: {gaussian: [0, 1]}\n", "unknown distribution 'gaussian'"),
     ("space:\n  loss.betta: {uniform: [0, 1]}\n", "'loss.betta' is not a config key"),
     ("space:\n  optim.lr: {loguniform: [0, 1]}\n", "must be positive"),
     ("metric: val/ged\nspace: {}\n", "space is empty")],
)
def test_bad_space_file_is_a_one_line_error(tmp_path, content, needle):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        load_space(path)
    result = runner.invoke(app, ["sweep", "--space", str(path), "--storage", str(tmp_path)])
    assert result.exit_code == 2 and needle in result.output and "Traceback" not in result.output


def test_shipped_spaces_validate_and_start_with_table1():
    from supuq.config import load_config

    for name in ("synthetic", "lidc", "miccai2012", "qubiq"):
        space = load_space(ROOT / "sweep" / f"{name}.yaml")
        assert {"loss.beta", "loss.gamma", "model.weight_noise.prior", "model.weight_noise.prior_std",
                "optim.lr"} <= set(space.space)
        first = space.first_points(load_config(ROOT / "configs" / f"{name}.yaml"))[0]
        if name == "lidc":
            assert first == {"loss.beta": 1.0, "loss.gamma": 100.0, "model.weight_noise.prior": "gaussian",
                             "model.weight_noise.prior_std": 1.0, "optim.lr": 1e-6}


def test_sweep_of_a_method_may_not_search_another_methods_keys(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  model.dropout: {uniform: [0.1, 0.7]}\n")
    cfg = ROOT / "configs" / "synthetic.yaml"
    with pytest.raises(ConfigError, match=r"model\.dropout, which method supervised does not use"):
        prepare_sweep(SweepOptions(config=cfg, space=space))
    base, _ = prepare_sweep(SweepOptions(config=cfg, space=space, overrides=["model.method=kendall_gal"]))
    assert base.model.method == "kendall_gal"
    both = tmp_path / "both.yaml"
    both.write_text("space:\n  model.method: {choice: [supervised, kendall_gal]}\n  model.dropout: {uniform: [0.1, 0.7]}\n")
    prepare_sweep(SweepOptions(config=cfg, space=both))  # kendall_gal among the searched methods reads dropout
