"""A trained model named the ways users name it -- a checkpoint path, an MLflow run id or a ``runs:/<id>/<path>``
URI -- turned into a local checkpoint file. The core (`supuq.predict`, `supuq.checkpoint`) only reads local files;
the CLI and the workflows come through here first.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from ..errors import SupuqError
from .queries import download_artifact, get_run
from .store import open_store

DEFAULT_ARTIFACT = "checkpoint/checkpoint.pt"
"""Where `supuq train` logs a run's checkpoint."""

_RUN_ID = re.compile(r"^[0-9a-fA-F]{32}$")


@dataclass
class LocalCheckpoint:
    """A checkpoint on disk and where it came from (recorded in prediction.json); `run_id` for an MLflow run."""

    path: Path
    source: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None


@contextmanager
def local_checkpoint(ref: str | Path, tracking_uri: str | None = None) -> Iterator[LocalCheckpoint]:
    """The model `ref` as a local file for the duration of the block (a run's artifact is downloaded into a
    temporary folder, removed afterwards). An existing path is used as it is."""
    text = str(ref)
    path = Path(text)
    if path.exists():
        yield LocalCheckpoint(path, {"kind": "checkpoint", "path": str(path.resolve())})
        return
    if text.startswith("runs:/"):
        run_id, _, artifact = text[len("runs:/"):].strip("/").partition("/")
        if not run_id:
            raise SupuqError(f"{text}: expected runs:/<run id>/<artifact path>")
        artifact = artifact or DEFAULT_ARTIFACT
    elif _RUN_ID.match(text):
        run_id, artifact = text, DEFAULT_ARTIFACT
    else:
        raise SupuqError(f"{text}: no such checkpoint file, and not an MLflow run id (32 hex digits) or "
                         "runs:/<id>/<path>")
    uri = open_store(tracking_uri)
    run_id = get_run(uri, run_id).info.run_id
    with TemporaryDirectory(prefix="supuq-model-") as tmp:
        local = download_artifact(uri, run_id, artifact, tmp)
        source = {"kind": "mlflow", "ref": text, "run_id": run_id, "artifact": artifact, "tracking_uri": uri}
        yield LocalCheckpoint(local, source, run_id)
