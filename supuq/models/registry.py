"""The methods: one entry per `model.method` with everything the rest of supuq needs to know about it.

Per method: its name, labels (long for tables, short for figures and claims), the network class, its fixed
settings (`supuq.config.METHOD_FIXED`, checked on every config and applied by `Config.with_method`; plain
data there because the config module may import nothing above it), the config keys only it reads (shown in
the report's configuration table; a sweep of another method may not search them) and its sampling grid.

The sampling grid is how S = M x K samples per image are drawn: M weight samples (outer) x K samples of the
aleatoric source (inner). A method whose network really draws different weights gets M > 1 (the largest
divisor of S not above the requested M); one that does not draws 1 x S, so that every method is scored on
the same number of samples and no identical "weight samples" pretend to measure epistemic uncertainty:

- supervised: weight noise (the Bayesian last conv) x prior latents; 1 x S if `model.weight_noise` is off.
- kohl: no weight noise (its fixed settings turn it off): always 1 x S prior latents.
- kendall_gal: `KendallGalUNet.sample` draws M independent MC-dropout masks (one U-Net pass over the batch
  repeated M times, dropout kept on) x K logit-noise draws each, so dropout masks are its weight samples and
  it gets M x K like supervised; with `model.dropout` 0 the masks are all the same and it draws 1 x S.
- ssn, soft_label, phiseg: no epistemic source (no weight noise, no dropout): 1 x S, epistemic exactly 0.

Binary samples (GED, HM-IoU, the `*_binary` maps) come from each sample's logit by the method's `binary` rule:
"threshold" (logit > 0, i.e. sigmoid > 0.5: the sampled segmentation of a latent-variable model) or "bernoulli"
(an independent Bernoulli(sigmoid(logit)) draw per pixel: the soft-label U-Net, whose one probability map would
otherwise give S identical samples).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..config import METHOD_FIXED, METHODS as METHOD_NAMES, LossConfig, ModelConfig
from ..errors import ConfigError
from ..sampling import binarize
from .kendall_gal import KendallGalUNet
from .phiseg import PHiSeg
from .prob_unet import ProbUNet
from .soft_label import SoftLabelUNet
from .ssn import StochasticSegNet

PROB_UNET_KEYS = ("loss.beta", "model.latent_dim", "model.fcomb_convs")
WEIGHT_NOISE_KEYS = ("model.weight_noise.enabled", "model.weight_noise.prior", "model.weight_noise.prior_std",
                     "model.weight_noise.init_log_sigma")


BINARY_RULES = {"threshold": "sigmoid(logit) > 0.5", "bernoulli": "Bernoulli(sigmoid(logit)) per pixel"}
"""The rules a method's `binary` names, as words (prediction.json says which one made the samples)."""


@dataclass(frozen=True)
class Method:
    """One `model.method`. `keys`: the dotted config keys only this method reads (every method reads the
    shared ones: data, U-Net size, l2, optimiser, training, evaluation). `samples_weights(model_cfg)`: whether
    the network built from that config draws different weights (or dropout masks) per weight sample.
    `baseline`: a comparison method of the paper rather than its own. `binary`: how a sample's logit becomes a
    binary sample ("threshold" or "bernoulli", see the module docstring)."""

    name: str
    label: str
    short: str
    model_class: type[nn.Module]
    keys: tuple[str, ...]
    samples_weights: Callable[[ModelConfig], bool]
    baseline: bool
    binary: str = "threshold"

    @property
    def fixed(self) -> Mapping[str, Any]:
        """Settings every config of this method has (dotted key -> value), from `supuq.config.METHOD_FIXED`."""
        return METHOD_FIXED.get(self.name, {})

    def grid(self, total: int, weight_samples: int, model_cfg: ModelConfig) -> tuple[int, int]:
        """(M, K) with M * K == total: M the largest divisor of `total` not above `weight_samples` when
        `model_cfg`'s network samples weights, else (1, total)."""
        if total < 1 or weight_samples < 1:
            raise ValueError(f"total ({total}) and weight_samples ({weight_samples}) must be positive")
        if not self.samples_weights(model_cfg):
            return 1, total
        m = max(d for d in range(1, min(weight_samples, total) + 1) if total % d == 0)
        return m, total // m


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "supervised", label="Ours (Prob. U-Net + weight noise + supervised aleatoric)", short="ours",
            model_class=ProbUNet, keys=PROB_UNET_KEYS + ("loss.gamma", "loss.supervision_samples") + WEIGHT_NOISE_KEYS,
            samples_weights=lambda cfg: cfg.weight_noise.enabled, baseline=False,
        ),
        Method(
            "kohl", label="Probabilistic U-Net (Kohl et al. 2018)", short="Prob. U-Net",
            model_class=ProbUNet, keys=PROB_UNET_KEYS, samples_weights=lambda cfg: False, baseline=True,
        ),
        Method(
            "kendall_gal", label="MC dropout + logit noise (Kendall & Gal 2017)", short="Kendall & Gal",
            model_class=KendallGalUNet, keys=("model.dropout", "loss.kg_samples"),
            samples_weights=lambda cfg: cfg.dropout > 0, baseline=True,
        ),
        Method(
            "ssn", label="Stochastic Segmentation Network (Monteiro et al. 2020)", short="SSN",
            model_class=StochasticSegNet, keys=("model.ssn_rank", "loss.ssn_samples"),
            samples_weights=lambda cfg: False, baseline=True,
        ),
        Method(
            "soft_label", label="Soft-label U-Net (BCE against p_g)", short="soft-label",
            model_class=SoftLabelUNet, keys=(), samples_weights=lambda cfg: False, baseline=True,
            binary="bernoulli",
        ),
        Method(
            "phiseg", label="PHiSeg (Baumgartner et al. 2019)", short="PHiSeg", model_class=PHiSeg,
            keys=("loss.beta", "model.phiseg_levels", "model.phiseg_latent_dim"),
            samples_weights=lambda cfg: False, baseline=True,
        ),
    )
}
if tuple(METHODS) != METHOD_NAMES:  # the schema's Literal and this table must name the same methods
    raise ImportError(f"method registry {tuple(METHODS)} differs from supuq.config.METHODS {METHOD_NAMES}")

METHOD_LABELS = {name: m.label for name, m in METHODS.items()}
SHORT_LABELS = {name: m.short for name, m in METHODS.items()}
BASELINES = tuple(name for name, m in METHODS.items() if m.baseline)


def method(name: str) -> Method:
    """The registry entry of `name`; a one-line `ConfigError` naming the choices for an unknown one."""
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def sampling_grid(model_cfg: ModelConfig, total: int, weight_samples: int) -> tuple[int, int]:
    """(M, K) for `total` samples per image of a network built from `model_cfg` (see the module docstring)."""
    return method(model_cfg.method).grid(total, weight_samples, model_cfg)


def foreign_keys(methods: list[str] | tuple[str, ...], keys: list[str] | tuple[str, ...]) -> list[str]:
    """The `keys` that another method reads but none of `methods` does (searching them tunes nothing)."""
    own = {k for name in methods for k in method(name).keys}
    others = {k for m in METHODS.values() for k in m.keys} - own
    return [k for k in keys if k in others]


def binary_samples(model_cfg: ModelConfig, logits: Tensor) -> Tensor:
    """Binary samples (bool, same shape) from sample logits of a network built from `model_cfg`, by its method's
    `binary` rule. The Bernoulli rule draws from torch's global generator (evaluation seeds it)."""
    if method(model_cfg.method).binary == "bernoulli":
        return torch.rand(logits.shape, dtype=torch.float32, device=logits.device) < torch.sigmoid(logits.float())
    return binarize(logits)


def build_model(model_cfg: ModelConfig, loss_cfg: LossConfig | None = None) -> nn.Module:
    """The network for `model_cfg.method` (its registry entry's class)."""
    return method(model_cfg.method).model_class(model_cfg, loss_cfg)
