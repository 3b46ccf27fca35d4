"""Shared fixtures: tiny configs that train in seconds on 2 CPU cores, and the shared-data location."""

from __future__ import annotations

from pathlib import Path

import pytest

from supuq.config import Config, load_config

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
TOOLBOX_SAMPLE = SHARED / "data" / "lidc_toolbox_sample"

TINY_OVERRIDES = [
    "data.synthetic.n=48",
    "data.synthetic.size=16",
    "model.num_filters=[4,8]",
    "model.convs_per_block=1",
    "model.latent_dim=2",
    "model.fcomb_convs=2",
    "train.epochs=2",
    "train.batch_size=8",
    "train.val_every=1",
    "eval.val_samples=4",
    "eval.weight_samples=2",
    "eval.latent_samples=2",
    "eval.figure_images=2",
]


@pytest.fixture
def tiny_cfg(tmp_path, monkeypatch) -> Config:
    """A synthetic config small enough for a 2-epoch fit in a few seconds; caches land in tmp_path."""
    monkeypatch.chdir(tmp_path)
    return load_config(ROOT / "configs" / "synthetic.yaml", TINY_OVERRIDES)


@pytest.fixture
def toolbox_sample() -> Path:
    if not TOOLBOX_SAMPLE.is_dir():
        pytest.skip(f"real LIDC toolbox sample not found at {TOOLBOX_SAMPLE} (../shared is absent)")
    return TOOLBOX_SAMPLE


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (starting Ray costs ~5-10 s); shut down at the end."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()
