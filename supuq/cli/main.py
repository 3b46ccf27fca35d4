"""The `supuq` commands except `supuq data` (typer). Parses and validates, then calls the library; no logic of its own.

User errors (`SupuqError`: configs, paths, file contents) print one line on stderr and exit with status 2;
Ctrl-C exits with 130.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .. import __version__
from ..data.registry import names_help
from ..config import METHODS
from ..errors import SupuqError
from ..evaluate import EVAL_SEED
from .common import app, console, ended_by_signals, epochs_bar, err_console, load, progress_bar, user_errors
from .tables import metrics_table, pareto_table, result_tables, sweep_table

def _version(value: bool) -> None:
    if value:
        typer.echo(f"supuq {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    verbose: bool = typer.Option(False, "--verbose", help="Show third-party output (MLflow, Ray, Optuna, Tune); "
                                 "also SUPUQ_VERBOSE=1."),
) -> None:
    """supuq command line."""
    from .. import verbosity

    verbosity.configure(verbose)


@app.command()
@user_errors
def train(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Training config YAML (default configs/synthetic.yaml)."),
    set_: list[str] = typer.Option([], "--set", help="Override a config key, e.g. --set loss.gamma=10 (repeatable)."),
    method: Optional[str] = typer.Option(None, help=f"{' | '.join(METHODS)} (sets that method's fixed settings)."),
    seed: Optional[int] = typer.Option(None, help="Training seed (train.seed); the data split keeps data.split_seed."),
    no_track: bool = typer.Option(False, "--no-track", help="Do not log to MLflow; outputs stay in the run folder."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow/mlflow.db)."),
    out: Optional[Path] = typer.Option(None, help="Folder for checkpoint, figures and eval.json (default runs/<dataset>/...)."),
) -> None:
    """Train one model, evaluate it on the test split (50 samples) and log the run to MLflow."""
    from ..workflows.single import train_and_evaluate

    cfg = load(config, set_)
    if method is not None:
        cfg = cfg.with_method(method)
    if seed is not None:
        cfg = cfg.updated({"train.seed": seed})
    outcome = train_and_evaluate(cfg, tracking_uri, track=not no_track, out_dir=out, progress=True)
    console.print(metrics_table(f"test split, {cfg.model.method}", {cfg.model.method: outcome.test.as_dict("")}))
    console.print(f"outputs: {outcome.out_dir}  ({outcome.seconds:.0f} s)")
    if outcome.run_id:
        console.print(f"MLflow run id: {outcome.run_id}   browse with: supuq ui")


@app.command()
@user_errors
def evaluate(
    model: str = typer.Argument(..., help="An MLflow run id or a checkpoint file."),
    samples: int = typer.Option(50, help="Samples per image (weight samples x latent samples)."),
    weight_samples: int = typer.Option(5, help="Weight-noise samples M (K = samples / M)."),
    split: str = typer.Option("test", help="train | val | test | all"),
    seed: int = typer.Option(EVAL_SEED, help="Sampling seed: the same seed gives the same numbers; the default is "
                             "the one `supuq train` tests with."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI."),
) -> None:
    """Re-evaluate a trained model; a run id's metrics are logged back to the same run."""
    from ..evaluate import SPLITS
    from ..workflows.single import reevaluate

    if split not in SPLITS:
        raise SupuqError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if samples < 2 or weight_samples < 1 or samples % weight_samples:
        raise SupuqError(f"--samples ({samples}) must be >= 2 and a multiple of --weight-samples ({weight_samples})")
    with progress_bar(f"{split} images", eta=True) as progress:
        done = reevaluate(model, samples, weight_samples, split, tracking_uri, seed=seed, progress=progress)
    console.print(metrics_table(f"{split} split, seed {seed}", {done.name: done.result.as_dict("")}))
    if done.run_id:
        console.print(f"logged back to MLflow run {done.run_id}", highlight=False)


@app.command()
@user_errors
def ui(
    port: int = typer.Option(5000, help="Port (1-65535)."),
    host: str = typer.Option("127.0.0.1", help="Interface; keep 127.0.0.1 unless the UI is behind authentication."),
    tracking_uri: Optional[str] = typer.Option(None, help="Tracking store (default: the local mlflow/ store)."),
    print_links: bool = typer.Option(False, "--print-links", help="Only print each experiment's runs-table URL "
                                     "for a UI on --host/--port, and how to start it; starts no server."),
) -> None:
    """Start the MLflow UI on the local store and print each experiment's runs-table URL (Ctrl-C stops it)."""
    from ..tracking.server import serve_ui, stop_server, ui_links

    base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    if print_links:
        from ..tracking import open_store

        uri = open_store(tracking_uri)
        links = ui_links(uri, base)
        start = " ".join(["supuq ui", *([f"--host {host}"] if host != "127.0.0.1" else []),
                          *([f"--port {port}"] if port != 5000 else []),
                          *([f"--tracking-uri {tracking_uri}"] if tracking_uri else [])])
        console.print(f"browse the runs with `{start}`, then open:" if links else
                      f"no supuq experiment in {uri} yet", soft_wrap=True, highlight=False)
        for name, url in links:
            console.print(f"  {name}: {url}", soft_wrap=True, highlight=False)
        return
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[bold yellow]warning:[/] the MLflow UI has no authentication: on {host} anyone who can "
                          "reach this machine can read, change and delete every run", highlight=False, soft_wrap=True)
    proc = serve_ui(tracking_uri, host=host, port=port)
    with ended_by_signals():
        try:
            console.print(f"MLflow UI on {base}  (store {proc.store_uri}); Ctrl-C to stop", soft_wrap=True,
                          highlight=False)
            for name, url in ui_links(proc.store_uri, base):
                console.print(f"  {name}: {url}", soft_wrap=True, highlight=False)
            proc.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_server(proc)


@app.command()
@user_errors
def sweep(
    dataset: str = typer.Option("synthetic", help=names_help()),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Base config (default: the dataset's, "
                                          "configs/<dataset or its family>.yaml, e.g. lidc.yaml for lidc-toolbox)."),
    space: Optional[Path] = typer.Option(None, help="Search space (default sweep/<dataset or its family>.yaml)."),
    samples: Optional[int] = typer.Option(None, help="Number of trials (space file's num_samples)."),
    concurrent: Optional[int] = typer.Option(None, help="Trials at once (space file's max_concurrent)."),
    set_: list[str] = typer.Option([], "--set", help="Override a base config key (repeatable)."),
    gpus_per_trial: Optional[float] = typer.Option(None, help="GPUs per trial; fractions pack trials on one GPU."),
    cpus_per_trial: Optional[float] = typer.Option(None, help="CPUs per trial."),
    address: Optional[str] = typer.Option(None, help="Join a Ray cluster: auto | HOST:PORT | ray://HOST:10001."),
    storage: Optional[str] = typer.Option(None, help="Trial storage: a shared path or s3://bucket/prefix (default ./ray_results)."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (default $MLFLOW_TRACKING_URI or the local store)."),
    name: Optional[str] = typer.Option(None, help="Sweep name (default <dataset>-<time>)."),
    resume: Optional[str] = typer.Option(None, help="Continue the interrupted sweep of this name."),
    objective: Optional[str] = typer.Option(
        None, help="ged (min val/ged) | ncc (max val/ncc) | both (a Pareto front, ASHA off; see the README). "
        "Default: the space file's metric.",
    ),
    wait_for_resources: float = typer.Option(
        0.0, min=0.0, help="When the cluster cannot run a trial yet (e.g. no GPU node), ask Ray's autoscaler for "
        "the trials' resources and wait up to this many seconds for nodes to join (default 0: fail at once).",
    ),
) -> None:
    """Search beta, gamma, the weight-noise prior and lr with Ray Tune + Optuna (TPE) + ASHA; every trial in MLflow."""
    from ..sweep.space import check_objective
    from ..sweep.driver import SweepInterrupted, SweepOptions, run_sweep

    check_objective(objective)
    opts = SweepOptions(dataset, config, space, samples, concurrent, list(set_), gpus_per_trial, cpus_per_trial,
                        address, storage, tracking_uri, name, resume, objective=objective,
                        wait_for_resources=wait_for_resources)
    try:
        outcome = run_sweep(opts, console=console)
    except SweepInterrupted as stop:
        # One unwrapped line (rich hard-wraps at 80 columns when stderr is not a terminal): a command to paste.
        err_console.print(f"sweep {stop.name} stopped after {stop.finished} of {stop.total} trials; "
                          f"continue it with: supuq sweep --resume {stop.name}"
                          + (f" --storage {storage}" if storage else ""), soft_wrap=True, highlight=False, markup=False)
        raise typer.Exit(130) from None
    console.print(sweep_table(outcome.name, outcome.trials[:10], outcome.metric))  # best first, as best.yaml
    if objective == "both":
        from ..sweep.selection import pareto_rows

        front = pareto_rows(outcome.trials, outcome.max_epochs)
        console.print("Pareto-optimal trials (min val/ged, max val/ncc): "
                      + ", ".join(t["trial_id"] for t in front)
                      + f"; list and retrain one with: supuq best --sweep {outcome.name} --objective both --pick N")
    failed = sum(t["status"] == "ERROR" for t in outcome.trials)
    best = (f"best config: {outcome.path}/best.yaml" if outcome.best is not None else
            f"no trial ended with a finite {outcome.metric}, so no best.yaml (each trial's error is its run's "
            "supuq.stop_reason)")
    console.print(f"{len(outcome.trials)} trials, {outcome.stopped_early} stopped early by ASHA"
                  + (f", {failed} failed" if failed else "") + f", {outcome.seconds:.0f} s; {best}")
    console.print(f"MLflow parent run {outcome.parent_run_id}; browse with: supuq ui")


@app.command()
@user_errors
def best(
    dataset: Optional[str] = typer.Option(None, help="Dataset whose latest sweep to use."),
    sweep: Optional[str] = typer.Option(None, help="Sweep name or parent run id (default: the latest sweep)."),
    retrain: bool = typer.Option(False, "--retrain", help="Retrain the best config from scratch over seeds, on train+val."),
    seeds: int = typer.Option(5, help="Seeds for --retrain."),
    baselines: bool = typer.Option(False, "--baselines", help="Also retrain every other method (Kohl, Kendall-Gal, SSN, PHiSeg, soft-label) under the same protocol."),
    samples: int = typer.Option(50, help="Test samples per image."),
    serial: bool = typer.Option(False, "--serial", help="Retrain seeds one after another instead of as Ray tasks."),
    baseline_sweep: list[str] = typer.Option(
        [], "--baseline-sweep", help="METHOD=SWEEP: retrain a baseline with the best trial of its own sweep (repeatable)."
    ),
    objective: Optional[str] = typer.Option(
        None, help="ged | ncc | both (default: what the sweep searched). both: list the Pareto-optimal trials "
        "(min val/ged, max val/ncc); --pick N chooses one."),
    pick: Optional[int] = typer.Option(None, help="With --objective both: the N-th Pareto-optimal trial (1 = lowest GED)."),
    report: Optional[Path] = typer.Option(None, help="With --retrain: also write the retrain's HTML report here."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI."),
) -> None:
    """Print a sweep's best trial; with --retrain, the paper's Table 2 (GED) and Table 3 (NCC) over seeds."""
    from ..models.registry import BASELINES, method as method_entry
    from ..sweep.selection import best_of_sweep, best_trial, fallback_note, find_sweep, pick_pareto, sweep_objective
    from ..workflows.retrain import retrain as run_retrain
    from ..sweep.space import OBJECTIVES, check_objective
    from ..tracking import open_store

    if seeds < 1 or samples < 2:
        raise SupuqError("--seeds must be >= 1 and --samples >= 2")
    check_objective(objective)
    uri = open_store(tracking_uri)
    parent = find_sweep(uri, dataset, sweep)
    objective = objective or sweep_objective(parent)
    if pick is not None and objective != "both":
        raise SupuqError("--pick chooses among Pareto-optimal trials: use it with --objective both")
    if objective == "both":
        front = _pareto_table(uri, parent)
        if pick is None:
            if retrain:
                raise SupuqError(f"--objective both: choose the trial to retrain with --pick N (1..{len(front)})")
            return
        found = pick_pareto(parent, front, pick)
    else:
        metric, mode = OBJECTIVES.get(objective, OBJECTIVES["ged"])
        found = best_of_sweep(uri, parent, metric, mode)
        if not found.full_length:
            err_console.print(fallback_note(metric, found.max_epochs), highlight=False, soft_wrap=True)
    console.print(f"best trial of sweep {found.sweep_name}: {found.trial_name} ({found.metric} = {found.value:.4f}, run {found.run_id})")
    flat = found.config.flat()
    for key in (*method_entry(found.config.model.method).keys, "optim.lr"):
        console.print(f"  {key} = {flat[key]}")
    if not retrain:
        return
    tuned = {}
    for item in baseline_sweep:
        method, _, name = item.partition("=")
        if method not in BASELINES or not name:
            raise SupuqError(f"--baseline-sweep {item!r}: expected " + " or ".join(f"{b}=SWEEP" for b in BASELINES))
        tuned[method] = best_trial(uri, dataset, name)
        if tuned[method].config.model.method != method:
            raise SupuqError(f"sweep {name!r} tuned method {tuned[method].config.model.method!r}, not {method!r}")
        console.print(f"{method}: best trial {tuned[method].trial_name} of sweep {name} "
                      f"({tuned[method].metric} = {tuned[method].value:.4f})")
        if not tuned[method].full_length:
            err_console.print(fallback_note(tuned[method].metric, tuned[method].max_epochs), highlight=False,
                              soft_wrap=True)
    with epochs_bar("retraining") as progress:
        outcome = run_retrain(found, found.config, uri, seeds, baselines or bool(tuned), samples,
                              parallel=not serial, progress=progress, tuned=tuned)
    console.print(result_tables(outcome.tables))
    console.print(f"retrain run {outcome.parent_run_id} ({outcome.seconds:.0f} s); results.md is its artifact. "
                  "Browse with: supuq ui")
    if report is not None:
        from ..report import write_report

        written = write_report(uri, outcome.parent_run_id, report)
        console.print(f"report: {written.path} (also the run's artifact report.html)")


@app.command()
@user_errors
def results(
    retrain_run: str = typer.Argument(..., help="The retrain run id (from `supuq best --retrain`)."),
    out: Path = typer.Option(Path("docs/results.md"), help="Markdown file to write (PNGs go beside it)."),
    sweep_of: list[str] = typer.Option([], "--sweep-of", help="METHOD=SWEEP: learning curves from that sweep's best trial (repeatable)."),
    command: list[str] = typer.Option([], "--command", help="A command that regenerates the study, listed in the file (repeatable)."),
    wall_time: Optional[str] = typer.Option(None, help="The study's wall time, stated in the file."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI."),
) -> None:
    """Write the comparison study (Table 2/3 style tables, the paper's three claims judged, curves, panels)."""
    from ..workflows.study import write_results
    from ..tracking import open_store

    sweeps = {}
    for item in sweep_of:
        method, _, name = item.partition("=")
        if not method or not name:
            raise SupuqError(f"--sweep-of {item!r}: expected METHOD=SWEEP")
        sweeps[method] = name
    path = write_results(open_store(tracking_uri), retrain_run, out, sweeps, list(command), wall_time)
    console.print(f"wrote {path}")


def _pareto_table(uri: str, parent) -> list[dict]:
    """Print a sweep's Pareto-optimal trials (min val/ged, max val/ncc), numbered for --pick; returns them."""
    from ..sweep.selection import pareto_trials

    front = pareto_trials(uri, parent.info.run_id)
    console.print(pareto_table(parent, front))
    if not front:
        raise SupuqError(f"sweep {parent.info.run_name!r} has no trial with a val/ged value")
    return front


@app.command()
@user_errors
def report(
    target: str = typer.Argument(..., metavar="RUN_ID|SWEEP_NAME", help="A retrain run id, a sweep's parent run id, "
                                 "or a sweep (or retrain) run name."),
    out: Path = typer.Option(Path("report.html"), "--out", help="HTML file to write."),
    log: bool = typer.Option(True, "--log/--no-log", help="Also log the report as the run's artifact report.html."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI."),
) -> None:
    """One self-contained HTML report (tables, figures, reliability; a sweep's Pareto front and ASHA stops)."""
    from ..report import write_report
    from ..tracking import open_store

    written = write_report(open_store(tracking_uri), target, out, log_artifact=log)
    if written.logged:
        err_console.print(f"{written.kind} run {written.run_id}: logged as artifact report.html", highlight=False)
    typer.echo(str(written.path))


@app.command("predict")
@user_errors
def predict_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="A checkpoint file, an MLflow run id or runs:/<id>/<artifact path>."),
    input_path: Path = typer.Argument(..., metavar="INPUT", help="2D image (PNG/TIFF), 3D volume "
                                      "(.nii/.nii.gz/.mha/.mhd/.nrrd) or a DICOM series folder."),
    out: Path = typer.Option(..., "--out", help="Output folder."),
    samples: int = typer.Option(50, help="Binary samples per pixel (weight samples x latent samples)."),
    weight_samples: int = typer.Option(5, help="Weight-noise samples M (1 for a model without weight noise)."),
    slices: str = typer.Option("all", help="all | annotated (slices where an --annotation / sibling annotation is non-empty)."),
    crop: Optional[str] = typer.Option(None, help="N: centre crop N x N | full: tile the whole slice "
                                       "(default: centre crop of the training size, e.g. 128)."),
    overlap: float = typer.Option(0.5, help="With --crop full: overlap of neighbouring tiles, as a fraction of a "
                                  "tile in [0, 1); overlapping tiles are blended with Gaussian weights."),
    fmt: str = typer.Option("nifti", "--format", help="nifti (.nii.gz) | same (the input's extension)."),
    save_samples: bool = typer.Option(False, "--save-samples", help="Also write the binary samples as one image a dimension up."),
    annotation: list[Path] = typer.Option([], "--annotation", help="Mask file for --slices annotated (repeatable)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
    seed: int = typer.Option(0, help="Sampling seed."),
    tracking_uri: Optional[str] = typer.Option(None, help="MLflow tracking URI (for a run id)."),
) -> None:
    """Uncertainty maps (pm, aleatoric, epistemic, total, consensus) of a new image or volume, in its geometry."""
    from ..predict import predict
    from ..tracking.checkpoints import local_checkpoint

    with local_checkpoint(model, tracking_uri) as local:
        outcome = predict(local.path, input_path, out, samples=samples, weight_samples=weight_samples,
                          slices=slices, crop=crop, fmt=fmt, save_samples=save_samples, annotations=annotation,
                          device=device, seed=seed, progress=True, overlap=overlap, source=local.source)
    d = outcome.details
    for warning in d.get("warnings", []):
        err_console.print(f"[bold yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    console.print(f"{d['slices']['count']} slice(s), {d['sampling']['weight_samples']} x "
                  f"{d['sampling']['latent_samples']} samples, crop {d['crop']['mode']} "
                  f"({d['crop'].get('size', d['crop'].get('tile'))} px), {d['seconds']['total']:.1f} s")
    console.print(f"wrote {', '.join(p.name for p in outcome.files.values())} to {outcome.out_dir}")


