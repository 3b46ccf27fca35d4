"""Table 2 (GED) and Table 3 (NCC) of the paper, built once as a table model and rendered three ways.

A retrain's per-seed test metrics become one `ResultTables` (`build_tables`): Table 2 (GED and its parts),
Table 3 (NCC), a calibration table (Brier, the ECE, uncertainty magnitudes), each cell keeping the mean and std
it shows; the verdict of the paper's claims (`compare`, one rule) for ours against each baseline; the paper's
published values (`supuq.workflows.published`) with their protocol; and a banner when the run is smoke-scale
(`SMOKE_*`). Renderers: `to_markdown` here (results.md, the study), `supuq.cli.tables.result_tables` (the
terminal, rich) and `supuq.report.html.html_result_tables` (the report).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from ..models.registry import METHOD_LABELS  # noqa: F401  the labels live in the method registry
from .published import PAPER, PROTOCOL, PUBLISHED_LABEL, PUBLISHED_SEEDS, PublishedValue, published_for
REPORTED = ("ged", "ged_16", "ged_100", "hm_iou_16", "ncc", "ncc_excluded", "ncc_binary", "ncc_true", "ncc_true_binary",
            "diversity", "dist_sy", "brier", "ece", "aleatoric", "epistemic")


def aggregate(per_seed: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per method: `<metric>_mean` and `<metric>_std` (sample std, ddof=1; 0 with one seed), NaNs ignored."""
    summary = {}
    for method, rows in per_seed.items():
        stats: dict[str, float] = {"seeds": float(len(rows))}
        for key in REPORTED:
            values = np.array([r[key] for r in rows if key in r], dtype=float)
            values = values[np.isfinite(values)]
            if len(values):
                stats[f"{key}_mean"] = float(values.mean())
                stats[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        summary[method] = stats
    return summary


def common_subset_ncc(results: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """NCC per method on the test images where every method's NCC is defined for the same seed: methods
    exclude different images (constant maps), so their plain means cover different subsets."""
    by_seed: dict[int, dict[str, np.ndarray]] = {}
    for row in results:
        by_seed.setdefault(row["seed"], {})[row["method"]] = np.asarray(row["ncc_per_image"], dtype=float)
    per_method: dict[str, list[float]] = {}
    counts = []
    for maps in by_seed.values():
        defined = np.logical_and.reduce([np.isfinite(v) for v in maps.values()])
        counts.append(int(defined.sum()))
        for method, values in maps.items():
            per_method.setdefault(method, []).append(float(values[defined].mean()) if defined.any() else float("nan"))
    out = {}
    for method, values in per_method.items():
        arr = np.array(values)
        arr = arr[np.isfinite(arr)]
        out[method] = {
            "mean": float(arr.mean()) if len(arr) else float("nan"),
            "std": float(arr.std(ddof=1)) if len(arr) > 1 else 0.0,
            "images": float(np.mean(counts)) if counts else 0.0,
        }
    return out


def seed_values(per_seed: dict[str, list[dict[str, float]]], method: str, key: str) -> list[float]:
    """`method`'s value of `key` for each seed (NaN where a seed lacks it): what `compare` takes."""
    return [row.get(key, float("nan")) for row in per_seed.get(method, [])]


def samples_of(seed_runs: list) -> str:
    """Test samples per image of a retrain's MLflow seed runs with each method's weight x latent grid, e.g.
    "50 (5 x 10)" when every method drew the same grid, "50 (ours 5 x 10; Prob. U-Net 1 x 50)" when they differ
    (a method without weight samples draws 1 x 50); "?" when not logged."""
    from ..models.registry import SHORT_LABELS

    grids: dict[str, tuple[int, int]] = {}
    for run in seed_runs:
        try:
            m, k = int(run.data.params["eval.weight_samples"]), int(run.data.params["eval.latent_samples"])
        except (KeyError, ValueError):
            continue
        grids.setdefault(run.data.params.get("model.method", "?"), (m, k))
    if not grids:
        return "?"
    totals = "/".join(str(n) for n in sorted({m * k for m, k in grids.values()}))
    if len(set(grids.values())) == 1:
        m, k = next(iter(grids.values()))
        return f"{totals} ({m} x {k})"
    return f"{totals} ({'; '.join(f'{SHORT_LABELS.get(name, name)} {m} x {k}' for name, (m, k) in grids.items())})"


def mean_pm(stats: dict[str, float], key: str, digits: int = 4) -> str:
    """`<key>_mean ± <key>_std` from an `aggregate` summary, or n/a where the key has no finite value."""
    if f"{key}_mean" not in stats:
        return "n/a"
    return f"{stats[f'{key}_mean']:.{digits}f} ± {stats[f'{key}_std']:.{digits}f}"


# ------------------------------------------------------------------------------------------- the verdict rule


class Verdict(NamedTuple):
    """`compare`'s answer: the verdict, the difference of seed means (a - b) and its standard error."""

    verdict: str
    diff: float
    se: float


def compare(a: list[float], b: list[float], lower_is_better: bool) -> Verdict:
    """Is `a` better than `b`? Per-seed values of one metric; NaNs are dropped.

    Rule: a difference of means larger than 2 standard errors (Welch, seeds as samples) in the claimed direction
    is "reproduced", in the other direction "not reproduced (reversed)", otherwise "inconclusive"; with fewer
    than 2 finite seeds on either side there is no standard error and the verdict is inconclusive.
    """
    a_arr, b_arr = np.asarray(a, float), np.asarray(b, float)
    a_arr, b_arr = a_arr[np.isfinite(a_arr)], b_arr[np.isfinite(b_arr)]
    if len(a_arr) < 2 or len(b_arr) < 2:
        return Verdict("inconclusive (fewer than 2 seeds)", float("nan"), float("nan"))
    diff = float(a_arr.mean() - b_arr.mean())
    se = math.sqrt(a_arr.var(ddof=1) / len(a_arr) + b_arr.var(ddof=1) / len(b_arr))
    better = -diff if lower_is_better else diff
    if better > 2 * se:
        return Verdict("reproduced", diff, se)
    if better < -2 * se:
        return Verdict("not reproduced (reversed)", diff, se)
    return Verdict("inconclusive", diff, se)


RULE = ("a difference of seed means larger than 2 standard errors (Welch, seeds as samples) in the claimed "
        "direction is *reproduced*; in the other direction *not reproduced (reversed)*; otherwise *inconclusive* "
        "at this budget")

# ------------------------------------------------------------------------------------------ smoke-scale runs

# A retrain below any of these is a smoke run: it shows that the pipeline works, its numbers are not results.
SMOKE_MIN_IMAGE_PX = 32  # shorter side of the images: the synthetic benchmark's study size (16 px is a test)
SMOKE_MIN_EPOCHS = 30  # the fewest epochs any method trained
SMOKE_MIN_SEEDS = 3  # the fewest seeds any method has


@dataclass(frozen=True)
class Scale:
    """How big a retrain was; None where unknown (e.g. a results.json written before the scale was recorded)."""

    seeds: int
    epochs: int | None = None
    image_px: int | None = None


def recorded_scale(results: dict[str, Any], seed_runs: list | None = None) -> Scale:
    """A retrain's scale from its results.json: the "scale" it recorded, else (older files) the fewest
    `train.epochs` among its MLflow seed runs `seed_runs` and an unknown image size. Seeds: the fewest any
    method has in "per_seed"."""
    seeds = min((len(rows) for rows in results.get("per_seed", {}).values()), default=0)
    recorded = results.get("scale")
    if recorded:
        return Scale(seeds, recorded.get("epochs"), recorded.get("image_px"))
    epochs = [int(r.data.params["train.epochs"]) for r in seed_runs or []
              if str(r.data.params.get("train.epochs", "")).isdigit()]
    return Scale(seeds, min(epochs) if epochs else None)


def smoke_reasons(scale: Scale) -> list[str]:
    """Why a retrain of this scale is a smoke run (empty: it is not)."""
    reasons = []
    if scale.image_px is not None and scale.image_px < SMOKE_MIN_IMAGE_PX:
        reasons.append(f"{scale.image_px} px images (under {SMOKE_MIN_IMAGE_PX})")
    if scale.epochs is not None and scale.epochs < SMOKE_MIN_EPOCHS:
        reasons.append(f"{scale.epochs} epochs (under {SMOKE_MIN_EPOCHS})")
    if scale.seeds < SMOKE_MIN_SEEDS:
        reasons.append(f"{scale.seeds} seed(s) (under {SMOKE_MIN_SEEDS})")
    return reasons


# ------------------------------------------------------------------------------------------- the table model


@dataclass(frozen=True)
class Cell:
    """What a cell shows, and the numbers behind it (mean and std over seeds; a verdict's difference and SE)."""

    text: str
    mean: float | None = None
    std: float | None = None


@dataclass(frozen=True)
class Column:
    """A column; `kind` is "method", "measured", "verdict" or "published" (renderers style the last two)."""

    name: str
    kind: str = "measured"


@dataclass
class ResultTable:
    title: str
    columns: list[Column]
    rows: list[list[Cell]]
    notes: list[str] = field(default_factory=list)


@dataclass
class ResultTables:
    """Everything a renderer shows: a heading, the smoke banner (None for a full-scale run), the tables, and
    notes about them all."""

    heading: str
    banner: str | None
    tables: list[ResultTable]
    notes: list[str] = field(default_factory=list)


OURS = "supervised"
# (per-seed key, column name, digits) of each table's measured columns.
TABLE2 = (("ged", "GED", 4), ("dist_sy", "E d(S,Y)", 4), ("diversity", "diversity E d(S,S')", 4),
          ("ged_16", "GED_16", 4), ("ged_100", "GED_100", 4), ("hm_iou_16", "HM-IoU_16 (higher is better)", 4))
TABLE3 = (("ncc", "NCC", 3), ("ncc_excluded", "images excluded (constant map)", 1),
          ("ncc_common", "NCC, common subset", 3), ("ncc_binary", "NCC, binary samples", 3),
          ("ncc_true", "NCC vs true variance", 3), ("ncc_true_binary", "NCC vs true variance, binary samples", 3))
CALIBRATION = (("brier", "Brier (p_m vs p_g)", 5), ("ece", "ECE", 4), ("aleatoric", "mean aleatoric", 5),
               ("epistemic", "mean epistemic", 6))
NOTES = {
    "table2": "GED: generalized energy distance, d = 1 - IoU (V-statistic), from binary samples. E d(S,Y) and the "
              "sample diversity are shown because GED subtracts the diversity, which rewards noisy samples. GED_16, "
              "GED_100 and HM-IoU_16 (Hungarian-matched IoU, IoU(empty, empty) = 1) are the literature's versions, "
              "each on a draw of its own of 16 or 100 samples.",
    "table3": "NCC: mean over test images where both maps vary; images with a constant map are excluded (count "
              "shown), so each method's mean covers its own subset; the common-subset column compares all methods "
              "on the images where every method's NCC is defined (same seed). NCC and NCC vs true variance use the "
              "aleatoric map of the samples' probabilities (mean over weight samples of p(1 - p), p the mean "
              "sigmoid over latent samples); the binary-sample columns use the same formula on thresholded (or, "
              "for the soft-label U-Net, Bernoulli) samples.",
    "calibration": "ECE (supuq.metrics.ece_from_bins): each test pixel binned by p_m into 10 equal bins, the "
                   "count-weighted mean over bins of |mean p_m - mean p_g|, computed per seed over all its test "
                   "pixels, then mean ± std over seeds (the one ECE this run reports). Brier: mean over pixels of "
                   "(p_m - p_g)^2. Mean aleatoric and epistemic: the maps' mean over pixels and images.",
}


def _mean_pm_cell(stats: dict[str, float], key: str, digits: int) -> Cell:
    if f"{key}_mean" not in stats:
        return Cell("n/a")
    return Cell(mean_pm(stats, key, digits), stats[f"{key}_mean"], stats[f"{key}_std"])


def _common_cell(shared: dict[str, float] | None) -> Cell:
    if not shared or shared.get("mean") is None or not math.isfinite(shared["mean"]):
        return Cell("n/a")
    return Cell(f"{shared['mean']:.3f} ± {shared['std']:.3f} ({shared['images']:.0f} img)", shared["mean"],
                shared["std"])


def _measured(title: str, spec, note: str, summary: dict[str, dict[str, float]],
              common: dict[str, dict[str, float]]) -> ResultTable:
    """One row per method of `summary` (`aggregate`): its label, then mean ± std over seeds of each
    (key, column, digits) in `spec`."""
    rows = [[Cell(METHOD_LABELS.get(m, m))] + [_common_cell(common.get(m)) if key == "ncc_common"
                                                else _mean_pm_cell(summary[m], key, digits) for key, _, digits in spec]
            for m in summary]
    return ResultTable(title, [Column("method", "method"), *(Column(name) for _, name, _ in spec)], rows, [note])


def _add_verdicts(table: ResultTable, per_seed: dict[str, list[dict[str, float]]], key: str, lower: bool) -> None:
    """A verdict column: the paper's claim that ours beats each other method on `key`, by `compare`."""
    if OURS not in per_seed or len(per_seed) < 2:
        return
    table.columns.append(Column(f"ours {'lower' if lower else 'higher'} than this method? (2-SE rule)", "verdict"))
    for method, row in zip(per_seed, table.rows):
        if method == OURS:
            row.append(Cell("reference"))
            continue
        v = compare(seed_values(per_seed, OURS, key), seed_values(per_seed, method, key), lower)
        if math.isfinite(v.diff):
            row.append(Cell(f"{v.verdict} ({v.diff:+.4f}, SE {v.se:.4f})", v.diff, v.se))
        else:
            row.append(Cell(v.verdict))
    table.notes.append(f"Verdict column: the paper's claim that ours has {'lower' if lower else 'higher'} "
                       f"{key.upper()} than that method, judged by the verdict rule below; in brackets the difference "
                       "of seed means (ours - method) and its standard error.")


def _add_published(table: ResultTable, methods: list[str], values: dict[str, PublishedValue], seeds: int) -> None:
    """The paper's values column, labelled with their protocol; "not reported" where the paper has none."""
    table.columns.append(Column(f"{PUBLISHED_LABEL} ({PROTOCOL}; {seeds} seeds)", "published"))
    for method, row in zip(methods, table.rows):
        value = values.get(method)
        row.append(Cell(f"{value.mean:.3f} ± {value.std:.3f}", value.mean, value.std) if value
                   else Cell("not reported"))


def build_tables(dataset: str, per_seed: dict[str, list[dict[str, float]]], samples: str | int,
                 common: dict[str, dict[str, float]] | None = None, scale: Scale | None = None) -> ResultTables:
    """The table model of one retrain: `per_seed` {method: [test metrics of each seed]} (results.json's
    "per_seed"; rows keep its order), `common` its `common_subset_ncc`, `samples` the test samples per image
    (e.g. 50 or "50 (5 x 10)"), `scale` for the smoke banner (default: only the seed count is known)."""
    common = common or {}
    seeds = min((len(rows) for rows in per_seed.values()), default=0)
    summary = aggregate(per_seed)
    table2 = _measured(f"Table 2: GED on {dataset} (lower is better)", TABLE2, NOTES["table2"], summary, common)
    table3 = _measured(f"Table 3: NCC of predicted aleatoric vs grader variance on {dataset} (higher is better)",
                       TABLE3, NOTES["table3"], summary, common)
    calibration = _measured(f"Calibration and uncertainty magnitudes on {dataset}", CALIBRATION,
                            NOTES["calibration"], summary, common)
    _add_verdicts(table2, per_seed, "ged", lower=True)
    _add_verdicts(table3, per_seed, "ncc", lower=False)
    notes = []
    published = published_for(dataset)
    if published is not None:
        _add_published(table2, list(per_seed), published["ged"], PUBLISHED_SEEDS["ged"])
        _add_published(table3, list(per_seed), published["ncc"], PUBLISHED_SEEDS["ncc"])
        notes.append(f"Published column: Tables 2 and 3 of {PAPER}, mean ± std over their seeds (five for Table 2, "
                     f"three for Table 3), on the authors' data with their {PROTOCOL}. A slice-level split puts "
                     "slices of one patient in both train and test; supuq splits by patient unless "
                     "data.split_by=slice, so compare with care. The paper reports no NCC for the Probabilistic "
                     "U-Net. This run does not reproduce these numbers.")
    else:
        notes.append(f"No published values for dataset {dataset!r}: {PAPER} reports LIDC-IDRI and MICCAI2012 only, "
                     "and those numbers are not comparable with these.")
    if any(c.kind == "verdict" for c in table2.columns):
        notes.append(f"Verdict rule (supuq.workflows.tables.compare, which also judges the claims of "
                     f"supuq results): {RULE.replace('*', '')}.")
    reasons = smoke_reasons(scale or Scale(seeds))
    banner = (f"Smoke-scale run: {', '.join(reasons)}. It shows that the pipeline works; its numbers are not "
              f"results (a result needs images of at least {SMOKE_MIN_IMAGE_PX} px, {SMOKE_MIN_EPOCHS} epochs and "
              f"{SMOKE_MIN_SEEDS} seeds).") if reasons else None
    heading = f"Results on {dataset} (test split, {samples} samples per image, mean ± std over {seeds} seed(s))"
    return ResultTables(heading, banner, [table2, table3, calibration], notes)


def to_markdown(result: ResultTables, level: int = 1, heading: bool = True) -> str:
    """Markdown: the heading at `level` (left out with `heading=False`), each table one level below."""
    lines = [f"{'#' * level} {result.heading}", ""] if heading else []
    if result.banner:
        lines += [f"> **{result.banner}**", ""]
    for table in result.tables:
        lines += [f"{'#' * (level + 1)} {table.title}", "",
                  "| " + " | ".join(c.name for c in table.columns) + " |",
                  "|" + "---|" * len(table.columns)]
        lines += ["| " + " | ".join(cell.text for cell in row) + " |" for row in table.rows]
        lines.append("")
        for note in table.notes:
            lines += [note, ""]
    for note in result.notes:
        lines += [note, ""]
    return "\n".join(lines)
