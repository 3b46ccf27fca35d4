"""Figures a clinician-researcher looks at (matplotlib, Agg, PNG).

- `uncertainty_figure`: per chosen test image, as in Fig. 1-2 of Hu et al.: row 1 the image and each
  grader's mask; row 2 model samples; row 3 true data uncertainty (grader variance, or the generator's
  p*(1-p*) when known), predicted aleatoric and predicted epistemic, the two data-uncertainty maps on one
  colour scale. It draws `panel_maps`, which it can also save (panels.npz) for the report.
- `comparison_figure`: one test image across methods (their saved `panel_maps`), one row per method.
- `curves_figure`: training loss terms and validation metrics per epoch.
- `reliability_figure`: p_m against p_g per bin, with the ECE.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data.types import MultiGraderSet
from .evaluate import predict_samples
from .models.registry import binary_samples, sampling_grid
from .sampling import decompose_probabilities, grader_variance


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def panel_maps(
    model: torch.nn.Module,
    data: MultiGraderSet,
    indices: np.ndarray,
    weight_samples: int = 5,
    latent_samples: int = 10,
    shown_samples: int = 4,
) -> dict[str, np.ndarray]:
    """What a panel shows for the n images `indices`, as plain arrays (saved as `panels.npz` so that the report
    can put the same image of several methods side by side without their models):

    index [n] int64; image [n, H, W] float32; masks [n, D, H, W] uint8; samples [n, S, H, W] uint8 (S =
    `shown_samples` binary samples, evenly spaced over the M x K drawn) and sample_ids [S] (their 0-based numbers);
    true [n, H, W] float32 (grader variance, or p*(1-p*) when the generator's p* is known) and true_label (0-d
    str); aleatoric and epistemic [n, H, W] float32 (`decompose_probabilities` of all M x K samples'
    probabilities, the maps `evaluate`'s NCC scores). The samples are drawn on the method's grid
    (`sampling_grid`), as in `evaluate`."""
    indices = np.asarray(indices, dtype=np.int64)
    device = next(model.parameters()).device
    weight_samples, latent_samples = sampling_grid(model.model_cfg, weight_samples * latent_samples, weight_samples)
    x = torch.as_tensor(np.asarray(data.images[indices]), dtype=torch.float32, device=device)
    masks = torch.as_tensor(np.asarray(data.masks[indices]), dtype=torch.float32)
    logits = predict_samples(model, x, weight_samples, latent_samples).float().cpu()
    samples = binary_samples(model.model_cfg, logits)
    parts = decompose_probabilities(torch.sigmoid(logits))
    if data.prob is not None:
        p_true = torch.as_tensor(np.asarray(data.prob[indices]))
        true_unc, true_label = p_true * (1 - p_true), "true p*(1-p*)"
    else:
        true_unc, true_label = grader_variance(masks), "grader variance"
    flat = samples.flatten(1, 2)
    picks = np.linspace(0, flat.shape[1] - 1, shown_samples).round().astype(np.int64)
    return {
        "index": indices, "image": x[:, 0].cpu().numpy().astype(np.float32), "masks": masks.numpy().astype(np.uint8),
        "samples": flat[:, picks].numpy().astype(np.uint8), "sample_ids": picks,
        "true": true_unc.numpy().astype(np.float32), "true_label": np.array(true_label),
        "aleatoric": parts.aleatoric.numpy().astype(np.float32), "epistemic": parts.epistemic.numpy().astype(np.float32),
    }


def uncertainty_figure(
    model: torch.nn.Module,
    data: MultiGraderSet,
    indices: np.ndarray,
    out: str | Path,
    weight_samples: int = 5,
    latent_samples: int = 10,
    shown_samples: int = 4,
    title: str = "",
    maps_out: str | Path | None = None,
) -> Path:
    """One block of three rows per image in `indices`; returns the PNG path. With `maps_out` the arrays drawn
    (`panel_maps`) are also saved there as a compressed .npz."""
    maps = panel_maps(model, data, indices, weight_samples, latent_samples, shown_samples)
    if maps_out is not None:
        np.savez_compressed(maps_out, **maps)
    plt = pyplot()
    n, graders = maps["masks"].shape[:2]
    cols = max(graders + 1, shown_samples, 3)
    # constrained layout keeps the title, the panel titles and the colour bars apart (tight_layout let the title
    # run into the first row and a colour bar's "1e-6" offset into the panel title beside it)
    fig, axes = plt.subplots(3 * n, cols, figsize=(1.7 * cols, 1.6 * 3 * n + 0.3), squeeze=False,
                             layout="constrained")
    for row, idx in enumerate(maps["index"]):
        top, mid, bot = axes[3 * row], axes[3 * row + 1], axes[3 * row + 2]
        top[0].imshow(maps["image"][row], cmap="gray")
        top[0].set_title(f"image {int(idx)}", fontsize=7)
        for j in range(graders):
            top[j + 1].imshow(maps["masks"][row, j], cmap="gray", vmin=0, vmax=1)
            top[j + 1].set_title(f"grader {j + 1}", fontsize=7)
        for j, s in enumerate(maps["sample_ids"]):
            mid[j].imshow(maps["samples"][row, j], cmap="gray", vmin=0, vmax=1)
            mid[j].set_title(f"sample {s + 1}", fontsize=7)
        for j, (name, key) in enumerate([(str(maps["true_label"]), "true"), ("pred. aleatoric", "aleatoric"),
                                         ("pred. epistemic", "epistemic")]):
            _uncertainty_map(fig, bot[j], maps[key][row], name, key != "epistemic")
    _finish(axes, fig, title)
    return _save(fig, out)


def comparison_figure(maps: dict[str, dict[str, np.ndarray]], image: int, out: str | Path, title: str = "") -> Path:
    """One test image across methods: a first row with the image, each grader's mask and the true data
    uncertainty, then one row per method (`maps`: row label -> that method's `panel_maps`, all holding `image`)
    with its samples, predicted aleatoric and predicted epistemic map. The aleatoric maps share the true map's
    fixed scale; the epistemic maps share one scale across the methods (the largest value of any of them), so
    a method with less epistemic uncertainty looks darker instead of being stretched to its own maximum."""
    plt = pyplot()
    rows = {label: int(np.flatnonzero(m["index"] == image)[0]) for label, m in maps.items()}
    first = next(iter(maps.values()))
    at = rows[next(iter(maps))]
    graders = first["masks"].shape[1]
    shown = max(m["samples"].shape[1] for m in maps.values())
    cols = max(graders + 2, shown + 2)
    fig, axes = plt.subplots(1 + len(maps), cols, figsize=(1.9 * cols, 1.9 * (1 + len(maps)) + 0.3), squeeze=False,
                             layout="constrained")
    top = axes[0]
    top[0].imshow(first["image"][at], cmap="gray")
    top[0].set_title(f"image {image}", fontsize=8)
    for j in range(graders):
        top[j + 1].imshow(first["masks"][at, j], cmap="gray", vmin=0, vmax=1)
        top[j + 1].set_title(f"grader {j + 1}", fontsize=8)
    _uncertainty_map(fig, top[cols - 1], first["true"][at], str(first["true_label"]), True)
    epistemic_max = max(max(float(m["epistemic"][r].max()) for m, r in zip(maps.values(), rows.values())), 1e-6)
    for axis_row, (label, m) in zip(axes[1:], maps.items()):
        r = rows[label]
        for j, s in enumerate(m["sample_ids"]):
            axis_row[j].imshow(m["samples"][r, j], cmap="gray", vmin=0, vmax=1)
            axis_row[j].set_title(f"sample {s + 1}", fontsize=8)
        axis_row[0].set_ylabel(label, fontsize=9)
        _uncertainty_map(fig, axis_row[cols - 2], m["aleatoric"][r], "pred. aleatoric", True)
        _uncertainty_map(fig, axis_row[cols - 1], m["epistemic"][r], "pred. epistemic", False, epistemic_max)
    _finish(axes, fig, title)
    return _save(fig, out)


def _uncertainty_map(fig, ax, grid: np.ndarray, name: str, bernoulli_scale: bool, vmax: float | None = None) -> None:
    """A magma map with its colour bar: on 0..1/4 (a Bernoulli variance is at most 1/4, so one fixed scale
    makes maps comparable across images and methods) or, for epistemic maps (~1e-3..1e-6), on 0..`vmax`
    (default the map's own maximum) with each tick labelled in full ("%.2g": 0.25, 5e-05) rather than with an
    offset above the bar."""
    top = 0.25 if bernoulli_scale else (vmax if vmax is not None else max(float(grid.max()), 1e-6))
    im = ax.imshow(grid, cmap="magma", vmin=0, vmax=top)
    ax.set_title(name, fontsize=7)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, format=None if bernoulli_scale else "%.2g")
    bar.ax.tick_params(labelsize=5)


def _finish(axes, fig, title: str) -> None:
    """No ticks (the row labels set with `set_ylabel` stay); axes without an image hidden; the title."""
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)


def curves_figure(history: list[dict[str, float]], out: str | Path, title: str = "") -> Path:
    """Loss terms (log scale) and validation metrics against epoch."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = [row["epoch"] for row in history]
    for key in ("train/total", "train/recon", "train/kl_z", "train/kl_w", "train/supervised"):
        values = [row.get(key, np.nan) for row in history]
        if np.nanmax(np.abs(values), initial=0) > 0:
            left.plot(epochs, np.maximum(values, 1e-8), label=key.split("/")[1])
    left.set_yscale("log")
    left.set_xlabel("epoch")
    left.set_title("training loss terms (per batch)")
    left.legend(fontsize=7)
    # A retrain (train.train_on_val) reports its validation images as trainval/: they are training images.
    prefix = "trainval/" if any("trainval/ged" in row for row in history) else "val/"
    for key in (f"{prefix}ged", f"{prefix}ncc", f"{prefix}ncc_true", f"{prefix}diversity"):
        points = [(row["epoch"], row[key]) for row in history if key in row]
        if points:
            right.plot(*zip(*points), marker="o", ms=3, label=key)
    right.set_xlabel("epoch")
    right.set_title("validation" if prefix == "val/" else "validation images (trained on: train+val)")
    right.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, out)


def reliability_figure(tables: dict[str, dict], out: str | Path) -> Path:
    """Reliability diagram: for each method name -> EvalResult.reliability table (+ "ece")."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--", label="perfect")
    for name, table in tables.items():
        pred, obs = np.asarray(table["mean_pred"]), np.asarray(table["mean_obs"])
        keep = np.isfinite(pred) & np.isfinite(obs)
        label = f"{name} (ECE {table['ece']:.3f})" if "ece" in table else name
        ax.plot(pred[keep], obs[keep], marker="o", ms=3, label=label)
    ax.set_xlabel("predicted p_m")
    ax.set_ylabel("graders' mean p_g")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    pyplot().close(fig)
    return out
