"""Training checkpoints: model, optimizer, epoch, RNG states, history and the resolved config.

Saved atomically (write to a temporary file, then `os.replace`) and loaded with
`torch.load(weights_only=True)`: a checkpoint holds only tensors and plain Python containers, so loading one
never runs code from the file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from .config import Config, validate_config
from .errors import SupuqError

CHECKPOINT_NAME = "checkpoint.pt"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write `state` to `path` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint file safely (weights only); a folder means `<folder>/checkpoint.pt`."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise SupuqError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated or foreign files
        raise SupuqError(f"{path}: not a readable supuq checkpoint ({err.__class__.__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise SupuqError(f"{path}: not a supuq checkpoint (no model or config inside)")
    return state


def checkpoint_config(state: dict[str, Any]) -> Config:
    """The resolved training config stored in a checkpoint (a JSON string)."""
    try:
        raw = json.loads(state["config"])
    except (TypeError, ValueError):
        raise SupuqError("checkpoint config is not valid JSON (a damaged or foreign checkpoint)") from None
    if not isinstance(raw, dict):
        raise SupuqError("checkpoint config is not a mapping of config sections (a damaged or foreign checkpoint)")
    return validate_config(raw, "checkpoint config")


def load_weights(model: torch.nn.Module, state: dict[str, Any], where: str) -> torch.nn.Module:
    """Load the checkpoint's weights into `model` built from its config; weights of another shape or another
    network are one line (a checkpoint whose config was edited, or weights from elsewhere)."""
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, KeyError) as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else (first[0] if first else type(err).__name__)
        raise SupuqError(f"{where}: weights do not fit the stored config ({detail[:200]})") from None
    return model


def model_from_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, Config]:
    """Rebuild the trained model (eval mode) and its config from a checkpoint file."""
    from .models import build_model

    state = load_checkpoint(path)
    cfg = checkpoint_config(state)
    model = load_weights(build_model(cfg.model, cfg.loss), state, str(path))
    return model.to(device).eval(), cfg
