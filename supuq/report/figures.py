"""The sweep figures of `supuq report` (matplotlib, Agg, PNG): final val/ged against val/ncc with the Pareto
front, each searched parameter against GED, and the epochs each trial reached, coloured by how it ended.

Each takes the trial rows `report.sweep.sweep_sections` builds (with its "outcome", "pareto" and "best" keys) and
returns the PNG path it wrote.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..figures import pyplot

# Keyed by the outcome labels `report.sweep._outcome` gives each trial row.
STATUS_COLOURS = {"ran all epochs": "#2a9d8f", "stopped early by ASHA": "#f4a261", "failed": "#e63946",
                  "interrupted / never ran": "#8d99ae"}


def scatter_figure(rows: list[dict], out: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ok = [r for r in rows if math.isfinite(r["metrics"].get("val/ged", math.nan))]
    finite_ncc = [r["metrics"]["val/ncc"] for r in ok if math.isfinite(r["metrics"].get("val/ncc", math.nan))]
    floor = (min(finite_ncc) - 0.05 * (max(finite_ncc) - min(finite_ncc) + 0.1)) if finite_ncc else -1.0

    def y(r):
        v = r["metrics"].get("val/ncc", math.nan)
        return v if math.isfinite(v) else floor

    for outcome, colour in STATUS_COLOURS.items():
        group = [r for r in ok if r["outcome"] == outcome]
        if group:
            filled = outcome == "ran all epochs"
            ax.scatter([r["metrics"]["val/ged"] for r in group], [y(r) for r in group], s=40,
                       facecolors=colour if filled else "none", edgecolors=colour, label=outcome, zorder=3)
    front = sorted((r for r in ok if r["pareto"]), key=lambda r: r["metrics"]["val/ged"])
    if front:
        ax.step([r["metrics"]["val/ged"] for r in front], [y(r) for r in front], where="post", color="#d62828",
                lw=1.2, zorder=2)
        ax.scatter([r["metrics"]["val/ged"] for r in front], [y(r) for r in front], s=160, marker="*",
                   color="#d62828", label="Pareto front", zorder=4)
    for r in ok:  # name the front's trials and the best one; the table below lists every trial
        if not (r["pareto"] or r["best"]):
            continue
        text = (r["trial_id"] or r["name"]) + (" (best)" if r["best"] else "")
        if not math.isfinite(r["metrics"].get("val/ncc", math.nan)):
            text += " (NCC n/a)"
        ax.annotate(text, (r["metrics"]["val/ged"], y(r)), fontsize=7, xytext=(5, 4), textcoords="offset points")
    ax.set_xlabel("val/ged (lower is better)")
    ax.set_ylabel("val/ncc (higher is better)")
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out)


def params_figure(rows: list[dict], searched: dict[str, dict], out: Path) -> Path:
    plt = pyplot()
    keys = list(searched)
    cols = min(3, max(1, len(keys)))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    ok = [r for r in rows if math.isfinite(r["metrics"].get("val/ged", math.nan))]
    for ax, key in zip(axes.ravel(), keys):
        kind = next(iter(searched[key]), "") if searched[key] else ""
        values = [r["params"].get(key) for r in ok]
        numeric = [as_float(v) for v in values]
        categorical = kind == "choice" or any(v is None for v in numeric)
        if categorical:
            levels = sorted({str(v) for v in values})
            xs = [levels.index(str(v)) for v in values]
            ax.set_xticks(range(len(levels)), levels, fontsize=7)
            ax.set_xlim(-0.5, len(levels) - 0.5)
        else:
            xs = numeric
            if kind == "loguniform":
                from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
        ax.scatter(xs, [r["metrics"]["val/ged"] for r in ok], c=[STATUS_COLOURS[r["outcome"]] for r in ok], s=30,
                   edgecolors="black", linewidths=0.4)
        ax.set_title(f"{key}" + (" (log)" if kind == "loguniform" else ""), fontsize=8)
        ax.set_ylabel("val/ged", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, out)


def epochs_figure(rows: list[dict], max_epochs: int, out: Path) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * len(rows) + 2), 3.4))
    names = [r["trial_id"] or r["name"] for r in rows]
    ax.bar(range(len(rows)), [r["epochs"] for r in rows], color=[STATUS_COLOURS[r["outcome"]] for r in rows])
    if max_epochs:
        ax.axhline(max_epochs, color="grey", ls="--", lw=0.8)
    ax.set_xticks(range(len(rows)), names, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("epochs reached")
    seen = {r["outcome"] for r in rows}
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for k, c in STATUS_COLOURS.items() if k in seen]
    ax.legend(handles, [k for k in STATUS_COLOURS if k in seen], fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, out)


def as_float(value: Any) -> float | None:
    """`float(value)`, or None where that fails (a missing or categorical parameter)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _save(fig, out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    pyplot().close(fig)
    return out
