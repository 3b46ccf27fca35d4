"""Drawing the evaluation samples: `Fcomb.forward` (first 1x1 conv split: feature part once per weight sample's
feature map, latent part once per sample) vs `Fcomb.forward_tiled` (z tiled over H x W and concatenated, every
conv on all M*K full maps), inside `ProbUNet.sample` under torch.no_grad, M=5 weight x K=10 latent samples.

Cases: 256 test images at 64x64 with configs/synthetic.yaml's model (eval batches of 32), and 8 images at
128x128 with the paper's model (filters 32-64-128-192; batches of 8, as 50 tiled maps of 38 channels at 128x128
take ~1 GB per batch image group). Also what `ProbUNet.sample` was before (bench/benchlib/reference.py): the conv2d
form of the split with all B*M*K maps decoded in one call, and the current matmul form without the CPU pieces
(`supuq.models.pieces.CPU_PIECE_ELEMENTS`), to separate the two changes.

Usage: python bench/sample.py [--quick] [--no-record]
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

import benchlib
from benchlib.reference import fcomb_forward_conv2d
from supuq.config import ModelConfig, load_config
from supuq.models import ProbUNet
from supuq.models import pieces

ROOT = Path(__file__).resolve().parent.parent
M, K = 5, 10


def draw_all(model, images, batch):
    """Logits for every image, batch by batch, as evaluation does (no autograd)."""
    with torch.no_grad():
        for start in range(0, images.shape[0], batch):
            model.sample(images[start : start + batch], weight_samples=M, latent_samples=K)


def unchunked(fn):
    """Run fn with every map decoded in one fcomb call, and the U-Net on the whole batch (as before the CPU
    pieces)."""

    def run():
        old = pieces.CPU_PIECE_ELEMENTS
        pieces.CPU_PIECE_ELEMENTS = 2**62
        try:
            fn()
        finally:
            pieces.CPU_PIECE_ELEMENTS = old

    return run


def variant(model, forward):
    """A copy of `model` whose fcomb uses `forward` (same weights)."""
    clone = ProbUNet(model_cfg=model._bench_cfg)
    clone.load_state_dict(model.state_dict())
    clone.fcomb.forward = types.MethodType(forward, clone.fcomb)
    return clone.eval()


def bench_case(name, model_cfg, n, size, batch, reps):
    torch.manual_seed(0)
    model = ProbUNet(model_cfg).eval()
    model._bench_cfg = model_cfg
    images = torch.rand(n, 1, size, size)
    tiled = variant(model, type(model.fcomb).forward_tiled)
    before = variant(model, fcomb_forward_conv2d)
    # Same logits from the two forms (same weights, same random draws).
    x = images[:2]
    torch.manual_seed(1)
    with torch.no_grad():
        a = model.sample(x, M, K)
    torch.manual_seed(1)
    with torch.no_grad():
        b = tiled.sample(x, M, K)
    err = float((a - b).abs().max())
    contenders = {
        "split, channel-first matmul, in pieces (supuq)": lambda: draw_all(model, images, batch),
        "tiled + concat (forward_tiled), in pieces": lambda: draw_all(tiled, images, batch),
        "split, matmul, one call": unchunked(lambda: draw_all(model, images, batch)),
        "split, conv2d, one call (before)": unchunked(lambda: draw_all(before, images, batch)),
    }
    times = benchlib.interleaved(contenders, reps=reps, warmup=1)
    ours = times["split, channel-first matmul, in pieces (supuq)"]
    rows = []
    for key, t in times.items():
        rows.append((name, key, n, benchlib.median(t), n * M * K / benchlib.median(t),
                     benchlib.median(benchlib.paired_ratios(t, ours))))
    return rows, err


def main(argv=None) -> int:
    args = benchlib.parse(benchlib.parser(__doc__, "64 images at 64x64, 8 at 128x128"), argv)
    syn = load_config(ROOT / "configs" / "synthetic.yaml")
    cases = [
        ("64x64 synthetic model", syn.model, 64 if args.quick else 256, 64, 32, 3),
        ("128x128 paper model", ModelConfig(), 8, 128, 8, 3 if args.quick else 5),
    ]
    rows, errs = [], []
    for case in cases:
        case_rows, err = bench_case(*case)
        rows += case_rows
        errs.append(f"{case[0]}: {err:.1e}")
        print(benchlib.table(["case", "fcomb", "images", "s", "samples/s", "time / supuq"], case_rows), flush=True)
    body = (
        f"Sampling M={M} x K={K} = 50 logit maps per image with ProbUNet.sample under no_grad, batch by batch; "
        "interleaved, medians of 3 (128x128: 5) rounds; 'time / supuq' is the median per-round ratio (> 1: slower "
        "than supuq). 'in pieces': on the CPU, fcomb decodes a few feature maps per call (~8 MB activations).\n\n"
        + benchlib.table(["case", "fcomb", "images", "s", "samples/s", "time / supuq"], rows)
        + "\n\nmax |logits(split) - logits(tiled)| with the same random draws: " + "; ".join(errs)
    )
    benchlib.report("bench/sample.py" + (" --quick" if args.quick else ""), body, record=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
