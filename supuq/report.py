"""`supuq report RUN_ID|SWEEP_NAME --out report.html`: one self-contained HTML page from MLflow data.

Self-contained: every image is an embedded base64 PNG data URI and the CSS is inline; the page loads nothing
(no scripts, no fonts, no links to follow for its content), so it opens offline and can be mailed.

- A retrain run (`supuq.kind=retrain`, written by `supuq best --retrain`): Table 2 (GED) and Table 3 (NCC)
  of Hu et al. 2019 for this dataset, mean +- std over seeds, from the run's `results.json`, with the paper's
  published values beside them for LIDC and MICCAI2012 (`PUBLISHED`); each method's seed-0 Figure 1/2 style
  panel (`figures/uncertainty.png`: the same fixed test images for every method) and learning curves; a
  reliability diagram of p_m against p_g per method, its bins summed over seeds, with the ECE.
- A sweep (`supuq.kind=sweep`): final val/ged against val/ncc per trial with the Pareto front (min GED, max
  NCC); each searched parameter against GED (log axis where it was searched log-uniformly); the epochs each
  trial reached, coloured by how it ended (ASHA's stops); a table of trials.

The page is also logged as the artifact `report.html` of the run it describes (the run's status is left as
it was). MLflow is reached through `supuq.tracking` and the MLflow client only.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .errors import SupuqError
from .report_figures import as_float, epochs_figure, params_figure, scatter_figure

PAPER = "Hu et al., Supervised Uncertainty Quantification for Segmentation with Multiple Annotations, MICCAI 2019 (arXiv:1907.01949)"
PUBLISHED_LABEL = "published (Hu et al. 2019), not reproduced here"

PUBLISHED: dict[str, dict[str, dict[str, float]]] = {
    # Hu et al. 2019 (arXiv:1907.01949), Table 2 (GED) and Table 3 (NCC), for LIDC-IDRI and MICCAI2012 prostate,
    # per method ("supervised" = the paper's method, "kohl" = Probabilistic U-Net, "kendall_gal").
    # Deliberately empty: no verified copy of those two tables was at hand when this module was written, and a
    # number is never filled in from memory. Copy a value from the paper as {method: value} into "ged" or "ncc"
    # and the report shows it in the published column; until then that column says "see the paper".
    "lidc": {"ged": {}, "ncc": {}},
    "miccai2012": {"ged": {}, "ncc": {}},
}
DATASET_FAMILY = {"lidc": "lidc", "lidc-toolbox": "lidc", "lidc-pickle": "lidc", "lidc-png": "lidc",
                  "miccai2012": "miccai2012"}
SWEPT_DEFAULT = ("loss.beta", "loss.gamma", "model.weight_noise.prior", "model.weight_noise.prior_std", "optim.lr")

CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 24px auto; max-width: 1200px;
       color: #222; line-height: 1.4; padding: 0 16px; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 2em; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; vertical-align: top; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
td.published, th.published { background: #fff7e0; color: #6b5500; font-style: italic; }
.meta { color: #555; font-size: 0.9em; } .note { color: #555; font-size: 0.88em; max-width: 1000px; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
figure { margin: 0 0 16px; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; max-width: 900px; }
.panel { flex: 1 1 340px; min-width: 300px; } .tag { font-family: monospace; font-size: 0.9em; }
"""


@dataclass
class WrittenReport:
    path: Path
    run_id: str
    kind: str
    images: int
    logged: bool


# ------------------------------------------------------------------------------------------------- entry point


def resolve_target(uri: str, ref: str):
    """The retrain or sweep run named by `ref`: a run id, else the newest retrain/sweep run of that name."""
    from . import tracking

    try:
        run = tracking.get_run(uri, ref)
    except SupuqError:
        run = None
    if run is None and "'" not in ref:
        runs = [r for r in tracking.search_runs(uri, None, f"attributes.run_name = '{ref}'")
                if r.data.tags.get("supuq.kind") in ("sweep", "retrain")]
        run = runs[0] if runs else None
    if run is None:
        raise SupuqError(f"no retrain or sweep run with id or name {ref!r} in {uri}")
    kind = run.data.tags.get("supuq.kind")
    if kind not in ("sweep", "retrain"):
        raise SupuqError(f"run {ref} is a {kind or 'plain training'} run; supuq report takes a retrain run "
                         "(supuq best --retrain) or a sweep")
    return run


def write_report(uri: str, ref: str, out: str | Path, log_artifact: bool = True) -> WrittenReport:
    """Build the report of the retrain or sweep run `ref`, write it to `out`, and (with `log_artifact`) log it
    as the run's artifact `report.html`."""
    from . import tracking

    uri = tracking.resolve_tracking_uri(uri)
    run = resolve_target(uri, ref)
    kind = run.data.tags["supuq.kind"]
    with tempfile.TemporaryDirectory(prefix="supuq-report-") as tmp, _quiet_downloads():
        work = Path(tmp)
        body = retrain_sections(uri, run, work) if kind == "retrain" else sweep_sections(uri, run, work)
        page = _page(f"supuq {kind} report: {run.info.run_name}", _header(uri, run, kind) + body)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(page, encoding="utf-8")
        if log_artifact:
            from mlflow import MlflowClient

            copy = work / "report.html"
            copy.write_text(page, encoding="utf-8")
            MlflowClient(tracking_uri=uri).log_artifact(run.info.run_id, str(copy))
    return WrittenReport(out, run.info.run_id, kind, page.count("data:image/png;base64,"), log_artifact)


# ---------------------------------------------------------------------------------------------------- retrain


def retrain_sections(uri: str, run, work: Path) -> list[str]:
    from . import tracking
    from .best import METHOD_LABELS

    results = _json_artifact(uri, run.info.run_id, "results.json", work / "parent")
    if results is None:
        raise SupuqError(f"retrain run {run.info.run_id} has no results.json (did it finish?)")
    summary: dict[str, dict[str, float]] = results.get("summary", {})
    common: dict[str, dict[str, float]] = results.get("ncc_common", {})
    dataset = run.data.tags.get("supuq.dataset", "?")
    children = tracking.child_runs(uri, run.info.run_id)
    by_method: dict[str, list] = {}
    for child in children:
        by_method.setdefault(child.data.params.get("model.method", "?"), []).append(child)
    for runs in by_method.values():
        runs.sort(key=lambda r: int(r.data.params.get("train.seed", 0)))
    methods = list(summary) + [m for m in by_method if m not in summary]
    label = {m: METHOD_LABELS.get(m, m) for m in methods}
    seeds = max((int(s.get("seeds", 0)) for s in summary.values()), default=0)
    samples = _samples(by_method)

    out = [f"<p class='meta'>{seeds} seed(s) per method, retrained on train+val, tested on the test split with "
           f"{html.escape(samples)} samples per image; mean ± std (sample std) over seeds.</p>"]
    out += _tables_2_3(dataset, methods, label, summary, common)
    out.append(_config_table(methods, label, by_method))

    out.append("<h2>Figure 1 / Figure 2 style panels (seed 0, fixed test images)</h2>")
    out.append("<p class='note'>Per image: the image and each grader's mask; model samples; the true data "
               "uncertainty (grader variance, or p*(1-p*) on synthetic data) beside the predicted aleatoric and "
               "epistemic maps. The images are the same for every method (a fixed choice from the test split).</p>")
    panels, curves = [], []
    for method in methods:
        seed0 = by_method.get(method, [None])[0]
        if seed0 is None:
            continue
        where = work / f"{method}-seed0"
        for name, bucket in (("uncertainty", panels), ("curves", curves)):
            path = _artifact(uri, seed0.info.run_id, f"figures/{name}.png", where)
            text = f"{label[method]} (run {seed0.info.run_id[:8]}, seed {seed0.data.params.get('train.seed', '0')})"
            bucket.append(_figure(path, f"{name}: {text}", text) if path else
                          f"<p class='note'>{html.escape(text)}: no figures/{name}.png artifact</p>")
    out.append("<div class='row'>" + "".join(f"<div class='panel'>{p}</div>" for p in panels) + "</div>")
    out.append("<h2>Learning curves (seed 0)</h2>")
    out.append("<p class='note'>Training loss terms per batch (log scale) and validation metrics per epoch. "
               "Retrains train on train+val, so their validation curves are not held out.</p>")
    out += curves

    out.append("<h2>Reliability of p<sub>m</sub> against p<sub>g</sub></h2>")
    tables = {}
    for method in methods:
        parts = [t for child in by_method.get(method, [])
                 if (t := (_json_artifact(uri, child.info.run_id, "eval.json", work / child.info.run_id) or {})
                     .get("reliability"))]
        if parts:
            tables[label[method].split(" (")[0]] = aggregate_reliability(parts)
    if tables:
        from .figures import reliability_figure

        path = reliability_figure(tables, work / "reliability.png")
        rows = [[name, f"{t['ece']:.4f}", f"{int(sum(t['count'])):,}"] for name, t in tables.items()]
        out.append("<div class='row'><div>" + _figure(path, "reliability diagram",
                   "Each pixel binned by its predicted foreground probability p_m (10 bins); per bin, mean p_m "
                   "against the graders' mean p_g. Bins summed over all seeds' test pixels (count-weighted "
                   "means). ECE = count-weighted mean |p_m - p_g| over bins.") + "</div><div>"
                   + _table(["method", "ECE (all seeds)", "pixels"], rows) + "</div></div>")
    else:
        out.append("<p class='note'>No eval.json reliability tables found on the seed runs.</p>")

    out.append("<h2>Per seed</h2>")
    rows = []
    for method in methods:
        for child in by_method.get(method, []):
            m = child.data.metrics
            rows.append([label[method], child.data.params.get("train.seed", "?"), *(_num(m.get(f"test/{k}"), d) for k, d in
                         (("ged", 4), ("ncc", 3), ("ncc_excluded", 0), ("diversity", 3), ("ece", 4))),
                         f"<span class='tag'>{child.info.run_id}</span>"])
    out.append(_table(["method", "seed", "GED", "NCC", "NCC excl.", "diversity", "ECE", "run id"], rows, raw_last=True))
    return out


def _tables_2_3(dataset: str, methods: list[str], label: dict[str, str], summary: dict, common: dict) -> list[str]:
    from .best import mean_pm

    family = DATASET_FAMILY.get(dataset)
    published = PUBLISHED.get(family) if family else None

    def pub(metric: str, method: str, table: str) -> str:
        value = (published or {}).get(metric, {}).get(method)
        return f"{value:.3f}" if value is not None else f"see the paper ({table})"

    out = [f"<h2>Table 2: GED on {html.escape(dataset)} (lower is better)</h2>"]
    head = ["method", "GED", "E d(S,Y)", "diversity E d(S,S')"]
    rows = [[label[m], mean_pm(summary.get(m, {}), "ged", 4), mean_pm(summary.get(m, {}), "dist_sy", 4),
             mean_pm(summary.get(m, {}), "diversity", 4)] for m in methods]
    if published is not None:
        head.append(PUBLISHED_LABEL)
        for row, m in zip(rows, methods):
            row.append(pub("ged", m, "Table 2"))
    out.append(_table(head, rows, published_col=published is not None))
    out.append(f"<h2>Table 3: NCC of predicted aleatoric vs grader variance on {html.escape(dataset)} "
               "(higher is better)</h2>")
    head = ["method", "NCC", "images excluded", "NCC, common subset", "NCC vs true variance", "ECE"]
    rows = []
    for m in methods:
        shared = common.get(m)
        shared_text = (f"{shared['mean']:.3f} ± {shared['std']:.3f} ({shared['images']:.0f} img)"
                       if shared and shared.get("mean") is not None and math.isfinite(shared["mean"]) else "n/a")
        stats = summary.get(m, {})
        rows.append([label[m], mean_pm(stats, "ncc", 3), mean_pm(stats, "ncc_excluded", 1), shared_text,
                     mean_pm(stats, "ncc_true", 3), mean_pm(stats, "ece", 4)])
    if published is not None:
        head.append(PUBLISHED_LABEL)
        for row, m in zip(rows, methods):
            row.append(pub("ncc", m, "Table 3"))
    out.append(_table(head, rows, published_col=published is not None))
    notes = ["GED: generalized energy distance, d = 1 - IoU (V-statistic). NCC: mean over test images where both "
             "maps vary; images with a constant map are excluded (count shown), so each method's mean covers its "
             "own subset, and the common-subset column compares all methods on the same images. E d(S,Y) and "
             "the sample diversity are shown because GED subtracts the diversity, which rewards noisy samples."]
    if published is not None and not any(published.get(k) for k in ("ged", "ncc")):
        notes.append(f"Published values: see Tables 2 and 3 of {PAPER}. They are not copied here because no "
                     "verified copy of the tables was available to this report generator, and numbers are never "
                     "filled in from memory (supuq.report.PUBLISHED holds them once transcribed). Published values "
                     "come from the authors' data, splits and training budget; they are shown for orientation, "
                     "not reproduced by this run.")
    elif published is not None:
        notes.append(f"The {PUBLISHED_LABEL} column is copied from Tables 2 and 3 of {PAPER}; it comes from the "
                     "authors' data, splits and training budget and is not reproduced by this run.")
    else:
        notes.append(f"No published values for dataset {dataset!r}: {PAPER} reports LIDC-IDRI and MICCAI2012 only.")
    out += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    return out


def _config_table(methods: list[str], label: dict[str, str], by_method: dict[str, list]) -> str:
    keys = ("loss.beta", "loss.gamma", "model.weight_noise.enabled", "model.weight_noise.prior",
            "model.weight_noise.prior_std", "optim.lr", "train.epochs", "train.batch_size")
    rows = []
    for m in methods:
        runs = by_method.get(m)
        if runs:
            rows.append([label[m], *(_param_text(runs[0].data.params.get(k)) for k in keys)])
    if not rows:
        return ""
    return "<h2>Configurations</h2>" + _table(["method", *(k.split(".")[-1] for k in keys)], rows)


def _samples(by_method: dict[str, list]) -> str:
    for runs in by_method.values():
        params = runs[0].data.params
        try:
            m, k = int(params["eval.weight_samples"]), int(params["eval.latent_samples"])
            return f"{m * k} ({m} x {k})"
        except (KeyError, ValueError):
            continue
    return "?"


def aggregate_reliability(tables: list[dict[str, list[float]]]) -> dict[str, Any]:
    """Sum reliability tables (mean_pred, mean_obs, count per bin) over seeds: counts add, means are
    count-weighted; ECE = sum over bins |sum p_m - sum p_g| / total count (the same as per run)."""
    count = np.zeros(len(tables[0]["count"]))
    sum_pred, sum_obs = np.zeros_like(count), np.zeros_like(count)
    for table in tables:
        c = np.asarray(table["count"], dtype=float)
        count += c
        sum_pred += np.nan_to_num(np.asarray(table["mean_pred"], dtype=float)) * c
        sum_obs += np.nan_to_num(np.asarray(table["mean_obs"], dtype=float)) * c
    with np.errstate(invalid="ignore", divide="ignore"):
        pred, obs = sum_pred / count, sum_obs / count
    total = count.sum()
    ece = float(np.abs(sum_pred - sum_obs).sum() / total) if total else float("nan")
    return {"mean_pred": pred.tolist(), "mean_obs": obs.tolist(), "count": count.tolist(), "ece": ece}


# ------------------------------------------------------------------------------------------------------ sweep


def sweep_sections(uri: str, run, work: Path) -> list[str]:
    from .best import pareto_trials, sweep_objective, trial_rows

    space = _json_artifact(uri, run.info.run_id, "space.json", work / "parent") or {}
    searched = space.get("space") or {k: {} for k in SWEPT_DEFAULT}
    rows = trial_rows(uri, run.info.run_id)
    objective = sweep_objective(run)
    max_epochs = _int(run.data.params.get("train.epochs")) or max((r["epochs"] for r in rows), default=0)
    front_ids = {r["run_id"] for r in pareto_trials(uri, run.info.run_id, rows)}
    best_trial = run.data.tags.get("supuq.best_trial", "")
    for r in rows:
        r["outcome"] = _outcome(r)
        r["pareto"] = r["run_id"] in front_ids
        r["best"] = bool(best_trial) and r["trial_id"] == best_trial

    counts: dict[str, int] = {}
    for r in rows:
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    scheduler = (space.get("scheduler") or {}).get("type", "?")
    objective_text = {"both": "multi-objective TPE: min val/ged and max val/ncc (ASHA off)",
                      "ncc": "max val/ncc", "ged": "min val/ged"}.get(objective, objective)
    out = [f"<p class='meta'>{len(rows)} trials ({', '.join(f'{n} {k}' for k, n in counts.items()) or 'none'}); "
           f"objective: {html.escape(objective_text)}; scheduler: {html.escape(str(scheduler))}; up to "
           f"{max_epochs} epochs per trial; best trial: {html.escape(best_trial or '-')}.</p>"]
    if not rows:
        return out + ["<p class='note'>This sweep has no trial runs.</p>"]

    out.append("<h2>Validation GED against NCC, with the Pareto front</h2>")
    out.append(_figure(scatter_figure(rows, work / "pareto.png"), "GED vs NCC scatter",
               "Each trial's last val/ged and val/ncc. Pareto front (no trial has both lower GED and higher NCC) "
               "over the trials that ran all epochs (all trials if none did); trials stopped early are hollow, "
               "since their values come from fewer epochs. Trials whose NCC is undefined (no image with a "
               "non-constant map; n/a in the table) are drawn at the bottom edge and rank as the worst NCC."))
    out.append("<h2>Searched parameters against GED</h2>")
    out.append(_figure(params_figure(rows, searched, work / "params.png"), "parameters vs GED",
               "Last val/ged per trial against each searched parameter; log axes for parameters searched "
               "log-uniformly; colours as in the epochs chart."))
    out.append("<h2>Epochs reached (ASHA)</h2>")
    out.append(_figure(epochs_figure(rows, max_epochs, work / "epochs.png"), "epochs reached per trial",
               "Epochs each trial trained before it finished, was stopped by ASHA at a rung (its validation metric "
               "was in the worse part of the trials that reached that rung), failed, or was interrupted."))
    out.append("<h2>Trials</h2>")
    keys = list(searched)
    head = ["trial", "status", "epochs", "val/ged", "val/ncc", *(k.split(".")[-1] for k in keys), "Pareto", "best",
            "stop reason"]
    table_rows = []
    for r in sorted(rows, key=lambda r: _sort_ged(r)):
        m = r["metrics"]
        table_rows.append([r["name"], r["outcome"], str(r["epochs"]), _num(m.get("val/ged"), 4), _num(m.get("val/ncc"), 3),
                           *(_param_text(r["params"].get(k)) for k in keys), "✓" if r["pareto"] else "",
                           "✓" if r["best"] else "", r["stop_reason"]])
    out.append(_table(head, table_rows))
    return out


def _outcome(row: dict) -> str:
    if row["status"] == "FINISHED":
        return "ran all epochs"
    if row["status"] == "FAILED":
        return "failed"
    if row["stop_reason"].startswith("stopped early"):
        return "stopped early by ASHA"
    return "interrupted / never ran"


def _sort_ged(row: dict) -> float:
    value = row["metrics"].get("val/ged", math.nan)
    return value if math.isfinite(value) else math.inf


# ---------------------------------------------------------------------------------------------------- helpers


def _header(uri: str, run, kind: str) -> list[str]:
    tags = run.data.tags
    links = []
    if kind == "retrain" and tags.get("supuq.sweep_name"):
        links.append(f"from sweep {tags['supuq.sweep_name']} (run {tags.get('supuq.sweep_run_id', '?')})")
    if kind == "sweep" and tags.get("supuq.sweep_path"):
        links.append(f"Ray storage {tags['supuq.sweep_path']}")
    started = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.info.start_time / 1000)) if run.info.start_time else "?"
    title = "Retrain over seeds" if kind == "retrain" else "Hyperparameter sweep"
    return [f"<h1>{title}: {html.escape(run.info.run_name or run.info.run_id)}</h1>",
            f"<p class='meta'>dataset <b>{html.escape(tags.get('supuq.dataset', '?'))}</b>; MLflow run "
            f"<span class='tag'>{run.info.run_id}</span> ({html.escape(run.info.status)}, started {started}); "
            f"store {html.escape(uri)}" + "".join(f"; {html.escape(x)}" for x in links) + ".<br>"
            f"Generated {time.strftime('%Y-%m-%d %H:%M')} by supuq {__version__}. Method: {html.escape(PAPER)}.</p>"]


def _page(title: str, parts: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def _table(head: list[str], rows: list[list[str]], published_col: bool = False, raw_last: bool = False) -> str:
    def cell(tag: str, value: str, last: bool, raw: bool) -> str:
        cls = " class='published'" if published_col and last else ""
        return f"<{tag}{cls}>{value if raw else html.escape(str(value))}</{tag}>"

    n = len(head)
    out = ["<table><tr>" + "".join(cell("th", h, i == n - 1, False) for i, h in enumerate(head)) + "</tr>"]
    for row in rows:
        out.append("<tr>" + "".join(cell("td", v, i == n - 1, raw_last and i == n - 1) for i, v in enumerate(row))
                   + "</tr>")
    return "".join(out) + "</table>"


def _figure(path: Path, alt: str, caption: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f"<figure><img alt='{html.escape(alt, quote=True)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _artifact(uri: str, run_id: str, path: str, dst: Path) -> Path | None:
    from . import tracking

    try:
        local = tracking.download_artifact(uri, run_id, path, dst)
    except SupuqError:
        return None
    return local if local.is_file() else None


def _json_artifact(uri: str, run_id: str, path: str, dst: Path) -> dict | None:
    local = _artifact(uri, run_id, path, dst)
    return json.loads(local.read_text()) if local else None


def _num(value: float | None, digits: int) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.{digits}f}"


def _int(value: Any) -> int | None:
    number = as_float(value)
    return int(number) if number is not None else None


def _param_text(value: str | None) -> str:
    number = as_float(value)
    if value is None:
        return "-"
    return f"{number:.3g}" if number is not None else str(value)


@contextlib.contextmanager
def _quiet_downloads():
    """No MLflow progress bar per downloaded artifact (dozens of them would drown the CLI's one line)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before
