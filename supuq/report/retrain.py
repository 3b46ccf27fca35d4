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

import html
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..errors import SupuqError
from .html import artifact, html_figure, html_page, html_table, json_artifact, num, param_text, quiet_downloads
from .sweep import sweep_sections

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
    from .. import tracking

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
    from .. import tracking

    uri = tracking.resolve_tracking_uri(uri)
    run = resolve_target(uri, ref)
    kind = run.data.tags["supuq.kind"]
    with tempfile.TemporaryDirectory(prefix="supuq-report-") as tmp, quiet_downloads():
        work = Path(tmp)
        body = retrain_sections(uri, run, work) if kind == "retrain" else sweep_sections(uri, run, work)
        page = html_page(f"supuq {kind} report: {run.info.run_name}", _header(uri, run, kind) + body)
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
    from .. import tracking
    from ..workflows.tables import METHOD_LABELS

    results = json_artifact(uri, run.info.run_id, "results.json", work / "parent")
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
            path = artifact(uri, seed0.info.run_id, f"figures/{name}.png", where)
            text = f"{label[method]} (run {seed0.info.run_id[:8]}, seed {seed0.data.params.get('train.seed', '0')})"
            bucket.append(html_figure(path, f"{name}: {text}", text) if path else
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
                 if (t := (json_artifact(uri, child.info.run_id, "eval.json", work / child.info.run_id) or {})
                     .get("reliability"))]
        if parts:
            tables[label[method].split(" (")[0]] = aggregate_reliability(parts)
    if tables:
        from ..figures import reliability_figure

        path = reliability_figure(tables, work / "reliability.png")
        rows = [[name, f"{t['ece']:.4f}", f"{int(sum(t['count'])):,}"] for name, t in tables.items()]
        out.append("<div class='row'><div>" + html_figure(path, "reliability diagram",
                   "Each pixel binned by its predicted foreground probability p_m (10 bins); per bin, mean p_m "
                   "against the graders' mean p_g. Bins summed over all seeds' test pixels (count-weighted "
                   "means). ECE = count-weighted mean |p_m - p_g| over bins.") + "</div><div>"
                   + html_table(["method", "ECE (all seeds)", "pixels"], rows) + "</div></div>")
    else:
        out.append("<p class='note'>No eval.json reliability tables found on the seed runs.</p>")

    out.append("<h2>Per seed</h2>")
    rows = []
    for method in methods:
        for child in by_method.get(method, []):
            m = child.data.metrics
            rows.append([label[method], child.data.params.get("train.seed", "?"), *(num(m.get(f"test/{k}"), d) for k, d in
                         (("ged", 4), ("ncc", 3), ("ncc_excluded", 0), ("diversity", 3), ("ece", 4))),
                         f"<span class='tag'>{child.info.run_id}</span>"])
    out.append(html_table(["method", "seed", "GED", "NCC", "NCC excl.", "diversity", "ECE", "run id"], rows, raw_last=True))
    return out


def _tables_2_3(dataset: str, methods: list[str], label: dict[str, str], summary: dict, common: dict) -> list[str]:
    from ..workflows.tables import mean_pm

    from ..data.registry import REGISTRY

    family = REGISTRY[dataset].family if dataset in REGISTRY else None  # LIDC's four routes share LIDC's values
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
    out.append(html_table(head, rows, published_col=published is not None))
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
    out.append(html_table(head, rows, published_col=published is not None))
    notes = ["GED: generalized energy distance, d = 1 - IoU (V-statistic). NCC: mean over test images where both "
             "maps vary; images with a constant map are excluded (count shown), so each method's mean covers its "
             "own subset, and the common-subset column compares all methods on the same images. E d(S,Y) and "
             "the sample diversity are shown because GED subtracts the diversity, which rewards noisy samples."]
    if published is not None and not any(published.get(k) for k in ("ged", "ncc")):
        notes.append(f"Published values: see Tables 2 and 3 of {PAPER}. They are not copied here because no "
                     "verified copy of the tables was available to this report generator, and numbers are never "
                     "filled in from memory (supuq.report.retrain.PUBLISHED holds them once transcribed). Published values "
                     "come from the authors' data, splits and training budget; they are shown for orientation, "
                     "not reproduced by this run.")
    elif published is not None:
        notes.append(f"The {PUBLISHED_LABEL} column is copied from Tables 2 and 3 of {PAPER}; it comes from the "
                     "authors' data, splits and training budget and is not reproduced by this run.")
    else:
        notes.append(f"No published values for dataset {dataset!r}: {PAPER} reports LIDC-IDRI and MICCAI2012 only.")
    out += [f"<p class='note'>{html.escape(n)}</p>" for n in notes]
    return out


SHARED_KEYS = ("optim.lr", "train.epochs", "train.batch_size")


def _config_table(methods: list[str], label: dict[str, str], by_method: dict[str, list]) -> str:
    """Per method (its seed-0 run's params): the keys only that method reads (`Method.keys` of the registry,
    so Kendall & Gal shows its dropout, not the weight-noise prior it never uses), then the shared ones."""
    from ..models.registry import METHODS

    rows = []
    for m in methods:
        runs = by_method.get(m)
        if runs:
            params = runs[0].data.params
            own = METHODS[m].keys if m in METHODS else ()
            settings = "; ".join(f"{k.split('.', 1)[1]} {param_text(params.get(k))}" for k in own)
            rows.append([label[m], settings or "-", *(param_text(params.get(k)) for k in SHARED_KEYS)])
    if not rows:
        return ""
    head = ["method", "the method's own settings", *(k.split(".")[-1] for k in SHARED_KEYS)]
    return "<h2>Configurations</h2>" + html_table(head, rows)


def _samples(by_method: dict[str, list]) -> str:
    """"50 (5 x 10)" when every method drew the same M x K grid, else each method's grid after the total."""
    from ..models.registry import SHORT_LABELS

    grids = {}
    for method, runs in by_method.items():
        params = runs[0].data.params
        try:
            grids[method] = (int(params["eval.weight_samples"]), int(params["eval.latent_samples"]))
        except (KeyError, ValueError):
            continue
    if not grids:
        return "?"
    totals = sorted({m * k for m, k in grids.values()})
    if len(set(grids.values())) == 1:
        m, k = next(iter(grids.values()))
        return f"{m * k} ({m} x {k})"
    each = "; ".join(f"{SHORT_LABELS.get(name, name)} {m} x {k}" for name, (m, k) in grids.items())
    return f"{'/'.join(map(str, totals))} ({each})"


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
