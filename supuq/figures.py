"""Figures a clinician-researcher looks at (matplotlib, Agg, PNG).

- `uncertainty_figure`: per chosen test image, as in Fig. 1-2 of Hu et al.: row 1 the image and each
  grader's mask; row 2 model samples; row 3 true data uncertainty (grader variance, or the generator's
  p*(1-p*) when known), predicted aleatoric and predicted epistemic, the two data-uncertainty maps on one
  colour scale.
- `curves_figure`: training loss terms and validation metrics per epoch.
- `reliability_figure`: p_m against p_g per bin, with the ECE.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .data.types import MultiGraderSet
from .evaluate import predict_samples
from .models.registry import sampling_grid
from .sampling import binarize, decompose, grader_variance


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed), imported only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def uncertainty_figure(
    model: torch.nn.Module,
    data: MultiGraderSet,
    indices: np.ndarray,
    out: str | Path,
    weight_samples: int = 5,
    latent_samples: int = 10,
    shown_samples: int = 4,
    title: str = "",
) -> Path:
    """One block of three rows per image in `indices`; returns the PNG path. The weight_samples *
    latent_samples samples per image are drawn on the method's grid (`sampling_grid`), as in `evaluate`."""
    plt = pyplot()
    device = next(model.parameters()).device
    weight_samples, latent_samples = sampling_grid(model.model_cfg, weight_samples * latent_samples, weight_samples)
    x = torch.as_tensor(np.asarray(data.images[indices]), dtype=torch.float32, device=device)
    masks = torch.as_tensor(np.asarray(data.masks[indices]), dtype=torch.float32)
    samples = binarize(predict_samples(model, x, weight_samples, latent_samples)).cpu()
    parts = decompose(samples)
    if data.prob is not None:
        p_true = torch.as_tensor(np.asarray(data.prob[indices]))
        true_unc, true_label = p_true * (1 - p_true), "true p*(1-p*)"
    else:
        true_unc, true_label = grader_variance(masks), "grader variance"
    graders = masks.shape[1]
    cols = max(graders + 1, shown_samples, 3)
    # constrained layout keeps the title, the panel titles and the colour bars apart (tight_layout let the title
    # run into the first row and a colour bar's "1e-6" offset into the panel title beside it)
    fig, axes = plt.subplots(3 * len(indices), cols, figsize=(1.7 * cols, 1.6 * 3 * len(indices) + 0.3),
                             squeeze=False, layout="constrained")
    flat_samples = samples.flatten(1, 2)
    vmax = 0.25  # Bernoulli variance is at most 1/4: one fixed scale makes maps comparable across images
    for row, idx in enumerate(indices):
        top, mid, bot = axes[3 * row], axes[3 * row + 1], axes[3 * row + 2]
        top[0].imshow(x[row, 0].cpu(), cmap="gray")
        top[0].set_title(f"image {int(idx)}", fontsize=7)
        for j in range(graders):
            top[j + 1].imshow(masks[row, j], cmap="gray", vmin=0, vmax=1)
            top[j + 1].set_title(f"grader {j + 1}", fontsize=7)
        picks = np.linspace(0, flat_samples.shape[1] - 1, shown_samples).round().astype(int)
        for j, s in enumerate(picks):
            mid[j].imshow(flat_samples[row, s].float(), cmap="gray", vmin=0, vmax=1)
            mid[j].set_title(f"sample {s + 1}", fontsize=7)
        for j, (name, grid, scale) in enumerate(
            [(true_label, true_unc[row], vmax), ("pred. aleatoric", parts.aleatoric[row], vmax),
             ("pred. epistemic", parts.epistemic[row], None)]
        ):
            im = bot[j].imshow(grid, cmap="magma", vmin=0, vmax=scale if scale else max(float(grid.max()), 1e-6))
            bot[j].set_title(name, fontsize=7)
            # epistemic maps are ~1e-3..1e-6: label each tick in full rather than with an offset above the bar
            bar = fig.colorbar(im, ax=bot[j], fraction=0.046, pad=0.02, format=None if scale else "%.0e")
            bar.ax.tick_params(labelsize=5)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
        if not ax.images:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, out)


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
