"""Validated configuration: pydantic models, YAML load/dump and dotted `a.b=c` overrides.

Every model is frozen and rejects unknown keys, so a typo in a YAML file or a `--set` override is an error
naming the key rather than a silently ignored setting. `Config.flat()` gives the dotted-key view used for
MLflow params and sweep spaces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

DATASETS = ("synthetic", "lidc", "lidc-toolbox", "lidc-pickle", "lidc-png", "miccai2012", "qubiq")
"""The dataset names the config schema accepts; what each one is (reader, files, cache, family) is
`supuq.data.registry`, whose entries are exactly these names (tests/data/test_registry.py)."""
METHODS = ("supervised", "kohl", "kendall_gal", "ssn", "soft_label", "phiseg")
"""The method names the config schema accepts; what each one is (network, labels, keys, sampling grid) is
`supuq.models.registry`, whose entries are exactly these names."""
METHOD_FIXED: dict[str, dict[str, Any]] = {
    # Settings every config of a method has (checked by `Config`, applied by `Config.with_method`), as plain
    # data here because the config module imports nothing of the models; the registry reads it.
    "kohl": {"model.weight_noise.enabled": False, "loss.gamma": 0.0},  # the plain Probabilistic U-Net
}
METHOD_SWITCH_ON: dict[str, dict[str, Any]] = {
    # What `Config.with_method` also sets when switching to a method, which a config may change afterwards
    # (the supervised method without weight noise is a valid ablation, but switching to it turns the noise on).
    "supervised": {"model.weight_noise.enabled": True},
}


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_bools_for_numbers(cls, raw: Any) -> Any:
        """`epochs: true` is a typo, not 1: pydantic would read a boolean as a number, so refuse it here."""
        if isinstance(raw, dict):
            for name, field in cls.model_fields.items():
                if isinstance(raw.get(name), bool) and bool not in _accepted_types(field.annotation):
                    raise ValueError(f"{name}: expected a number, got {str(raw[name]).lower()}")
        return raw


def _accepted_types(annotation: Any) -> set:
    """The plain types a field annotation admits (int | None -> {int, NoneType}; Literal and models count as
    non-bool)."""
    import types
    import typing

    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return set().union(*(_accepted_types(a) for a in args))
    return {annotation}


class SyntheticConfig(_Strict):
    """Size of the generated synthetic set (used when `data.dataset == "synthetic"` and no cache exists)."""

    n: int = Field(1200, ge=10)
    size: int = Field(64, ge=16, le=512)
    graders: int = Field(4, ge=2, le=16)
    seed: int = 0


class DataConfig(_Strict):
    dataset: Literal[DATASETS] = "synthetic"
    cache: str | None = Field(None, description="cache folder; default data/<dataset>/ under the working directory")
    synthetic: SyntheticConfig = SyntheticConfig()
    split_seed: int = 0
    split_by: Literal["group", "slice"] = "group"
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)
    min_graders: int = Field(3, ge=1)
    keep_empty_slices: bool = False
    crop: int = Field(128, ge=16)
    task: str | None = Field(None, description="QUBIQ task folder, NAME or NAME:SUBTASK (default sub-task 1)")

    @model_validator(mode="after")
    def _fractions_sum_to_one(self) -> "DataConfig":
        if any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1.0) > 1e-6:
            raise ValueError(f"data.fractions must be non-negative and sum to 1, got {list(self.fractions)}")
        return self


class WeightNoiseConfig(_Strict):
    """The Bayesian (variational-dropout style) last conv of the U-Net: epistemic uncertainty."""

    enabled: bool = True
    prior: Literal["gaussian", "log_uniform"] = "gaussian"
    prior_std: float = Field(1.0, gt=0)
    init_log_sigma: float = -5.0


class ModelConfig(_Strict):
    method: Literal[METHODS] = "supervised"
    in_channels: int = Field(1, ge=1)
    num_filters: tuple[int, ...] = (32, 64, 128, 192)
    convs_per_block: int = Field(3, ge=1)
    latent_dim: int = Field(6, ge=1)
    fcomb_convs: int = Field(4, ge=1)
    weight_noise: WeightNoiseConfig = WeightNoiseConfig()
    dropout: float = Field(0.5, ge=0, lt=1, description="Kendall-Gal MC dropout rate in the deepest blocks")
    ssn_rank: int = Field(10, ge=0, le=64, description="SSN: rank R of the logit covariance factor P")
    phiseg_levels: int | None = Field(None, ge=1, description="PHiSeg: latent levels L, at the L coarsest "
                                      "resolutions (at most len(model.num_filters); null: all but the finest)")
    phiseg_latent_dim: int = Field(2, ge=1, description="PHiSeg: channels of each level's spatial latent z_l")

    @model_validator(mode="after")
    def _filters(self) -> "ModelConfig":
        if len(self.num_filters) < 2 or any(f < 1 for f in self.num_filters):
            raise ValueError("model.num_filters needs at least two positive entries")
        if self.method == "phiseg" and self.phiseg_levels is not None and self.phiseg_levels > len(self.num_filters):
            raise ValueError(f"model.phiseg_levels ({self.phiseg_levels}) exceeds the {len(self.num_filters)} "
                             "resolution levels of model.num_filters: PHiSeg puts one latent level per resolution")
        return self

    @property
    def latent_levels(self) -> int:
        """PHiSeg's L: `phiseg_levels`, or when null one latent level per resolution level of `num_filters` but the
        finest (the paper keeps its latents off the full resolution: 5 latent levels of 7 resolutions)."""
        return self.phiseg_levels if self.phiseg_levels is not None else max(1, len(self.num_filters) - 1)


class LossConfig(_Strict):
    beta: float = Field(1.0, ge=0, description="weight of KL(q(z|x,y) || p(z|x))")
    gamma: float = Field(100.0, ge=0, description="weight of the supervised aleatoric CE(p_g, p_m)")
    supervision_samples: int = Field(4, ge=1, description="prior samples averaged into p_m")
    l2: float = Field(1e-5, ge=0)
    kg_samples: int = Field(20, ge=1, description="Kendall-Gal logit-noise samples T in the loss")
    ssn_samples: int = Field(20, ge=1, le=1000, description="SSN: Monte-Carlo logit samples M in the loss")


class OptimConfig(_Strict):
    lr: float = Field(1e-4, gt=0)


class AugmentConfig(_Strict):
    """On-device augmentation; the elastic defaults move pixels ~1.4 px per axis on average (~2.1 px length,
    ~8.5 px max) at 128x128. kornia's alpha is in normalised coordinates, so shifts scale with image size."""

    elastic: bool = False
    flip: bool = False
    kernel_size: int = Field(31, ge=3)
    sigma: float = Field(6.0, gt=0)
    alpha: float = Field(1.0, ge=0)

    @model_validator(mode="after")
    def _odd_kernel(self) -> "AugmentConfig":
        if self.kernel_size % 2 == 0:
            raise ValueError("train.augment.kernel_size must be odd")
        return self


class TrainConfig(_Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=1)
    val_every: int = Field(1, ge=1)
    seed: int = 0
    device: str = "auto"
    amp: bool = Field(False, description="bf16 autocast on CUDA")
    channels_last: bool | Literal["auto"] = Field(
        "auto", description="NHWC convolutions; auto: on the CPU (a step 6-17% faster there, bench/README.md), off on CUDA"
    )
    augment: AugmentConfig = AugmentConfig()
    train_on_val: bool = Field(False, description="train on train+val (final retrain); the validation images are "
                               "still scored every val_every epochs, as trainval/* (they are training images then)")
    max_steps_per_epoch: int | None = Field(None, ge=1)
    inject_nan_at_epoch: int | None = Field(None, ge=1, description="testing only: make the loss NaN at this epoch")


class EvalConfig(_Strict):
    val_samples: int = Field(16, ge=2)
    weight_samples: int = Field(5, ge=1)
    latent_samples: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    figure_images: int = Field(4, ge=1)


class Config(_Strict):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()

    @model_validator(mode="after")
    def _method_fixed_settings(self) -> "Config":
        fixed = METHOD_FIXED.get(self.model.method, {})
        flat = self.flat()
        wrong = [f"{key}={json.dumps(value)}" for key, value in fixed.items() if flat[key] != value]
        if wrong:
            raise ValueError(f"model.method={self.model.method} fixes these settings: set {', '.join(wrong)}")
        return self

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, e.g. {"loss.beta": 1.0, "model.num_filters": [32, 64]}."""
        return flatten(self.model_dump(mode="json"))

    def with_method(self, method: str) -> "Config":
        """The same config for another method, with that method's fixed settings (`METHOD_FIXED`, e.g. Kohl:
        no weight noise, gamma 0) and the settings switching to it turns on (`METHOD_SWITCH_ON`)."""
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
        raw = self.model_dump(mode="json")
        raw["model"]["method"] = method
        for key, value in {**METHOD_SWITCH_ON.get(method, {}), **METHOD_FIXED.get(method, {})}.items():
            _set_dotted(raw, key, value)
        return validate_config(raw)

    def updated(self, overrides: dict[str, Any]) -> "Config":
        """A new config with dotted-key overrides applied (values already typed)."""
        raw = self.model_dump(mode="json")
        for key, value in overrides.items():
            _set_dotted(raw, key, value)
        return validate_config(raw)


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for i, part in enumerate(parts[:-1]):
        if part not in node:
            raise ConfigError(f"unknown config key {key!r} (no section {'.'.join(parts[: i + 1])!r})")
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"unknown config key {key!r} ({'.'.join(parts[: i + 1])!r} is not a section)")
    if parts[-1] not in node:
        raise ConfigError(f"unknown config key {key!r}")
    node[parts[-1]] = value


def is_config_key(key: str) -> bool:
    """True when the dotted key names a leaf of the config schema."""
    return key in Config().flat()


def _describe(err: ValidationError) -> str:
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "config"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{where}: {msg}{more}"


def validate_config(raw: dict[str, Any], source: str = "config") -> Config:
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(f"{source}: {_describe(err)}") from None


def parse_override(text: str) -> tuple[str, Any]:
    """`a.b=c` -> ("a.b", c) with c parsed as YAML (numbers, booleans, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. loss.gamma=10")
    key, _, value = text.partition("=")
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has no key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a YAML config must be UTF-8 text)") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read ({err.strerror})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a YAML config (or the defaults when `path` is None) and apply `key=value` overrides."""
    raw = read_yaml(path) if path is not None else {}
    source = str(path) if path is not None else "config"
    base = validate_config(raw, source).model_dump(mode="json")
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(base, key, value)
    return validate_config(base, source if not overrides else f"{source} with overrides")


def dump_config(cfg: Config, path: str | Path | None = None) -> str:
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    if path is not None:
        Path(path).write_text(text)
    return text

