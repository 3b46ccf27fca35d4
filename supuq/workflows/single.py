"""One complete training run as a user starts it: fit, evaluate on the test split with 50 samples, draw the
figures, and record everything in MLflow (or only on disk with `track=False`).

`supuq train` calls `train_and_evaluate` once; `supuq best --retrain` calls it once per seed with a parent
run. MLflow is reached only through `supuq.tracking`, imported when tracking is on.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, dump_config
from ..data.prepare import load_dataset
from ..evaluate import EVAL_SEED, EvalResult, Progress, evaluate, fixed_figure_indices
from ..figures import curves_figure, uncertainty_figure
from ..models.registry import sampling_grid
from ..outputs import check_output_folder
from ..train import FitResult, fit, validation_prefix


@dataclass
class TrainOutcome:
    """A finished run: its MLflow run id (None untracked), test metrics, the fit, and its local folder."""

    run_id: str | None
    test: EvalResult
    fitted: FitResult
    out_dir: Path
    figures: list[Path] = field(default_factory=list)
    seconds: float = 0.0


def default_out_dir(cfg: Config) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / cfg.data.dataset / f"{cfg.model.method}-seed{cfg.train.seed}-{stamp}"


@contextlib.contextmanager
def images_progress(enabled: bool, label: str = "test"):
    """Yields an `evaluate` progress callback: a rich bar over the images with an ETA when enabled, else None."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TextColumn, TimeElapsedColumn
    from rich.progress import TimeRemainingColumn

    with Bar(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
             TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def log_evaluation(run, result: EvalResult, prefix: str, step: int) -> None:
    """An evaluation in MLflow: its measured values as metrics `<prefix>ged` ...; what it ran on (images,
    M x K) as tags `<prefix>n_images` ..., out of the metric charts (tags: a re-evaluation may change them)."""
    run.log_metrics(result.measured(prefix), step=step)
    run.set_tags({f"{prefix}{key}": value for key, value in result.setup().items()})


def run_description(cfg: Config, test: EvalResult) -> str:
    """A training run's one-line MLflow description: what was trained, on what, and its test numbers."""
    on = "train+val" if cfg.train.train_on_val else "train"
    return (f"{cfg.model.method}, seed {cfg.train.seed}, {cfg.train.epochs} epochs on {on}; test GED "
            f"{test.ged:.4f}, NCC {test.ncc:.3f} ({test.weight_samples} x {test.latent_samples} samples, "
            f"{test.n_images} images)")


def evaluate_and_draw(fitted: FitResult, out_dir: Path, progress: bool = False) -> tuple[EvalResult, list[Path]]:
    """Test metrics with the configured M x K grid (a bar over the images with `progress`), eval.json (with
    per-image GED and NCC), the two figures and panels.npz (the arrays of the uncertainty panel,
    `supuq.figures.panel_maps`) in `out_dir`."""
    cfg, model, data = fitted.cfg, fitted.model, fitted.data
    with images_progress(progress) as advance:
        test = evaluate(
            model, data, "test", cfg.eval.weight_samples, cfg.eval.latent_samples, cfg.eval.batch_size,
            data_cfg=cfg.data, progress=advance,
        )
    # per-image metrics (in the order of their dataset index) are what the report's table of test images sorts
    per_image = {"index": test.index.tolist(), **{k: test.per_image[k].tolist() for k in ("ged", "ncc")}}
    (out_dir / "eval.json").write_text(json.dumps({**test.as_dict(""), "reliability": test.reliability,
                                                   "per_image": per_image}, indent=2))
    chosen = fixed_figure_indices(data, fitted.split.test, cfg.eval.figure_images)
    title = f"{cfg.data.dataset} / {cfg.model.method} / seed {cfg.train.seed}"
    figures = [
        uncertainty_figure(
            model, data, chosen, out_dir / "uncertainty.png", cfg.eval.weight_samples, cfg.eval.latent_samples,
            title=title, maps_out=out_dir / "panels.npz",
        ),
        curves_figure(fitted.history, out_dir / "curves.png", title=title),
    ]
    return test, figures


def train_and_evaluate(
    cfg: Config,
    tracking_uri: str | None = None,
    track: bool = True,
    out_dir: str | Path | None = None,
    progress: bool = False,
    parent_run_id: str | None = None,
    run_name: str | None = None,
    extra_tags: dict[str, str] | None = None,
    on_epoch=None,
) -> TrainOutcome:
    """Train `cfg`, evaluate on test, write figures; with `track`, log it all as one MLflow run.

    `on_epoch(epoch)` (tracked runs) is called after each epoch is logged: the serial retrain's progress."""
    started = time.perf_counter()
    out = check_output_folder(Path(out_dir) if out_dir is not None else default_out_dir(cfg))
    dump_config(cfg, out / "config.yaml")
    data = load_dataset(cfg.data)
    if not track:
        fitted = fit(cfg, data, checkpoint_dir=out, progress=progress)
        test, figures = evaluate_and_draw(fitted, out, progress)
        return TrainOutcome(None, test, fitted, out, figures, time.perf_counter() - started)

    from .. import tracking

    uri = tracking.resolve_tracking_uri(tracking_uri)
    experiment = tracking.experiment_name(cfg.data.dataset)
    tracking.init_store(uri, experiment)
    tags = {**tracking.standard_tags(cfg), **(extra_tags or {})}
    name = run_name or f"{cfg.model.method}-seed{cfg.train.seed}"
    with tracking.tracked_run(uri, experiment, run_name=name, parent_run_id=parent_run_id, tags=tags) as run:
        run.log_config(cfg)  # params + config.yaml artifact
        run.set_tags({"supuq.config": json.dumps(cfg.model_dump(mode="json"))})
        reporter = tracking.MlflowReporter(run)
        if on_epoch is not None:
            reporter = _also_calling(reporter, on_epoch)
        fitted = fit(cfg, data, reporter=reporter, checkpoint_dir=out, progress=progress)
        test, figures = evaluate_and_draw(fitted, out, progress)
        log_evaluation(run, test, "test/", cfg.train.epochs)
        val_grid = sampling_grid(cfg.model, cfg.eval.val_samples, cfg.eval.weight_samples)
        val_prefix = validation_prefix(cfg)
        run.set_tags({f"{val_prefix}n_images": len(fitted.split.val), f"{val_prefix}weight_samples": val_grid[0],
                      f"{val_prefix}latent_samples": val_grid[1], "mlflow.note.content": run_description(cfg, test)})
        for path in [out / "eval.json", *figures, out / "panels.npz"]:  # panels.npz: the arrays the panel drew
            run.log_artifact(path, "figures" if path.suffix == ".png" else None)
        if fitted.checkpoint_path is not None:
            run.log_artifact(fitted.checkpoint_path, "checkpoint")
        run_id = run.run_id
    return TrainOutcome(run_id, test, fitted, out, figures, time.perf_counter() - started)


def _also_calling(reporter, on_epoch):
    """A reporter that logs through `reporter` (quiet as it is) and then tells `on_epoch(epoch)`."""
    def report(metrics, epoch, checkpoint_path=None):
        reporter(metrics, epoch, checkpoint_path)
        on_epoch(epoch)

    report.quiet = getattr(reporter, "quiet", False)  # type: ignore[attr-defined]
    return report


@dataclass
class Reevaluation:
    """`supuq evaluate`'s result: the metrics, the run they were logged back to (None for a plain file), and
    the name of the model's row: its run's name and short id, or the folder of a `checkpoint.pt`."""

    result: EvalResult
    run_id: str | None
    name: str


def reevaluate(
    model_ref: str, samples: int, weight_samples: int, split: str = "test", tracking_uri: str | None = None,
    seed: int = EVAL_SEED, progress: Progress | None = None,
) -> Reevaluation:
    """Evaluate a checkpoint file, or an MLflow run's checkpoint artifact (metrics logged back to that run),
    drawing the samples with `seed`: the same numbers on every call, and with the defaults (50 samples,
    `EVAL_SEED`) the numbers `train_and_evaluate` logged for the test split."""
    from .. import tracking
    from ..checkpoint import CHECKPOINT_NAME, model_from_checkpoint
    from ..tracking.checkpoints import local_checkpoint

    with local_checkpoint(model_ref, tracking_uri) as local:
        model, cfg = model_from_checkpoint(local.path)
    result = _evaluate_loaded(model, cfg, samples, weight_samples, split, seed, progress)
    if local.run_id is None:
        path = Path(model_ref)
        name = path.resolve().parent.name if path.name == CHECKPOINT_NAME else path.name
        return Reevaluation(result, None, name)
    uri = tracking.resolve_tracking_uri(tracking_uri)
    experiment = tracking.experiment_name(cfg.data.dataset)
    run_name = tracking.get_run(uri, local.run_id).info.run_name
    with tracking.tracked_run(uri, experiment, run_id=local.run_id) as tracked:
        prefix = f"{split}/" if samples == 50 else f"{split}{samples}/"
        log_evaluation(tracked, result, prefix, cfg.train.epochs)
    return Reevaluation(result, local.run_id, f"{run_name} ({local.run_id[:8]})")


def _evaluate_loaded(model, cfg: Config, samples: int, weight_samples: int, split: str, seed: int,
                     progress: Progress | None) -> EvalResult:
    from ..train import resolve_device

    device = resolve_device(cfg.train.device)
    data = load_dataset(cfg.data)
    return evaluate(
        model.to(device), data, split, weight_samples, samples // weight_samples, cfg.eval.batch_size,
        device=device, data_cfg=cfg.data, seed=seed, progress=progress,
    )
