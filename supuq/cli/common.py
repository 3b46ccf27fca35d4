"""What every `supuq` command shares: the typer apps, the consoles, the one-line error wrapper, config loading
and the progress bar."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import SupuqError

def _flag_takes_no_value(display_type_rich):
    """typer 0.29 shows `<bool>` beside every flag (--help included), as if it took a value: show nothing."""

    @functools.wraps(display_type_rich)
    def display(self, ctx):
        return None if getattr(self, "is_bool_flag", False) else display_type_rich(self, ctx)

    return display


typer.core.TyperOption.display_type_rich = _flag_takes_no_value(typer.core.TyperOption.display_type_rich)

app = typer.Typer(
    name="supuq",
    help="Supervised uncertainty quantification for segmentation with multiple graders (Hu et al., MICCAI 2019).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Prepare, inspect and view dataset caches.", no_args_is_help=True)
app.add_typer(data_app, name="data")
# Piped output (CI logs, `| tee`) gets a fixed width wide enough for the tables; terminals keep their own.
console = Console() if sys.stdout.isatty() else Console(width=130)
err_console = Console(stderr=True)


def user_errors(func):
    """Turn SupuqError into a one-line message + exit 2, and Ctrl-C into exit 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SupuqError as err:
            # escaped: a message's own brackets ("[lo, hi]") are text, not rich markup to swallow
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper


def load(config: Optional[Path], overrides: list[str], dataset: Optional[str] = None):
    """The config of a command: `config` (default: the dataset's config file, synthetic's without a dataset)
    with overrides; with a dataset, a config of its family is taken for it (`registry.load_dataset_config`)."""
    from ..config import load_config
    from ..data.registry import dataset as registry_entry, load_dataset_config

    if dataset is not None:
        return load_dataset_config(dataset, config, overrides)
    return load_config(config if config is not None else registry_entry("synthetic").config_path(), overrides)


def progress_bar(label: str, eta: bool = False):
    """A rich progress bar yielding progress(done, total); with `eta`, the time left too."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.progress import TimeRemainingColumn

    @contextlib.contextmanager
    def manager():
        columns = [TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        if eta:
            columns += [TextColumn("ETA"), TimeRemainingColumn()]
        bar = Progress(*columns, speed_estimate_period=WHOLE_RUN)
        task = None

        def update(done, total):
            # The bar appears with the first step: a command that fails before any work (a bad checkpoint) prints
            # its one error line and no empty bar.
            nonlocal task
            if task is None:
                bar.start()
                task = bar.add_task(label, total=None)
            bar.update(task, completed=done, total=total)

        try:
            yield update
        finally:
            if task is not None:
                bar.stop()

    return manager()


WHOLE_RUN = 7 * 24 * 3600.0
"""rich's speed window for the ETA, in seconds: the whole run's mean rate. rich's default (the last 30 s) has no
step in it when an epoch takes minutes, and then shows no ETA at all."""


def epochs_bar(label: str):
    """`supuq best --retrain`'s bar: epochs done across all (method, seed) jobs, the jobs done, elapsed time and
    an ETA from the mean rate so far; yields progress(epochs done, epochs in all, jobs done, jobs in all)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.progress import TimeRemainingColumn

    @contextlib.contextmanager
    def manager():
        with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                      TextColumn("epochs, runs {task.fields[jobs]}"), TimeElapsedColumn(), TextColumn("ETA"),
                      TimeRemainingColumn(), speed_estimate_period=WHOLE_RUN) as bar:
            task = bar.add_task(label, total=None, jobs="-")

            def show(epochs: int, total: int, jobs: int, all_jobs: int) -> None:
                bar.update(task, completed=epochs, total=total, jobs=f"{jobs}/{all_jobs}")

            yield show

    return manager()


@contextlib.contextmanager
def ended_by_signals():
    """Inside the block SIGTERM and SIGHUP end the command the way Ctrl-C does (KeyboardInterrupt), so its
    `finally` clauses stop the servers it started; the previous handlers come back afterwards."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
