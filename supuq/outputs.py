"""Where a command writes (`--out` of train, predict, report): checked before any work is done, so that a path
that is a file, lies below a file or cannot be written is one line at once, not a traceback after training.

The test writes: permission bits alone cannot tell (root passes `os.access` on a read-only mount or /sys).
Nothing of the user's is touched: a probe is a new hidden file, removed at once.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .errors import SupuqError


def check_output_folder(folder: str | Path, option: str = "--out") -> Path:
    """`folder`, created (with its parents) if missing, after checking that files can be written in it."""
    folder = Path(folder)
    _no_file_on_the_way(folder, option, folder_wanted=True)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SupuqError(f"{option} {folder}: cannot create the folder ({err.strerror or err})") from None
    _probe(folder, option, folder)
    return folder


def check_output_file(path: str | Path, option: str = "--out") -> Path:
    """`path` as a file to write: not a folder, below no file, and its folder (created if missing) writable."""
    path = Path(path)
    if path.is_dir():
        raise SupuqError(f"{option} {path}: a folder, not a file name to write (give e.g. {path / 'report.html'})")
    _no_file_on_the_way(path.parent, option, folder_wanted=False, target=path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise SupuqError(f"{option} {path}: cannot create its folder {path.parent} ({err.strerror or err})") from None
    _probe(path.parent, option, path)
    return path


def _no_file_on_the_way(folder: Path, option: str, folder_wanted: bool, target: Path | None = None) -> None:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            if not candidate.is_dir():
                shown = target or folder
                what = ("an existing file, not a folder" if candidate == folder and folder_wanted
                        else f"below the file {candidate}")
                raise SupuqError(f"{option} {shown}: {what}; choose another output path")
            return


def _probe(folder: Path, option: str, shown: Path) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".supuq-write-test-"):
            pass
    except OSError as err:
        raise SupuqError(f"{option} {shown}: cannot write in {folder} ({err.strerror or err})") from None
