"""supuq.sweep.cluster on a real local Ray: waiting for resources the cluster lacks gives up with a clear error."""

from __future__ import annotations

import time

import pytest

from supuq.errors import SupuqError
from supuq.sweep.space import load_space

from ..conftest import ROOT


def test_wait_for_resources_gives_up_with_a_clear_error(ray_session):
    """--wait-for-resources on a cluster that never gets a GPU: the request goes to Ray's autoscaler (none here),
    the wait lasts the given time, and the error says what was missing and for how long it waited."""
    from supuq.sweep.cluster import check_resources

    cpu_only = load_space(ROOT / "sweep/synthetic.yaml")
    space = cpu_only.model_copy(update={"resources": cpu_only.resources.model_copy(update={"gpu": 1.0})})
    said = []
    started = time.monotonic()
    with pytest.raises(SupuqError, match=r"asks for 1 GPU but the Ray cluster has 0 after waiting 1\.5 s"):
        check_resources(space, wait_s=1.5, poll_s=0.2, say=said.append)
    assert time.monotonic() - started >= 1.5
    assert said and "waiting up to 1.5 s" in said[0]
    with pytest.raises(SupuqError, match="--wait-for-resources"):  # no wait: fails at once and names the option
        check_resources(space)
    assert check_resources(cpu_only, wait_s=5) is False  # nothing missing: no request left standing
