"""The `supuq` command line: `main` (train, evaluate, ui, sweep, best, results, report, predict), `data`
(`supuq data ...`), `common` (apps, consoles, the one-line error wrapper), `tables` (what the commands print).
Parses and validates, then calls one function of the library; no logic of its own."""

from . import data as _data_commands  # noqa: F401  registers `supuq data ...` on the app
from . import main as _main_commands  # noqa: F401  registers the top-level commands
from .common import app

__all__ = ["app"]
