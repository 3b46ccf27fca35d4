"""User-facing errors.

Everything raised as a `SupuqError` is a problem with the user's input (a config, a path, a file) that the
CLI prints as one line and turns into exit status 2. Anything else is a bug and keeps its traceback.
"""


class SupuqError(Exception):
    """A problem with the user's input, described in one line."""


class ConfigError(SupuqError):
    """A config or search-space file is missing, malformed or invalid."""


class DataError(SupuqError):
    """A dataset file or folder is missing, unreadable or inconsistent."""


class TrainingDiverged(SupuqError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, terms: dict | None = None, loss: float | None = None):
        self.epoch, self.step, self.terms, self.loss = epoch, step, dict(terms or {}), loss
        shown = ", ".join(f"{k}={v:.4g}" for k, v in self.terms.items())
        super().__init__(f"training diverged at epoch {epoch}, step {step}: non-finite loss ({shown})")

    @property
    def reason(self) -> str:
        """The short form a sweep tags the trial with: "training diverged at epoch 3: loss is NaN"."""
        value = self.loss if self.loss is not None else next(
            (v for v in self.terms.values() if v != v or v in (float("inf"), float("-inf"))), float("nan"))
        return f"training diverged at epoch {self.epoch}: loss is {'NaN' if value != value else 'infinite'}"
