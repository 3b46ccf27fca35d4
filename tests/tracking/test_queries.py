"""supuq.tracking.queries against a real sqlite MLflow store: children of a run, searches within and across
experiments."""

from __future__ import annotations

import pytest

from supuq import tracking
from supuq.errors import SupuqError

from .conftest import EXPERIMENT


def test_parent_and_children(store):
    with tracking.tracked_run(store, EXPERIMENT, run_name="sweep", tags={"supuq.kind": "sweep"}) as parent:
        ids = []
        for i in range(3):
            with tracking.tracked_run(store, EXPERIMENT, run_name=f"trial{i}", parent_run_id=parent.run_id) as child:
                child.log_metrics({"val/ged": 0.1 * i}, step=1)
                ids.append(child.run_id)
        # an unrelated top-level run is not a child
        with tracking.tracked_run(store, EXPERIMENT, run_name="other"):
            pass
    children = tracking.child_runs(store, parent.run_id)
    assert [r.info.run_id for r in children] == ids
    best = tracking.find_runs(
        store, EXPERIMENT, f"tags.mlflow.parentRunId = '{parent.run_id}'", order_by=["metrics.`val/ged` ASC"]
    )
    assert best[0].info.run_id == ids[0]
    sweeps = tracking.find_runs(store, EXPERIMENT, "tags.`supuq.kind` = 'sweep'")
    assert [r.info.run_id for r in sweeps] == [parent.run_id]
    assert tracking.find_runs(store, "supuq/no-such-dataset") == []
    trial1 = tracking.child_runs(store, parent.run_id, "attributes.run_name = 'trial1'")
    assert [r.info.run_id for r in trial1] == [ids[1]]
    # across experiments (None = all), newest first by default
    tracking.init_store(store, "supuq/other")
    with tracking.tracked_run(store, "supuq/other", run_name="elsewhere") as elsewhere:
        pass
    everywhere = tracking.search_runs(store, None)
    assert len(everywhere) == 6 and everywhere[0].info.run_id == elsewhere.run_id
    assert len(tracking.search_runs(store, [EXPERIMENT, "supuq/missing"])) == 5
    with pytest.raises(SupuqError, match="bad MLflow run filter"):
        tracking.find_runs(store, EXPERIMENT, "this is not a filter")
