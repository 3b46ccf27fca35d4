"""supuq.workflows.retrain: the configs a retrain trains (each method's sample grid, train+val)."""

from __future__ import annotations

from supuq.config import Config


def test_retrain_configs_record_each_methods_grid():
    from supuq.workflows.retrain import retrain_configs

    configs = retrain_configs(Config(), seeds=2, baselines=True, samples=50)
    grids = {(c.model.method, c.train.seed): (c.eval.weight_samples, c.eval.latent_samples) for c in configs}
    with_weights = {"supervised", "kendall_gal"}  # weight noise, MC dropout; the others have no weight samples
    expected = {(m, seed): (5, 10) if m in with_weights else (1, 50) for m in
                ("supervised", "kohl", "kendall_gal", "ssn", "soft_label", "phiseg") for seed in (0, 1)}
    assert grids == expected
    assert all(c.train.train_on_val for c in configs)
    (only,) = retrain_configs(Config(), seeds=1, baselines=False, samples=48)
    assert (only.eval.weight_samples, only.eval.latent_samples) == (4, 12)  # the largest divisor of 48 up to 5
