"""The method registry (`supuq.models.registry`): one entry per `model.method`, its sampling grid, fixed settings,
own config keys and the network `build_model` makes, checked against what the networks really do."""

from __future__ import annotations

import pytest
import torch

from supuq.config import METHODS as CONFIG_METHODS, Config, LossConfig, load_config
from supuq.errors import ConfigError
from supuq.models import KendallGalUNet, ProbUNet, build_model
from supuq.models.registry import BASELINES, METHOD_LABELS, METHODS, SHORT_LABELS, foreign_keys, method, sampling_grid

from ..conftest import ROOT
from .conftest import small_cfg

SMALL = {"model.num_filters": [4, 8], "model.convs_per_block": 1, "model.latent_dim": 2, "model.fcomb_convs": 2}


def variants() -> list[tuple[str, Config]]:
    """Each method at its defaults, plus the variants whose network samples no weights although the method
    could: supervised without weight noise, Kendall-Gal without dropout."""
    small = Config().updated(SMALL)
    out = [(name, small.with_method(name)) for name in METHODS]
    out.append(("supervised, no weight noise", out[0][1].updated({"model.weight_noise.enabled": False})))
    out.append(("kendall_gal, dropout 0", small.with_method("kendall_gal").updated({"model.dropout": 0.0})))
    return out


def really_samples_weights(cfg: Config) -> bool:
    """Whether the built network's M = 2 samples differ beyond its aleatoric noise: the Kendall-Gal logit noise
    is pinned at its minimum sigma, and the Prob. U-Net reuses the same latents under every weight sample, so
    any remaining difference between m = 0 and m = 1 comes from different weights (or dropout masks)."""
    torch.manual_seed(0)
    cfg = cfg.updated({"model.weight_noise.init_log_sigma": -1.0})  # visible weight noise where there is any
    model = build_model(cfg.model, cfg.loss).eval()
    if isinstance(model, KendallGalUNet):
        torch.nn.init.zeros_(model.log_sigma_head.weight)
        torch.nn.init.constant_(model.log_sigma_head.bias, -50.0)  # clamped to LOG_SIGMA_MIN: sigma ~ 5e-5
    x = torch.rand(2, 1, 16, 16)
    try:
        with torch.no_grad():
            logits = model.sample(x, weight_samples=2, latent_samples=1)
    except ValueError:  # the plain Prob. U-Net refuses M > 1
        return False
    return float((logits[:, 0] - logits[:, 1]).abs().max()) > 1e-2


def test_registry_names_labels_and_classes():
    assert tuple(METHODS) == CONFIG_METHODS  # the schema's Literal and the registry name the same methods
    assert set(METHOD_LABELS) == set(SHORT_LABELS) == set(METHODS) and BASELINES == tuple(n for n in METHODS if n != "supervised")
    assert METHODS["supervised"].model_class is ProbUNet and METHODS["kendall_gal"].model_class is KendallGalUNet
    schema = Config().flat()
    for entry in METHODS.values():
        assert set(entry.keys) <= set(schema), entry.name  # every own key is a real config key
        assert set(entry.fixed) <= set(schema), entry.name
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        method("nope")


@pytest.mark.parametrize("name, cfg", variants(), ids=[n for n, _ in variants()])
def test_grid_matches_what_the_network_samples(name, cfg):
    samples_weights = METHODS[cfg.model.method].samples_weights(cfg.model)
    assert samples_weights is really_samples_weights(cfg), name
    for total in range(1, 61):
        for weight_samples in range(1, 9):
            m, k = sampling_grid(cfg.model, total, weight_samples)
            assert m * k == total and 1 <= m <= weight_samples
            if samples_weights:  # the largest divisor of total not above the requested M
                assert m == max(d for d in range(1, weight_samples + 1) if total % d == 0)
            else:
                assert m == 1, f"{name} got M={m} but draws no different weights"


def test_grid_examples():
    cfg = Config()
    assert sampling_grid(cfg.model, 50, 5) == (5, 10)
    assert sampling_grid(cfg.model, 16, 5) == (4, 4)
    assert sampling_grid(cfg.with_method("kohl").model, 50, 5) == (1, 50)
    assert sampling_grid(cfg.with_method("kendall_gal").model, 50, 5) == (5, 10)  # 5 dropout masks x 10 noise draws
    with pytest.raises(ValueError, match="positive"):
        sampling_grid(cfg.model, 0, 5)


def test_fixed_settings_are_checked_and_applied():
    kohl = Config().with_method("kohl")
    for key, value in METHODS["kohl"].fixed.items():
        assert kohl.flat()[key] == value
    with pytest.raises(ConfigError, match=r"model\.method=kohl fixes .*loss\.gamma=0\.0"):
        kohl.updated({"loss.gamma": 1.0})
    with pytest.raises(ConfigError, match=r"model\.weight_noise\.enabled=false"):
        Config().updated({"model.method": "kohl"})
    # switching to supervised turns weight noise on, but the supervised method without it stays a valid config
    assert kohl.with_method("supervised").model.weight_noise.enabled
    assert not Config().updated({"model.weight_noise.enabled": False}).model.weight_noise.enabled


def test_foreign_keys():
    assert foreign_keys(["supervised"], ["loss.beta", "model.dropout", "optim.lr"]) == ["model.dropout"]
    assert foreign_keys(["kendall_gal"], ["loss.beta", "model.dropout", "optim.lr"]) == ["loss.beta"]
    assert foreign_keys(["supervised", "kendall_gal"], ["loss.beta", "model.dropout"]) == []
    assert foreign_keys(["kohl"], ["loss.gamma", "model.weight_noise.prior"]) == ["loss.gamma", "model.weight_noise.prior"]


def test_kohl_network_is_built_without_weight_noise():
    cfg = Config().updated(SMALL).with_method("kohl")
    model = build_model(cfg.model, LossConfig(gamma=0.0))
    assert isinstance(model, ProbUNet) and not model.has_weight_noise


def test_study_configs_keep_their_methods_fixed_settings():
    study = load_config(ROOT / "configs" / "synthetic-study.yaml")
    for name in METHODS:
        flat = study.with_method(name).flat()
        assert all(flat[k] == v for k, v in METHODS[name].fixed.items())


@pytest.mark.parametrize(
    "method, cls, samples_weights",
    [("supervised", ProbUNet, True), ("kohl", ProbUNet, False), ("kendall_gal", KendallGalUNet, True)],
)
def test_build_model(method, cls, samples_weights):
    cfg = small_cfg(method)
    model = build_model(cfg, LossConfig())
    assert type(model) is cls and model.model_cfg is cfg
    assert METHODS[method].samples_weights(cfg) is samples_weights
    if cls is ProbUNet:
        assert model.has_weight_noise is samples_weights
