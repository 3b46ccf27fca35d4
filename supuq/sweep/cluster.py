"""Joining Ray (a local instance or a cluster, with one-line errors for a missing token) and making sure the
cluster can run a trial before Tune queues it: fail fast, or ask Ray's autoscaler and wait
(`supuq sweep --wait-for-resources`). Used by the sweep driver and the retrain.
"""

from __future__ import annotations

import os
import time
from typing import Any

from ..errors import SupuqError
from ..verbosity import ray_logging_level
from .space import SweepSpace


def connect_ray(address: str | None, cpus: float | None = None) -> bool:
    """Start a local Ray instance, or join `address` (auto | HOST:PORT | ray://HOST:10001).

    Returns True when this call started or joined Ray (so the caller shuts it down), False when Ray was
    already initialised in this process (a test session's shared instance, a notebook)."""
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": ray_logging_level(), "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(num_cpus=cpus, **kwargs)
    except Exception as err:  # Ray raises ConnectionError, RuntimeError, and its own auth errors
        text = str(err).splitlines()[0] if str(err) else err.__class__.__name__
        # Ray 2.60 reports a missing or wrong token as "ConnectionError: Failed to connect to Ray cluster",
        # with the AuthenticationError (InvalidAuthToken) only in its cause chain.
        chain, cause = [], err
        while cause is not None and len(chain) < 8:
            chain.append(f"{cause.__class__.__name__}: {cause}")
            cause = cause.__cause__ or cause.__context__
        if any(n in c.lower() for c in chain for n in ("auth", "token")):
            mode = os.environ.get("RAY_AUTH_MODE") or "unset"
            raise SupuqError(
                f"cannot join Ray cluster at {address}: {text} (authentication token missing or wrong; "
                f"RAY_AUTH_MODE is {mode}). The cluster uses token authentication: set RAY_AUTH_MODE=token and "
                "RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the cluster's token"
            ) from None
        where = f"Ray cluster at {address}" if address else "a local Ray instance"
        raise SupuqError(f"cannot start or join {where}: {text}") from None
    return True


def _missing_resources(space: SweepSpace) -> str | None:
    """Why the cluster cannot run one trial now (Ray would leave it PENDING forever), or None when it can."""
    import ray

    have = ray.cluster_resources()
    need = space.resources
    if need.gpu > 0 and have.get("GPU", 0) < need.gpu:
        return f"each trial asks for {need.gpu:g} GPU but the Ray cluster has {have.get('GPU', 0):g}"
    if have.get("CPU", 0) < need.cpu:
        return f"each trial asks for {need.cpu:g} CPU but the Ray cluster has {have.get('CPU', 0):g}"
    return None


def check_resources(space: SweepSpace, wait_s: float = 0.0, poll_s: float = 2.0, say=print) -> bool:
    """Fail fast when a trial asks for more than the cluster has, or with `wait_s` > 0 first ask Ray's autoscaler
    for the trials' resources (a no-op on a cluster without one) and wait up to `wait_s` seconds for the nodes to
    join: an autoscaling cluster may start with no GPU node at all. Returns True when it left a resource request
    standing (the caller clears it with `release_resources` when the sweep ends, so the cluster can scale down)."""
    missing = _missing_resources(space)
    if missing is None:
        return False
    if wait_s <= 0:
        hint = ("; use --gpus-per-trial 0, join a cluster with GPUs, or --wait-for-resources SECONDS on an "
                "autoscaling cluster" if "GPU" in missing else "")
        raise SupuqError(missing + hint)
    from ray.autoscaler.sdk import request_resources

    bundle = {"CPU": space.resources.cpu, **({"GPU": space.resources.gpu} if space.resources.gpu > 0 else {})}
    request_resources(bundles=[bundle] * space.max_concurrent)
    say(f"{missing}; asked the autoscaler for {space.max_concurrent} x {bundle}, waiting up to {wait_s:g} s")
    deadline = time.monotonic() + wait_s
    while missing is not None and time.monotonic() < deadline:
        time.sleep(min(poll_s, max(0.0, deadline - time.monotonic())))
        missing = _missing_resources(space)
    if missing is not None:
        release_resources()
        raise SupuqError(f"{missing} after waiting {wait_s:g} s for the autoscaler")
    return True


def release_resources() -> None:
    """Clear this driver's standing autoscaler request (see `check_resources`)."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[])
