"""One complete training run as a user starts it: fit, evaluate on the test split with 50 samples, draw the
figures, and record everything in MLflow (or only on disk with `track=False`).

`supuq train` calls `train_and_evaluate` once; `supuq best --retrain` calls it once per seed with a parent
run. MLflow is reached only through `supuq.tracking`, imported when tracking is on.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config, dump_config
from ..data.prepare import load_dataset
from ..evaluate import EvalResult, evaluate, fixed_figure_indices
from ..figures import curves_figure, uncertainty_figure
from ..outputs import check_output_folder
from ..train import FitResult, fit


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


def evaluate_and_draw(fitted: FitResult, out_dir: Path) -> tuple[EvalResult, list[Path]]:
    """Test metrics with the configured M x K grid, eval.json, and the two figures in `out_dir`."""
    cfg, model, data = fitted.cfg, fitted.model, fitted.data
    test = evaluate(
        model, data, "test", cfg.eval.weight_samples, cfg.eval.latent_samples, cfg.eval.batch_size,
        data_cfg=cfg.data,
    )
    (out_dir / "eval.json").write_text(json.dumps({**test.as_dict(""), "reliability": test.reliability}, indent=2))
    chosen = fixed_figure_indices(data, fitted.split.test, cfg.eval.figure_images)
    title = f"{cfg.data.dataset} / {cfg.model.method} / seed {cfg.train.seed}"
    figures = [
        uncertainty_figure(
            model, data, chosen, out_dir / "uncertainty.png", cfg.eval.weight_samples, cfg.eval.latent_samples,
            title=title,
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
) -> TrainOutcome:
    """Train `cfg`, evaluate on test, write figures; with `track`, log it all as one MLflow run."""
    started = time.perf_counter()
    out = check_output_folder(Path(out_dir) if out_dir is not None else default_out_dir(cfg))
    dump_config(cfg, out / "config.yaml")
    data = load_dataset(cfg.data)
    if not track:
        fitted = fit(cfg, data, checkpoint_dir=out, progress=progress)
        test, figures = evaluate_and_draw(fitted, out)
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
        fitted = fit(cfg, data, reporter=tracking.MlflowReporter(run), checkpoint_dir=out, progress=progress)
        test, figures = evaluate_and_draw(fitted, out)
        run.log_metrics(test.as_dict("test/"), step=cfg.train.epochs)
        for path in [out / "eval.json", *figures]:
            run.log_artifact(path, "figures" if path.suffix == ".png" else None)
        if fitted.checkpoint_path is not None:
            run.log_artifact(fitted.checkpoint_path, "checkpoint")
        run_id = run.run_id
    return TrainOutcome(run_id, test, fitted, out, figures, time.perf_counter() - started)


def reevaluate(
    model_ref: str, samples: int, weight_samples: int, split: str = "test", tracking_uri: str | None = None
) -> tuple[EvalResult, str | None]:
    """Evaluate a checkpoint file, or an MLflow run's checkpoint artifact (metrics logged back to that run).

    Returns the result and the run id (None for a plain checkpoint file).
    """
    from .. import tracking
    from ..checkpoint import model_from_checkpoint
    from ..tracking.checkpoints import local_checkpoint

    with local_checkpoint(model_ref, tracking_uri) as local:
        model, cfg = model_from_checkpoint(local.path)
    result = _evaluate_loaded(model, cfg, samples, weight_samples, split)
    if local.run_id is None:
        return result, None
    uri = tracking.resolve_tracking_uri(tracking_uri)
    experiment = tracking.experiment_name(cfg.data.dataset)
    with tracking.tracked_run(uri, experiment, run_id=local.run_id) as tracked:
        prefix = f"{split}/" if samples == 50 else f"{split}{samples}/"
        tracked.log_metrics(result.as_dict(prefix), step=cfg.train.epochs)
    return result, local.run_id


def _evaluate_loaded(model, cfg: Config, samples: int, weight_samples: int, split: str) -> EvalResult:
    from ..train import resolve_device

    device = resolve_device(cfg.train.device)
    data = load_dataset(cfg.data)
    return evaluate(
        model.to(device), data, split, weight_samples, samples // weight_samples, cfg.eval.batch_size,
        device=device, data_cfg=cfg.data,
    )
