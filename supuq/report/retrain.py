"""`supuq report RUN_ID|SWEEP_NAME --out report.html`: one self-contained HTML page from MLflow data.

Self-contained: every image is an embedded base64 PNG data URI and the CSS is inline; the page loads nothing
(no scripts, no fonts, no links to follow for its content), so it opens offline and can be mailed. A click
enlarges any figure and radio buttons re-sort the table of test images, both in CSS alone.

- A retrain run (`supuq.kind=retrain`, written by `supuq best --retrain`): the Table 2 (GED) / Table 3 (NCC)
  model of `supuq.workflows.tables` built from the run's `results.json` (mean +- std over seeds, the verdict of
  ours against each baseline, the paper's published values for LIDC and MICCAI2012, a banner on smoke-scale
  runs); each method's seed-0 Figure 1/2 style panel (`figures/uncertainty.png`: the same fixed test images for
  every method); each of those images across methods and a table of every test image's GED and NCC per method,
  worst first (`supuq.report.images`); learning curves; a reliability diagram of p_m against p_g per method, its bins pooled over
  seeds for the picture (the ECE itself is the calibration table's, mean +- std over seeds).
- A sweep (`supuq.kind=sweep`): final val/ged against val/ncc per trial with the Pareto front (min GED, max
  NCC); each searched parameter against GED (log axis where it was searched log-uniformly); the epochs each
  trial reached, coloured by how it ended (ASHA's stops); a table of trials.

The page is also logged as the artifact `report.html` of the run it describes (the run's status is left as
it was). MLflow is reached through `supuq.tracking` and the MLflow client only.
"""

from __future__ import annotations

import html
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import SupuqError
from ..evaluate import pool_reliability
from ..outputs import check_output_file
from ..workflows.published import PAPER
from ..models.registry import SHORT_LABELS
from ..workflows.tables import METHOD_LABELS, build_tables, recorded_scale, samples_of
from .html import (artifact, html_figure, html_page, html_result_tables, html_table, json_artifact, num, param_text,
                   quiet_downloads)
from .images import per_image_sections
from .sweep import sweep_sections


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

    out = check_output_file(out)  # before the figures are drawn: a bad --out is one line at once
    uri = tracking.resolve_tracking_uri(uri)
    run = resolve_target(uri, ref)
    kind = run.data.tags["supuq.kind"]
    with tempfile.TemporaryDirectory(prefix="supuq-report-") as tmp, quiet_downloads():
        work = Path(tmp)
        body = retrain_sections(uri, run, work) if kind == "retrain" else sweep_sections(uri, run, work)
        page = html_page(f"supuq {kind} report: {run.info.run_name}", _header(uri, run, kind) + body)
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

    results = json_artifact(uri, run.info.run_id, "results.json", work / "parent")
    if results is None:
        raise SupuqError(f"retrain run {run.info.run_id} has no results.json (did it finish?)")
    per_seed: dict[str, list[dict[str, float]]] = results.get("per_seed", {})
    dataset = run.data.tags.get("supuq.dataset", "?")
    children = tracking.child_runs(uri, run.info.run_id)
    by_method: dict[str, list] = {}
    for child in children:
        by_method.setdefault(child.data.params.get("model.method", "?"), []).append(child)
    for runs in by_method.values():
        runs.sort(key=lambda r: int(r.data.params.get("train.seed", 0)))
    methods = list(per_seed) + [m for m in by_method if m not in per_seed]
    label = {m: METHOD_LABELS.get(m, m) for m in methods}
    samples = samples_of(children)
    model = build_tables(dataset, per_seed, samples, results.get("ncc_common", {}), recorded_scale(results, children))
    evals = {child.info.run_id: ev for child in children
             if (ev := json_artifact(uri, child.info.run_id, "eval.json", work / child.info.run_id)) is not None}

    out = [f"<p class='meta'>{html.escape(model.heading)}; each seed retrained on train+val; std is the sample "
           "std over seeds.</p>"]
    out += html_result_tables(model)
    out.append(_config_table(methods, label, by_method))

    out.append("<h2>Figure 1 / Figure 2 style panels (seed 0, fixed test images)</h2>")
    out.append("<p class='note'>Per image: the image and each grader's mask; model samples; the true data "
               "uncertainty (grader variance, or p*(1-p*) on synthetic data) beside the predicted aleatoric and "
               "epistemic maps. The images are the same for every method (a fixed choice from the test split). "
               "Click a panel to enlarge it (click again to close); the next section puts each image's methods "
               "side by side.</p>")
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
    out += per_image_sections(uri, methods, {m: SHORT_LABELS.get(m, m) for m in methods}, by_method, evals, work)
    out.append("<h2>Learning curves (seed 0)</h2>")
    out.append("<p class='note'>Training loss terms per batch (log scale) and validation metrics per epoch. "
               "Retrains train on train+val, so their validation curves are not held out.</p>")
    out += curves

    out.append("<h2>Reliability of p<sub>m</sub> against p<sub>g</sub></h2>")
    pooled = {}
    for method in methods:
        parts = [t for child in by_method.get(method, []) if (t := evals.get(child.info.run_id, {}).get("reliability"))]
        if parts:
            pooled[label[method].split(" (")[0]] = pool_reliability(parts)
    if pooled:
        from ..figures import reliability_figure

        # The picture pools the seeds' bins; it prints no ECE of its own, so the report has one ECE per method
        # (the calibration table's mean +- std over seeds).
        path = reliability_figure({name: acc.table() for name, acc in pooled.items()}, work / "reliability.png")
        rows = [[name, f"{int(acc.count.sum()):,}"] for name, acc in pooled.items()]
        out.append("<div class='row'><div>" + html_figure(path, "reliability diagram",
                   "Each pixel binned by its predicted foreground probability p_m (10 bins); per bin, mean p_m "
                   "against the graders' mean p_g, the bins of all seeds' test pixels pooled (count-weighted "
                   "means) for this picture. The ECE is in the calibration table above: each seed's ECE over its "
                   "own test pixels, mean ± std over seeds.") + "</div><div>"
                   + html_table(["method", "test pixels (all seeds)"], rows) + "</div></div>")
    else:
        out.append("<p class='note'>No eval.json reliability tables found on the seed runs.</p>")

    out.append("<h2>Per seed</h2>")
    rows = []
    for method in methods:
        for child in by_method.get(method, []):
            m = child.data.metrics
            rows.append([label[method], child.data.params.get("train.seed", "?"), *(num(m.get(f"test/{k}"), d) for k, d in
                         (("ged", 4), ("ged_100", 4), ("hm_iou_16", 3), ("ncc", 3), ("ncc_binary", 3),
                          ("ncc_excluded", 0), ("diversity", 3), ("ece", 4))),
                         f"<span class='tag'>{child.info.run_id}</span>"])
    out.append(html_table(["method", "seed", "GED", "GED_100", "HM-IoU_16", "NCC", "NCC binary", "NCC excl.",
                           "diversity", "ECE", "run id"], rows, raw_last=True))
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
            settings = "\n".join(f"{k.split('.', 1)[1]} {param_text(params.get(k))}" for k in own)  # one per line
            rows.append([label[m], settings or "none (no key of its own)", *(param_text(params.get(k)) for k in SHARED_KEYS)])
    if not rows:
        return ""
    head = ["method", "the method's own settings", *(k.split(".")[-1] for k in SHARED_KEYS)]
    return "<h2>Configurations</h2><div class='configs'>" + html_table(head, rows) + "</div>"


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
