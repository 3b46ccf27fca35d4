"""Where a sweep keeps its files: the Ray storage root (a local folder or s3://bucket/prefix) and small text
files in it (`supuq_sweep.json`, `best.yaml`), read and written through pyarrow so S3 works as local paths do.

For s3:// with $AWS_ENDPOINT_URL (an S3-compatible server) the filesystem is built explicitly with that
endpoint; Ray then needs the same filesystem and the path inside it (`ray_storage`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import SupuqError

_SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+@=-]{0,127}")
"""A sweep name is one path component (Ray's experiment folder under the storage root): no separator, no
leading dot (so neither `..` nor a hidden folder), only characters every filesystem and S3 key takes as is."""


def check_sweep_name(name: str, option: str = "--name") -> str:
    """`name` if it is a single safe path component; else a one-line SupuqError (e.g. `--name ../escaped`,
    which would write the sweep's files outside --storage)."""
    if not _SWEEP_NAME.fullmatch(name):
        raise SupuqError(f"{option} {name!r}: a sweep name is one folder name of letters, digits and . _ + @ = - "
                         "starting with a letter or digit, at most 128 characters")
    return name


def check_storage_root(root: str) -> None:
    """A local storage root must be a folder (or not exist yet) with no file on its path, so that the sweep's
    folder can be made: checked before any run is opened, so a bad --storage leaves nothing behind."""
    if "://" in root:
        return
    path = Path(root)
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                what = "is a file" if folder == path else f"is below the file {folder}"
                raise SupuqError(f"--storage {root}: {what}, not a folder for the sweep's files")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise SupuqError(f"--storage {root}: {folder} is not writable by this user")
            return


def storage_root(storage: str | None) -> str:
    """Default `ray_results/` under the working directory (absolute: Ray requires it)."""
    if storage is None:
        return str((Path.cwd() / "ray_results").resolve())
    if "://" in storage:
        return storage.rstrip("/")
    return str(Path(storage).expanduser().resolve())


def filesystem_and_path(path: str):
    """A pyarrow filesystem and path inside it for a local path or an s3:// URI (endpoint from env)."""
    import pyarrow.fs

    if "://" not in path:
        return pyarrow.fs.LocalFileSystem(), path
    if path.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        fs = pyarrow.fs.S3FileSystem(
            endpoint_override=os.environ["AWS_ENDPOINT_URL"], region=os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
        )
        return fs, path[len("s3://") :]
    return pyarrow.fs.FileSystem.from_uri(path)


def ray_storage(storage: str) -> tuple[Any, str]:
    """(filesystem, path) to hand Ray for `storage`: for s3:// with AWS_ENDPOINT_URL (S3-compatible servers) an
    explicit filesystem and the path inside it (bucket/prefix), otherwise (None, storage) for Ray to resolve."""
    if storage.startswith("s3://") and os.environ.get("AWS_ENDPOINT_URL"):
        return filesystem_and_path(storage)
    return None, storage


def write_text(root: str, relative: str, text: str) -> None:
    fs, base = filesystem_and_path(root)
    path = f"{base}/{relative}"
    fs.create_dir(os.path.dirname(path), recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def read_text(root: str, relative: str) -> str | None:
    import pyarrow

    fs, base = filesystem_and_path(root)
    try:
        with fs.open_input_stream(f"{base}/{relative}") as stream:
            return stream.read().decode()
    except (FileNotFoundError, OSError, pyarrow.ArrowException):
        return None
