"""Whether third-party libraries may talk on the terminal: MLflow's INFO lines, Ray's token warning, Optuna's
study messages, Tune's configuration box and MLflow's artifact-download bars are noise to a user of supuq, so
they are silenced unless `supuq --verbose` or SUPUQ_VERBOSE=1 asks for them. Set through the environment so
that Ray workers inherit the choice."""

from __future__ import annotations

import logging
import os

VERBOSE_ENV = "SUPUQ_VERBOSE"

# What each library reads from the environment; set (unless the user set them) when quiet.
_QUIET_ENV = {
    "MLFLOW_LOGGING_LEVEL": "WARNING",  # "Creating initial MLflow database tables...", "Updating database tables"
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # download bars in supuq results / predict / report
    "RAY_AIR_NEW_OUTPUT": "0",  # Tune's configuration box and TensorBoard hint (the sweep has its own bar)
}


def verbose() -> bool:
    """True when the user asked for third-party output (SUPUQ_VERBOSE set to anything but 0/false/empty)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def configure(verbose_flag: bool = False) -> bool:
    """Apply the choice for this process and its children; returns whether output is verbose."""
    if verbose_flag:
        os.environ[VERBOSE_ENV] = "1"
    if verbose():
        return True
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    logging.getLogger("mlflow").setLevel(logging.WARNING)  # in case MLflow was imported already
    return False


def ray_logging_level() -> str:
    """`ray.init(logging_level=...)`: WARNING when verbose, else ERROR (hides the token-authentication notice)."""
    return "WARNING" if verbose() else "ERROR"
