"""Overhead of Ray Tune + MLflow: a sweep of N short trials (`supuq.sweep.driver.run_sweep`, one trial at a time, FIFO
scheduler, a one-point search space so every trial trains the same config) vs the same `fit` calls run plainly.

Parts, measured separately in one run:
- plain: N x `supuq.train.fit(cfg, data)` in this process, no reporter, no checkpoints;
- MLflow logging: for each trial what the trial logs (a child run with its config, tags and every epoch's
  metrics) replayed against a fresh sqlite store from the plain fit's history, without training;
- Ray start / stop: `ray.init` and `ray.shutdown` of a local instance;
- the sweep: `run_sweep` wall time (with that Ray instance up), split with each trial's own `time_total_s` (from
  its result.json: time inside the trainable up to its last report) into in-trial extras (in-trial time - plain fit
  - MLflow: imports in the worker, data loading, checkpoints, tune.report) and scheduling + driver (sweep - sum of
  in-trial times: worker start-up, Tune's bookkeeping, the driver's MLflow parent run and summaries).
Overhead = (Ray start + sweep + Ray stop) / plain - 1. Trials and plain fits use 1 torch thread each (on a shared
2-core machine two OpenMP threads make a fit several times slower and noisier whenever another job runs).
Trials reuse their Ray worker (`reuse_actors`), so the first trial pays the worker's imports and MLflow store
opening and later ones do not: the table splits the first trial's extras from the later trials'.

Profile: the demo's trials (configs/synthetic.yaml as `make demo` trains it: 20 epochs, a validation and a checkpoint
every 2), N=3 one at a time by default; --demo runs the demo sweep's N=6 (sweep/synthetic.yaml's num_samples; one at
a time, ~6 min); --quick: 2 epochs, N=2.
Usage: python bench/sweep.py [--quick | --demo] [--trials N] [--epochs E] [--no-record]
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import yaml

import benchlib
from supuq.config import load_config

ROOT = Path(__file__).resolve().parent.parent

SPACE = """metric: val/ged
mode: min
num_samples: {n}
max_concurrent: 1
seed: 0
max_failures: 1
scheduler: {{type: none}}
resources: {{cpu: 1, gpu: 0}}
space:
  loss.beta: {{choice: [1.0]}}
"""


def plain_fits(cfg, data, n):
    from supuq.train import fit

    times, history = [], None
    for _ in range(n):
        t = time.perf_counter()
        result = fit(cfg, data)
        times.append(time.perf_counter() - t)
        history = result.history
    return times, history


def mlflow_replay(cfg, history, n, uri):
    """What each trial logs to MLflow, without the training: child run, config, tags, per-epoch metrics."""
    from supuq import tracking

    experiment = tracking.experiment_name(cfg.data.dataset) + "-bench"
    tracking.init_store(uri, experiment)
    parent = tracking.create_run(uri, experiment, run_name="bench-parent", tags={"supuq.kind": "sweep"})
    times = []
    for i in range(n):
        t = time.perf_counter()
        tags = {**tracking.standard_tags(cfg), "supuq.kind": "trial"}
        with tracking.tracked_run(uri, experiment, run_name=f"trial-{i}", parent_run_id=parent, tags=tags) as run:
            run.log_config(cfg)
            run.set_tags({"supuq.config": cfg.model_dump_json()})
            log = tracking.MlflowReporter(run, quiet=True)
            for row in history:
                log({k: v for k, v in row.items() if k != "epoch"}, int(row["epoch"]), None)
        times.append(time.perf_counter() - t)
    return times


def trial_seconds(path: str) -> float:
    """time_total_s of a trial's last result (seconds inside the trainable), from its result.json."""
    import json

    lines = (Path(path) / "result.json").read_text().strip().splitlines()
    return float(json.loads(lines[-1])["time_total_s"]) if lines else float("nan")


def main(argv=None) -> int:
    p = benchlib.parser(__doc__, "2 epochs, 2 trials")
    p.add_argument("--demo", action="store_true", help="the demo sweep's number of trials (6), one at a time")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None, help="default: the demo config's own")
    args = p.parse_args(argv)
    torch.set_num_threads(1)  # as each trial does with resources cpu: 1
    demo_trials = int(yaml.safe_load((ROOT / "sweep" / "synthetic.yaml").read_text())["num_samples"])
    n = args.trials or (2 if args.quick else demo_trials if args.demo else 3)
    epochs = args.epochs or (2 if args.quick else None)
    overrides = [f"train.epochs={epochs}"] if epochs else []

    tmp = tempfile.mkdtemp(prefix="supuq-bench-sweep-")
    os.chdir(tmp)  # the synthetic cache (data/...) and Ray's storage land here, not in the repository
    uri = f"sqlite:///{tmp}/mlflow.db"
    cfg = load_config(ROOT / "configs" / "synthetic.yaml", overrides)
    from supuq.data.prepare import load_dataset

    data = load_dataset(cfg.data)  # generated once (the sweep's driver does the same before Ray starts)
    plain, history = plain_fits(cfg, data, n)
    print(f"plain fits: {' '.join(f'{t:.1f}' for t in plain)} s", flush=True)
    mlflow_times = mlflow_replay(cfg, history, n, f"sqlite:///{tmp}/mlflow-replay.db")
    print(f"MLflow replay per trial: {' '.join(f'{t:.2f}' for t in mlflow_times)} s", flush=True)

    space_file = Path(tmp) / "space.yaml"
    space_file.write_text(SPACE.format(n=n))
    error = None
    try:
        import ray

        from supuq.sweep.driver import SweepOptions, run_sweep

        t = time.perf_counter()
        ray.init(include_dashboard=False, logging_level="WARNING", log_to_driver=False)
        ray_start = time.perf_counter() - t
        try:
            opts = SweepOptions(dataset="synthetic", config=ROOT / "configs" / "synthetic.yaml", space=space_file,
                                samples=n, concurrent=1, overrides=overrides, name="bench",
                                storage=str(Path(tmp) / "ray_results"), tracking_uri=uri, cpus_per_trial=1)
            t = time.perf_counter()
            outcome = run_sweep(opts)
            sweep = time.perf_counter() - t
        finally:
            t = time.perf_counter()
            ray.shutdown()
            ray_stop = time.perf_counter() - t
        statuses = [trial["status"] for trial in outcome.trials]
        in_trial = [trial_seconds(trial["path"]) for trial in outcome.trials]
        print(f"in-trial seconds: {' '.join(f'{t:.2f}' for t in in_trial)}; sweep wall {sweep:.1f} s", flush=True)
    except Exception as err:  # report rather than crash: the plain fits are still timed and recorded
        error = f"{type(err).__name__}: {err}"
        traceback.print_exc()

    total_plain = sum(plain)
    if error is None:
        mlflow_total = sum(mlflow_times)
        plain_mean = total_plain / n
        first_extra = in_trial[0] - plain[0]  # the worker's imports, MLflow store, data: once per worker
        later_extra = sum(t - p for t, p in zip(in_trial[1:], plain[1:]))  # reused worker
        scheduling = sweep - sum(in_trial)
        total = ray_start + sweep + ray_stop - total_plain
        overhead = total / total_plain
        without_ray = (sweep - total_plain) / total_plain

        def share(x):
            return f"{100 * x / total_plain:.1f}%"

        later = f"{later_extra / (n - 1):.2f}" if n > 1 else ""
        rows = [
            ("plain fit (sum of N)", n, total_plain, plain_mean, ""),
            ("Ray start (ray.init)", 1, ray_start, "", share(ray_start)),
            ("MLflow logging (replayed; part of the trials' time)", n, mlflow_total, mlflow_total / n,
             share(mlflow_total)),
            ("first trial's extras (worker imports, MLflow store, data, checkpoints)", 1, first_extra, "",
             share(first_extra)),
            ("later trials' extras (reused worker: checkpoints, tune.report, MLflow)", n - 1, later_extra, later,
             share(later_extra)),
            ("scheduling + driver (sweep - in-trial time)", n, scheduling, scheduling / n, share(scheduling)),
            ("Ray stop (ray.shutdown)", 1, ray_stop, "", share(ray_stop)),
            ("sweep (run_sweep wall; in-trial time)", n, sweep, f"{sum(in_trial) / n:.2f} in trial", ""),
            ("total overhead", "", total, "", share(total)),
            ("overhead without Ray start / stop", "", sweep - total_plain, "", share(sweep - total_plain)),
        ]
        verdict = (f"overhead {100 * overhead:.1f}% vs target <= 5%: "
                   f"{'holds' if overhead <= 0.05 else 'does NOT hold'} ({100 * without_ray:.1f}% without Ray's own "
                   f"start and stop); per trial after the first {later_extra / max(n - 1, 1):+.2f} s in the trial "
                   f"and {scheduling / n:.2f} s of scheduling, on trials of {plain_mean:.1f} s")
        body = (
            f"Sweep of N={n} trials ({cfg.train.epochs} epochs each, synthetic demo model and data, 1 thread per trial, "
            f"one at a time) vs the same fits run plainly. Trial statuses: {', '.join(statuses)}. "
            f"Plain fits (s): {' '.join(f'{t:.2f}' for t in plain)}; in-trial (s): "
            f"{' '.join(f'{t:.2f}' for t in in_trial)}.\n\n"
            + benchlib.table(["part", "count", "s", "s per item", "of plain"], rows)
            + f"\n\n{verdict}"
        )
    else:
        body = (f"plain fits: {total_plain:.1f} s for N={n}; MLflow replay {sum(mlflow_times):.2f} s.\n\n"
                f"run_sweep FAILED: {error}")
    flag = " --quick" if args.quick else " --demo" if args.demo else ""
    flag += f" --trials {args.trials}" if args.trials else ""
    flag += f" --epochs {args.epochs}" if args.epochs else ""
    benchlib.report("bench/sweep.py" + flag, body, record=not args.no_record)
    os.chdir(ROOT)
    shutil.rmtree(tmp, ignore_errors=True)  # synthetic cache, Ray storage, MLflow stores of this run
    return 0


if __name__ == "__main__":
    sys.exit(main())
