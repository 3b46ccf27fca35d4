"""Fixtures of the supuq.report tests: one tiny real sweep and a retrain of its best trial, shared by the package."""

from __future__ import annotations

import pytest

from supuq.sweep.driver import run_sweep
from supuq.sweep.selection import best_trial
from supuq.workflows.retrain import retrain

from ..sweep.test_driver import sweep_options, write_space


@pytest.fixture(scope="package")
def store(tmp_path_factory, ray_session):
    """One tiny ASHA sweep (2 trials, 2 epochs) and a retrain of its best trial (2 seeds, 3 methods, 4 samples);
    package scope: the report tests of every module share one."""
    tmp = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp)
        opts = sweep_options(tmp, "rs", write_space(tmp))
        sweep = run_sweep(opts)
        uri = opts.tracking_uri
        found = best_trial(uri, "synthetic", "rs")
        outcome = retrain(found, found.config, uri, seeds=2, baselines=True, samples=4, parallel=False,
                          out_root=tmp / "retrain")
    return {"tmp": tmp, "uri": uri, "sweep": sweep, "retrain": outcome}
