"""The per-image part of a retrain's report: the same test image across methods, and a table of every test
image's GED and NCC per method that the reader sorts with the worst first.

Both read what each seed run logged: `eval.json`'s "per_image" (index, ged, ncc of every test image, in the
order of the dataset index) and seed 0's `panels.npz` (`supuq.figures.panel_maps` of the fixed figure images).
The test split depends on the data and split settings only, so every method and seed scores the same images.
"""

from __future__ import annotations

import html
import math
from pathlib import Path

import numpy as np

from .html import artifact, html_figure, html_sorted_table, num


def per_image_means(evals: list[dict]) -> dict[int, tuple[float, float]]:
    """Dataset index -> (GED, NCC) of that test image, each the mean over the seeds' eval.json (`evals`) that
    scored it; the NCC over the seeds where it is defined (NaN where it is undefined in all of them)."""
    values: dict[int, tuple[list[float], list[float]]] = {}
    for ev in evals:
        part = ev.get("per_image") or {}
        for idx, ged, ncc in zip(part.get("index", []), part.get("ged", []), part.get("ncc", [])):
            geds, nccs = values.setdefault(int(idx), ([], []))
            geds.append(float(ged))
            if ncc is not None and math.isfinite(ncc):
                nccs.append(float(ncc))
    return {idx: (float(np.mean(g)), float(np.mean(n)) if n else math.nan) for idx, (g, n) in values.items()}


def worst_first_ranks(values: list[float], higher_is_worse: bool) -> list[int]:
    """The rank (0 first) of each value when the worst come first; NaN (undefined) last; ties by position."""
    def key(i: int) -> tuple[bool, float, int]:
        v = values[i]
        return (not math.isfinite(v), -v if higher_is_worse else v, i)

    order = sorted(range(len(values)), key=key)
    ranks = [0] * len(values)
    for rank, i in enumerate(order):
        ranks[i] = rank
    return ranks


def image_table(metrics: dict[str, dict[int, tuple[float, float]]], viewed: set[int]) -> str:
    """Every test image (rows) with each method's GED and NCC (`metrics`: column label -> `per_image_means`),
    first sorted by the first method's GED, worst first; the radio buttons re-sort it by the image index or
    by any method's GED (highest first) or NCC (lowest first; undefined last). An image of `viewed` links to
    its picture across methods."""
    images = sorted({idx for per in metrics.values() for idx in per})
    head, rows, keys = ["image"], [], []
    for label in metrics:
        head += [f"{label} GED", f"{label} NCC"]
    for idx in images:
        name = f"image {idx}"
        cells = [f"<a href='#image-{idx}'>{name}</a>" if idx in viewed else html.escape(name)]
        for per in metrics.values():
            ged, ncc = per.get(idx, (math.nan, math.nan))
            cells += [num(ged, 4), num(ncc, 3)]
        rows.append(cells)
    for label, per in metrics.items():
        keys.append((f"{label} GED (highest first)",
                     worst_first_ranks([per.get(i, (math.nan,))[0] for i in images], higher_is_worse=True)))
        keys.append((f"{label} NCC (lowest first)",
                     worst_first_ranks([per.get(i, (math.nan, math.nan))[1] for i in images], higher_is_worse=False)))
    keys.append(("image index", list(range(len(images)))))
    return html_sorted_table("images", head, rows, keys, raw_first=True)


def per_image_sections(uri: str, methods: list[str], short: dict[str, str], by_method: dict[str, list],
                       evals: dict[str, dict], work: Path) -> list[str]:
    """The two per-image sections. `by_method`: method -> its seed runs (seed 0 first); `evals`: run id ->
    that run's eval.json (absent where it has none)."""
    from ..figures import comparison_figure

    metrics = {short[m]: per_image_means([evals[r.info.run_id] for r in by_method.get(m, []) if r.info.run_id in evals])
               for m in methods}
    metrics = {label: per for label, per in metrics.items() if per}
    maps = {}
    for m in methods:
        runs = by_method.get(m)
        path = artifact(uri, runs[0].info.run_id, "panels.npz", work / f"{m}-panels") if runs else None
        if path is not None:
            with np.load(path, allow_pickle=False) as npz:
                maps[short[m]] = {k: npz[k] for k in npz.files}
    shared = sorted(set.intersection(*(set(v["index"].tolist()) for v in maps.values()))) if maps else []

    out = ["<h2>Test images across methods (seed 0)</h2>"]
    if shared:
        out.append("<p class='note'>Each fixed test image once, with every method's seed-0 model in one row: its "
                   "samples, predicted aleatoric map (on the fixed 0..0.25 scale of the true data uncertainty in "
                   "the first row) and predicted epistemic map (one scale for all methods, so a method with less "
                   "epistemic uncertainty is darker). Click a figure to enlarge it.</p>")
        for idx in shared:
            scores = "; ".join(f"{label}: GED {num(per.get(idx, (math.nan,))[0], 4)}, NCC "
                               f"{num(per.get(idx, (math.nan, math.nan))[1], 3)}" for label, per in metrics.items())
            path = comparison_figure(maps, idx, work / f"image-{idx}.png")
            out.append(html_figure(path, f"test image {idx} across methods",
                                   f"Test image {idx}. Mean over seeds: {scores or 'no per-image metrics'}.",
                                   anchor=f"image-{idx}"))
    else:
        out.append("<p class='note'>The seed-0 runs logged no panels.npz (runs made before supuq logged it), or "
                   "their figure images differ: no per-image view.</p>")

    out.append("<h2>Per-image test metrics</h2>")
    if metrics:
        seeds = max(len(by_method.get(m, [])) for m in methods)
        out.append(f"<p class='note'>{len(next(iter(metrics.values())))} test images; GED and NCC of each image, "
                   f"mean over the seeds (up to {seeds}); n/a: NCC undefined (a constant map) in every seed. Sorted "
                   "worst first by the first method's GED; the buttons re-sort it. The images with a picture above "
                   "link to it.</p>")
        out.append(image_table(metrics, set(shared)))
    else:
        out.append("<p class='note'>The seed runs' eval.json hold no per-image metrics (runs made before supuq "
                   "logged them).</p>")
    return out
