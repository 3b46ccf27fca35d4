"""`fit`: train one model from a config in plain PyTorch (no Ray, no MLflow).

The whole training split is moved to the device once and batches are drawn there by index, so the hot loop
does no per-item Python work. Each epoch the mean loss terms are passed to a reporter, a plain callable
`reporter(metrics: dict, epoch: int, checkpoint_path: str | None)`; every `train.val_every` epochs (and at the
last epoch) the validation metrics are added and, with a `checkpoint_dir`, a checkpoint is written first so
the reporter can hand it on (Ray Tune) or ignore it (MLflow).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .augment import Augmenter
from .checkpoint import CHECKPOINT_NAME, checkpoint_config, load_checkpoint, save_checkpoint
from .config import Config
from .data.prepare import load_dataset
from .data.splits import Split, dataset_split
from .data.types import MultiGraderSet
from .errors import SupuqError, TrainingDiverged
from .evaluate import evaluate_indices
from .models.registry import build_model, sampling_grid

Reporter = Callable[[dict[str, float], int, "str | None"], None]
LOSS_KEYS = ("total", "recon", "kl_z", "kl_w", "supervised", "l2")


@dataclass
class FitResult:
    """What `fit` returns: the trained model (eval mode), its config, split, per-epoch history."""

    model: torch.nn.Module
    cfg: Config
    data: MultiGraderSet
    split: Split
    history: list[dict[str, float]] = field(default_factory=list)
    checkpoint_path: Path | None = None
    epochs_run: int = 0

    @property
    def final_metrics(self) -> dict[str, float]:
        """The last epoch's metrics merged with the latest validation metrics."""
        merged: dict[str, float] = {}
        for row in self.history:
            merged.update(row)
        return merged


def resolve_device(name: str) -> torch.device:
    """`auto` -> CUDA when present, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SupuqError(f"train.device: {name!r} is not a device name (auto, cpu, cuda, cuda:0, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SupuqError(f"train.device={name} but CUDA is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def validation_prefix(cfg: Config) -> str:
    """The metric prefix of the per-epoch validation: `val/`, or `trainval/` for a run that trains on train+val
    (`train.train_on_val`, the final retrain), whose "validation" images are training images: its curves are a
    fit to data the model saw, and are named so."""
    return "trainval/" if cfg.train.train_on_val else "val/"


def training_indices(split: Split, cfg: Config) -> np.ndarray:
    """Train split, plus validation for a final retrain (`train.train_on_val`)."""
    if cfg.train.train_on_val:
        return np.concatenate([split.train, split.val])
    return split.train


def fit(
    cfg: Config,
    data: MultiGraderSet | None = None,
    reporter: Reporter | None = None,
    checkpoint_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    progress: bool = False,
) -> FitResult:
    """Train `cfg.model` on `data` (default: the dataset named by `cfg.data`) for `cfg.train.epochs`.

    resume_from: a checkpoint file or folder written by an earlier `fit` of the same config; training
    continues from its epoch with its optimizer and RNG states, so 2 + 2 resumed epochs equal 4 straight.
    progress: show a rich progress bar (the CLI sets it); a reporter with `quiet = True` silences it.
    Raises TrainingDiverged when a loss becomes NaN or infinite.
    """
    seed_everything(cfg.train.seed)
    data = data if data is not None else load_dataset(cfg.data)
    split = dataset_split(data, cfg.data)
    device = resolve_device(cfg.train.device)

    train_idx = np.sort(training_indices(split, cfg))  # ascending rows: sequential reads from the mmap cache
    images = torch.as_tensor(np.asarray(data.images[train_idx]), dtype=torch.float32, device=device)
    masks = torch.as_tensor(np.asarray(data.masks[train_idx]), dtype=torch.float32, device=device)
    n_train = images.shape[0]

    model = build_model(cfg.model, cfg.loss).to(device)
    channels_last = cfg.train.channels_last
    if channels_last == "auto":
        channels_last = device.type == "cpu"
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr)
    augment = Augmenter(cfg.train.augment)
    shuffle = torch.Generator().manual_seed(cfg.train.seed)

    history: list[dict[str, float]] = []
    start_epoch = 0
    if resume_from is not None:
        state = load_checkpoint(resume_from)
        if checkpoint_config(state).model_dump() != cfg.model_dump():
            raise SupuqError(f"{resume_from}: checkpoint was written by a different config; cannot resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch = int(state["epoch"])
        history = list(state.get("history", []))
        _restore_rng(state["rng"], shuffle)

    autocast = (
        torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        if cfg.train.amp and device.type == "cuda"
        else contextlib.nullcontext()
    )
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    steps = math.ceil(n_train / cfg.train.batch_size)
    if cfg.train.max_steps_per_epoch:
        steps = min(steps, cfg.train.max_steps_per_epoch)
    val_idx = split.val if len(split.val) else split.train[: cfg.eval.batch_size]
    val_prefix = validation_prefix(cfg)
    show = progress and not getattr(reporter, "quiet", False)

    with _progress(show, cfg.train.epochs, start_epoch, val_prefix) as advance:
        for epoch in range(start_epoch + 1, cfg.train.epochs + 1):
            model.train()
            order = torch.randperm(n_train, generator=shuffle).to(device)
            sums = dict.fromkeys(LOSS_KEYS, 0.0)
            for step in range(steps):
                idx = order[step * cfg.train.batch_size : (step + 1) * cfg.train.batch_size]
                x, y = augment(images[idx], masks[idx])
                x = x.contiguous(memory_format=memory_format)
                with autocast:
                    terms = model.loss(x, y, n_train)
                total = terms.total
                if cfg.train.inject_nan_at_epoch == epoch:
                    total = total * float("nan")  # testing hook: exercise the divergence path
                if not torch.isfinite(total):
                    raise TrainingDiverged(epoch, step, {k: float(v) for k, v in terms.as_dict().items()},
                                           loss=float(total.detach()))
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                for key, value in terms.as_dict().items():
                    sums[key] += value
            metrics = {f"train/{k}": v / steps for k, v in sums.items()}

            validate = epoch % cfg.train.val_every == 0 or epoch == cfg.train.epochs
            if validate:
                m, k = sampling_grid(cfg.model, cfg.eval.val_samples, cfg.eval.weight_samples)
                val = evaluate_indices(model, data, val_idx, m, k, cfg.eval.batch_size, device)
                metrics.update(val.measured(val_prefix))  # the image count and sample grid are in the config
            history.append({"epoch": float(epoch), **metrics})

            saved = None
            if ckpt_path is not None and validate:
                saved = str(save_checkpoint(ckpt_path, _state(model, optimizer, epoch, cfg, history, shuffle, data)))
            if reporter is not None:
                reporter(metrics, epoch, saved)
            advance(epoch, metrics)

    model.eval()
    return FitResult(model, cfg, data, split, history, ckpt_path, cfg.train.epochs - start_epoch)


def _state(model, optimizer, epoch, cfg, history, shuffle, data) -> dict[str, Any]:
    """Everything needed to resume exactly; only tensors and plain containers (safe to load)."""
    rng: dict[str, Any] = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": epoch,
        "config": json.dumps(cfg.model_dump(mode="json")),
        "data_meta": json.dumps(_preprocessing_meta(data.meta), default=str),
        "history": history,
        "rng": rng,
    }


def _preprocessing_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The dataset meta minus bulky per-item records: what a predictor needs to preprocess new inputs."""
    return {k: v for k, v in meta.items() if not isinstance(v, (list, dict)) or k == "preprocessing"}


def _restore_rng(rng: dict[str, Any], shuffle: torch.Generator) -> None:
    torch.set_rng_state(rng["torch"])
    shuffle.set_state(rng["shuffle"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


@contextlib.contextmanager
def _progress(enabled: bool, epochs: int, done: int, val_prefix: str = "val/"):
    """Yields advance(epoch, metrics); a rich progress bar when enabled, a no-op otherwise."""
    if not enabled:
        yield lambda epoch, metrics: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = [
        TextColumn("[bold]epoch"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn(f"loss {{task.fields[loss]}}  {val_prefix}ged {{task.fields[ged]}}"),
    ]
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("train", total=epochs, completed=done, loss="-", ged="-")
        last_ged = "-"

        def advance(epoch: int, metrics: dict[str, float]) -> None:
            nonlocal last_ged
            if f"{val_prefix}ged" in metrics:
                last_ged = f"{metrics[val_prefix + 'ged']:.3f}"
            bar.update(task, completed=epoch, loss=f"{metrics['train/total']:.1f}", ged=last_ged)

        yield advance
