"""`supuq best --retrain`: retrain the best config over seeds (with the baselines) on train+val, test each
model, and tabulate Table 2 (GED) and Table 3 (NCC), mean +- std over seeds.

A retrain is a parent MLflow run (`supuq.kind=retrain`, tagged with the sweep it came from) with one child
run per (method, seed); the parent holds the aggregated metrics, `results.md` (the Table 2/3 model as markdown),
`results.json` (per-seed metrics, their summary, the common-subset NCC and the retrain's scale) and the best
config. Seeds run in parallel as Ray tasks (one CPU each) unless `parallel=False`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import tracking
from ..config import Config, dump_config, validate_config
from ..models.registry import METHODS, sampling_grid
from ..sweep.selection import BestTrial
from .tables import ResultTables, Scale, aggregate, build_tables, common_subset_ncc, to_markdown

@dataclass
class RetrainOutcome:
    """`table` is results.md (markdown); `tables` the same Table 2/3 model, for the terminal."""

    parent_run_id: str
    per_seed: dict[str, list[dict[str, float]]]
    table: str
    tables: ResultTables
    summary: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0


def retrain_configs(
    best: Config, seeds: int, baselines: bool, samples: int, tuned: dict[str, Config] | None = None
) -> list[Config]:
    """One config per (method, seed): trained on train+val, tested with `samples` on the method's grid
    (`sampling_grid`: M=5 x K with weight samples, 1 x samples without), recorded in its eval settings.

    With `baselines` every registered method is retrained. A baseline takes its own tuned config from `tuned`
    (e.g. the best trial of its own sweep) when given, else the best config with that method's fixed settings
    (`Config.with_method`).
    """
    methods = list(METHODS) if baselines else [best.model.method]
    configs = []
    for method in methods:
        if method == best.model.method:
            base = best
        elif tuned and method in tuned:
            base = tuned[method]
        else:
            base = best.with_method(method)
        weight, latent = sampling_grid(base.model, samples, base.eval.weight_samples)
        for seed in range(seeds):
            configs.append(base.updated({
                "train.seed": seed, "train.train_on_val": True,
                "eval.weight_samples": weight, "eval.latent_samples": latent,
            }))
    return configs


def _train_one(cfg_json: str, uri: str, parent_id: str, out_dir: str, on_epoch=None) -> dict[str, Any]:
    """One retrain child run (a Ray task or a plain call): returns the test metrics and per-image NCCs.
    `on_epoch(epoch)` after each logged epoch (the serial retrain's progress)."""
    import torch

    from .single import train_and_evaluate

    torch.set_num_threads(1)
    cfg = validate_config(json.loads(cfg_json))
    outcome = train_and_evaluate(
        cfg, uri, track=True, out_dir=out_dir, parent_run_id=parent_id,
        run_name=f"{cfg.model.method}-seed{cfg.train.seed}", extra_tags={"supuq.kind": "retrain-seed"},
        on_epoch=on_epoch,
    )
    return {
        "method": cfg.model.method, "seed": cfg.train.seed, "run_id": outcome.run_id,
        "metrics": outcome.test.as_dict(""), "ncc_per_image": outcome.test.per_image["ncc"].tolist(),
        "seconds": outcome.seconds, "image_px": int(min(outcome.fitted.data.images.shape[-2:])),
    }


def retrain(
    best: BestTrial | None,
    cfg: Config,
    uri: str,
    seeds: int = 5,
    baselines: bool = False,
    samples: int = 50,
    parallel: bool = True,
    out_root: str | Path = "runs/retrain",
    progress=None,
    tuned: dict[str, BestTrial] | None = None,
) -> RetrainOutcome:
    """Retrain `cfg` (the best config) over `seeds` seeds (and the baselines), log and tabulate.

    `progress(epochs done, epochs in all, jobs done, jobs in all)` as training goes (`EpochCounter`)."""
    started = time.perf_counter()
    experiment = tracking.experiment_name(cfg.data.dataset)
    tracking.init_store(uri, experiment)
    configs = retrain_configs(cfg, seeds, baselines, samples, {m: t.config for m, t in (tuned or {}).items()})
    tags = {"supuq.kind": "retrain", "supuq.dataset": cfg.data.dataset}
    if best is not None:
        tags.update({"supuq.sweep_run_id": best.sweep_run_id, "supuq.sweep_name": best.sweep_name,
                     "supuq.best_trial_run": best.run_id})
    for method, trial in (tuned or {}).items():
        tags[f"supuq.sweep_name.{method}"] = trial.sweep_name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # Absolute before the jobs leave: a Ray worker resolves a relative path against its own working directory
    # (the one Ray was started from), not the caller's.
    out_root = Path(out_root).resolve() / f"{cfg.data.dataset}-{stamp}"
    with tracking.tracked_run(uri, experiment, run_name=f"retrain-{cfg.data.dataset}-{stamp}", tags=tags) as parent:
        parent.log_config(cfg)
        parent.log_text(dump_config(cfg), "best_config.yaml")
        jobs = [(json.dumps(c.model_dump(mode="json")), uri, parent.run_id,
                 str(out_root / f"{c.model.method}-seed{c.train.seed}")) for c in configs]
        counter = EpochCounter(uri, parent.run_id, {f"{c.model.method}-seed{c.train.seed}": c.train.epochs
                                                    for c in configs}, progress)
        results = _run_jobs(jobs, parallel, counter)
        per_seed: dict[str, list[dict[str, float]]] = {}
        for row in results:
            per_seed.setdefault(row["method"], []).append(row["metrics"])
        summary = aggregate(per_seed)
        common = common_subset_ncc(results)
        scale = {"seeds": seeds, "epochs": min(c.train.epochs for c in configs),
                 "image_px": min(row["image_px"] for row in results)}
        tables = build_tables(cfg.data.dataset, per_seed, samples, common, Scale(**scale))
        table = to_markdown(tables)
        for method, stats in summary.items():
            parent.log_metrics({f"{method}/{k}": v for k, v in stats.items()}, step=0)
        parent.log_text(table, "results.md")
        # The run page's description: the tables themselves, where a reader of the MLflow UI looks first
        # (headings from level 3: the page's own title stays the largest text on it).
        parent.set_tags({"mlflow.note.content": to_markdown(tables, level=3)})
        parent.log_text(json.dumps({"summary": summary, "per_seed": per_seed, "ncc_common": common, "scale": scale},
                                   indent=2), "results.json")
        parent_id = parent.run_id
    return RetrainOutcome(parent_id, per_seed, table, tables, summary, time.perf_counter() - started)


POLL_SECONDS = 3.0
"""How often the parallel retrain reads its seed runs' epochs from MLflow for the progress bar."""


class EpochCounter:
    """The retrain's progress in epochs across all (method, seed) jobs, so that the bar moves with training
    rather than only when a whole job ends: `progress(epochs done, epochs in all, jobs done, jobs in all)`.

    Serial jobs tell it each epoch (`epoch_done`); Ray tasks run in other processes, so `poll` reads the epochs
    each seed run has logged (the last step of its train/total history) from MLflow."""

    def __init__(self, uri: str, parent_id: str, epochs: dict[str, int], progress=None):
        self.uri, self.parent_id, self.progress = uri, parent_id, progress
        self.epochs = epochs  # run name (method-seedN) -> epochs it trains
        self.reached = dict.fromkeys(epochs, 0)
        self.jobs_done = 0

    def epoch_done(self, name: str, epoch: int) -> None:
        self.reached[name] = max(self.reached[name], min(epoch, self.epochs[name]))
        self.show()

    def job_done(self, name: str) -> None:
        self.jobs_done += 1
        self.reached[name] = self.epochs[name]
        self.show()

    def poll(self) -> None:
        client = tracking.client_for(self.uri)
        for run in tracking.child_runs(self.uri, self.parent_id):
            name = run.info.run_name
            if name in self.reached:  # a retried task's second run: the most epochs of either
                steps = client.get_metric_history(run.info.run_id, "train/total")
                self.reached[name] = max(self.reached[name], min(max((m.step for m in steps), default=0),
                                                                 self.epochs[name]))
        self.show()

    def show(self) -> None:
        if self.progress is not None:
            self.progress(sum(self.reached.values()), sum(self.epochs.values()), self.jobs_done, len(self.epochs))


def _job_name(job: tuple) -> str:
    cfg = json.loads(job[0])
    return f"{cfg['model']['method']}-seed{cfg['train']['seed']}"


def _run_jobs(jobs: list[tuple], parallel: bool, counter: EpochCounter) -> list[dict[str, Any]]:
    """Run retrain jobs as Ray tasks (1 CPU each) when `parallel`, else one after another."""
    counter.show()  # 0 of all epochs, before Ray's start-up
    if not parallel:
        out = []
        for job in jobs:
            name = _job_name(job)
            out.append(_train_one(*job, on_epoch=lambda epoch, name=name: counter.epoch_done(name, epoch)))
            counter.job_done(name)
        return out
    import ray

    from ..sweep.cluster import connect_ray

    started_here = connect_ray(None)  # the sweep's own start-up: same settings, same one-line errors
    try:
        task = ray.remote(num_cpus=1, max_retries=1)(_train_one)
        pending = {task.remote(*job): i for i, job in enumerate(jobs)}
        results: list[Any] = [None] * len(jobs)
        counter.poll()
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_SECONDS)
            for ref in done:
                index = pending.pop(ref)
                results[index] = ray.get(ref)
                counter.job_done(_job_name(jobs[index]))
            if pending:
                counter.poll()
        return results
    finally:
        if started_here:
            ray.shutdown()
