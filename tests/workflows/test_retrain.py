"""supuq.workflows.retrain: the configs a retrain trains (each method's sample grid, train+val)."""

from __future__ import annotations

from supuq.config import Config


def test_retrain_configs_record_each_methods_grid():
    from supuq.workflows.retrain import retrain_configs

    configs = retrain_configs(Config(), seeds=2, baselines=True, samples=50)
    grids = {(c.model.method, c.train.seed): (c.eval.weight_samples, c.eval.latent_samples) for c in configs}
    assert grids == {("supervised", 0): (5, 10), ("supervised", 1): (5, 10), ("kohl", 0): (1, 50),
                     ("kohl", 1): (1, 50), ("kendall_gal", 0): (5, 10), ("kendall_gal", 1): (5, 10)}
    assert all(c.train.train_on_val for c in configs)
    (only,) = retrain_configs(Config(), seeds=1, baselines=False, samples=48)
    assert (only.eval.weight_samples, only.eval.latent_samples) == (4, 12)  # the largest divisor of 48 up to 5
