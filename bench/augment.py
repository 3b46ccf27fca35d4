"""Elastic augmentation: what kornia's own elastic transform costs in a training step. `supuq.augment.Augmenter`
(kornia's AugmentationSequential with RandomElasticTransform, image bilinear + 4 masks nearest, whole batch on the
device) side by side with the training step it precedes, and for scale the hand-written field supuq used before
(benchlib/reference.py: the same field, smoothed by two matrix products; same outputs) and a per-sample CPU
implementation with scipy `map_coordinates`.

All draw the same kind of field: uniform noise in [-1, 1] per pixel and axis, smoothed by a Gaussian (kernel 31,
sigma 6, zero padding, as kornia does), scaled by alpha = 1 in normalised coordinates (W/2 pixels per unit with
align_corners=False); the image is resampled bilinear and its 4 masks nearest, edge values outside the image.
The scipy version loops over the samples in Python (numpy field, gaussian_filter, map_coordinates per channel),
as an augmentation inside a per-item Dataset would.

Share of a step = t_aug / (t_aug + t_step) with t_step = ProbUNet.loss + backward + Adam on the same batch size,
timed in the same run: 128x128 with the paper's model (batch 32) and 64x64 with the synthetic model (batch 32).

Usage: python bench/augment.py [--quick] [--no-record]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, map_coordinates

import benchlib
from benchlib.reference import direct_elastic_augmenter
from step import make_batch, step_fn
from supuq.augment import Augmenter
from supuq.config import AugmentConfig, LossConfig, ModelConfig, load_config
from supuq.models import ProbUNet

ROOT = Path(__file__).resolve().parent.parent
CFG = AugmentConfig(elastic=True, flip=False)  # kernel 31, sigma 6, alpha 1 (the config defaults)


def scipy_elastic(images: np.ndarray, masks: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample elastic deformation: images [B,1,H,W] float32, masks [B,D,H,W] float32 {0,1}."""
    b, _, h, w = images.shape
    radius = CFG.kernel_size // 2
    truncate = radius / CFG.sigma  # scipy's kernel radius = int(truncate * sigma + 0.5) = 15, as kornia's 31 taps
    yy, xx = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
    out_i, out_m = np.empty_like(images), np.empty_like(masks)
    for i in range(b):
        noise = rng.uniform(-1.0, 1.0, size=(2, h, w)).astype(np.float32)
        field = gaussian_filter(noise, sigma=(0, CFG.sigma, CFG.sigma), truncate=truncate, mode="constant")
        coords = np.stack([yy + field[1] * CFG.alpha * h / 2, xx + field[0] * CFG.alpha * w / 2])
        out_i[i, 0] = map_coordinates(images[i, 0], coords, order=1, mode="nearest")
        for j in range(masks.shape[1]):
            out_m[i, j] = map_coordinates(masks[i, j], coords, order=0, mode="nearest")
    return out_i, out_m


KORNIA = "supuq Augmenter (kornia RandomElasticTransform)"
DIRECT = "hand-written field (before)"
SCIPY = "scipy map_coordinates (per sample)"
STEP = "training step (loss+backward+Adam)"


def bench_case(name, model_cfg, loss_cfg, b, size, reps, warmup):
    torch.manual_seed(0)
    x, masks = make_batch(b, size)
    aug = Augmenter(CFG)
    direct = direct_elastic_augmenter(CFG)
    torch.manual_seed(1)
    k = aug(x, masks)
    torch.manual_seed(1)
    d = direct(x, masks)
    same = (float((k[0] - d[0]).abs().max()), int((k[1] != d[1]).sum()))
    xn, mn = x.numpy(), masks.numpy()
    rng = np.random.default_rng(0)
    model = ProbUNet(model_cfg, loss_cfg)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    step = step_fn(model, opt, ProbUNet.loss, x, masks, 1000)
    contenders = {
        KORNIA: lambda: aug(x, masks),
        DIRECT: lambda: direct(x, masks),
        SCIPY: lambda: scipy_elastic(xn, mn, rng),
        STEP: step,
    }
    # Warm-up: each augmentation once, and the step once on 4 images (a paper-size step takes tens of seconds).
    for key, fn in contenders.items():
        if key == STEP:
            step_fn(model, opt, ProbUNet.loss, x[:4], masks[:4], 1000)()
        else:
            fn()
    times = benchlib.interleaved(contenders, reps=reps, warmup=0)
    t_step = times[STEP]
    rows = []
    for key in (KORNIA, DIRECT, SCIPY):
        t = times[key]
        share = benchlib.median([a / (a + s) for a, s in zip(t, t_step)])
        rows.append((name, key, b, benchlib.median(t) * 1e3,
                     benchlib.median(benchlib.paired_ratios(t, times[KORNIA])), share * 100))
    rows.append((name, STEP, b, benchlib.median(t_step) * 1e3, "", ""))
    return rows, same


def displacement_check(size=128, b=16):
    """Mean displacement length (px) of kornia's field (an image holding each pixel's own x, y, warped by the
    Augmenter: each output pixel then holds its source position) and of the scipy field."""
    torch.manual_seed(0)
    axis = torch.arange(size, dtype=torch.float32)
    ys, xs = torch.meshgrid(axis, axis, indexing="ij")
    coords = torch.stack((xs, ys)).expand(b, 2, size, size).contiguous()
    warped, _ = Augmenter(CFG)(coords, torch.zeros(b, 1, size, size))
    inner = slice(CFG.kernel_size // 2, size - CFG.kernel_size // 2)  # away from the border clamp
    ours = float((warped - coords)[..., inner, inner].pow(2).sum(1).sqrt().mean())
    rng = np.random.default_rng(0)
    lengths = []
    for _ in range(b):
        noise = rng.uniform(-1.0, 1.0, size=(2, size, size))
        field = gaussian_filter(noise, sigma=(0, CFG.sigma, CFG.sigma), truncate=(CFG.kernel_size // 2) / CFG.sigma,
                                mode="constant") * CFG.alpha * size / 2
        lengths.append(np.sqrt((field**2).sum(0))[inner, inner].mean())
    return ours, float(np.mean(lengths))


def main(argv=None) -> int:
    args = benchlib.parse(benchlib.parser(__doc__, "128x128 step at batch 8 (share estimated at that batch)"), argv)
    syn = load_config(ROOT / "configs" / "synthetic.yaml")
    cases = [
        ("128x128 paper model", ModelConfig(), LossConfig(), 8 if args.quick else 32, 128, 2, 0),
        ("64x64 synthetic model", syn.model, syn.loss, 32, 64, 5, 0),
    ]
    rows, same = [], []
    head = ["case", "what", "B", "ms", "time / kornia", "share of step %"]
    for case in cases:
        case_rows, diff = bench_case(*case)
        rows += case_rows
        same.append(f"{case[0]}: image max |diff| {diff[0]:.1e}, mask pixels differing {diff[1]}")
        print(benchlib.table(head, case_rows), flush=True)
    k, s = displacement_check()
    b128 = cases[0][3]
    body = (
        f"Elastic deformation (kernel {CFG.kernel_size}, sigma {CFG.sigma}, alpha {CFG.alpha}) of B images + 4 masks "
        f"each (128x128: B={b128}; 64x64: B=32); interleaved with a training step of the same batch, medians "
        "(128x128: 2 rounds; 64x64: 5; after one warm-up call each, the step's on 4 images); share = t_aug / "
        "(t_aug + t_step), median over rounds. Target: share <= 10%.\n\n"
        + benchlib.table(head, rows)
        + f"\n\nMean displacement length at 128x128 (16 fields, inner pixels): kornia {k:.2f} px, scipy {s:.2f} px "
        "(same kind of field).\n"
        + "kornia (Augmenter) vs the hand-written field, same seed: " + "; ".join(same)
    )
    benchlib.report("bench/augment.py" + (" --quick" if args.quick else ""), body, record=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
