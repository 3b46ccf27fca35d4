"""Table 2 (GED) and Table 3 (NCC) of the paper: per-method mean +- std over seeds and the common-subset NCC."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..models.registry import METHOD_LABELS  # noqa: F401  the labels live in the method registry

REPORTED = ("ged", "ncc", "ncc_excluded", "ncc_true", "diversity", "dist_sy", "brier", "ece", "aleatoric", "epistemic")


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


def mean_pm(stats: dict[str, float], key: str, digits: int = 4) -> str:
    """`<key>_mean ± <key>_std` from an `aggregate` summary, or n/a where the key has no finite value."""
    if f"{key}_mean" not in stats:
        return "n/a"
    return f"{stats[f'{key}_mean']:.{digits}f} ± {stats[f'{key}_std']:.{digits}f}"


def results_table(dataset: str, summary: dict[str, dict[str, float]], seeds: int, samples: int,
                  common: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown: Table 2 (GED) and Table 3 (NCC) of the paper for `dataset`, mean ± std over seeds."""
    lines = [
        f"# Results on {dataset} (test split, {samples} samples per image, mean ± std over {seeds} seed(s))",
        "",
        "## Table 2: GED (lower is better)",
        "",
        "| method | GED | E d(S,Y) | diversity E d(S,S') |",
        "|---|---|---|---|",
    ]
    for method, stats in summary.items():
        lines.append(f"| {METHOD_LABELS.get(method, method)} | {mean_pm(stats, 'ged')} | {mean_pm(stats, 'dist_sy')} | "
                     f"{mean_pm(stats, 'diversity')} |")
    lines += [
        "",
        "## Table 3: NCC of predicted aleatoric vs grader variance (higher is better)",
        "",
        "| method | NCC | images excluded (constant map) | NCC, common subset | NCC vs true variance | ECE |",
        "|---|---|---|---|---|---|",
    ]
    for method, stats in summary.items():
        shared = (common or {}).get(method)
        shared_text = f"{shared['mean']:.3f} ± {shared['std']:.3f} ({shared['images']:.0f} img)" if shared else "n/a"
        lines.append(
            f"| {METHOD_LABELS.get(method, method)} | {mean_pm(stats, 'ncc', 3)} | {mean_pm(stats, 'ncc_excluded', 1)} | "
            f"{shared_text} | {mean_pm(stats, 'ncc_true', 3)} | {mean_pm(stats, 'ece', 4)} |"
        )
    lines += ["", "GED: generalized energy distance with d = 1 - IoU (V-statistic); NCC: mean over images where "
              "both maps vary; excluded images have a constant map. E d(S,Y) and diversity are shown because GED "
              "subtracts diversity, which rewards noisy samples.", ""]
    return "\n".join(lines)
