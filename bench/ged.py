"""GED: `supuq.metrics.ged` (batched Gram matrices) vs the double loop over pairs of the authors' released code.

The loop follows shihux/supervised_uq's ged.py with numpy per pair: intersection = (a & b).sum(), union =
(a | b).sum(), d = 1 - inter / union, d(empty, empty) = 0, V-statistic self terms. It is run on a subset of the
images and extrapolated per image (its cost does not depend on the image content); the vectorised `ged` runs on
all N. Data: N=200 synthetic lesion images at 128x128 (supuq.data.synthetic), D=4 graders, S=50 samples drawn as
fresh grader masks of the same images (realistic lesion sparsity); plus dense random masks (50% foreground, the
worst case for the union compaction in `ged`). Also the peak memory of `ged` for N=50, 200, 800 (fresh
subprocess each, ru_maxrss over the resident inputs).

Usage: python bench/ged.py [--quick] [--no-record]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import benchlib
from benchlib.reference import ged_dense
from supuq.data.synthetic import generate, sample_graders
from supuq.metrics import ged

S, D, SIZE = 50, 4, 128


def loop_ged(samples: np.ndarray, annotations: np.ndarray) -> float:
    """One image, samples [S,H,W] bool, annotations [D,H,W] bool: the authors' double loops, numpy per pair."""

    def dist(a, b):
        inter = (a & b).sum()
        union = (a | b).sum()
        return 0.0 if union == 0 else 1.0 - inter / union

    s, d = len(samples), len(annotations)
    sy = sum(dist(samples[i], annotations[j]) for i in range(s) for j in range(d))
    ss = sum(dist(samples[i], samples[j]) for i in range(s) for j in range(s))
    yy = sum(dist(annotations[i], annotations[j]) for i in range(d) for j in range(d))
    return 2 * sy / (s * d) - ss / s**2 - yy / d**2


def synthetic_sets(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Annotations of n synthetic 128x128 images and S samples per image (re-drawn grader masks)."""
    data = generate(n, size=SIZE, graders=D, seed=0)
    draws = -(-S // D)
    redrawn = sample_graders(n, size=SIZE, graders=D, seed=0, draws=draws, draw_seed=1)  # [draws,N,D,H,W]
    samples = redrawn.transpose(1, 0, 2, 3, 4).reshape(n, draws * D, SIZE, SIZE)[:, :S]
    return torch.from_numpy(np.ascontiguousarray(samples)).bool(), torch.from_numpy(data.masks).bool()


def dense_sets(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, S, SIZE, SIZE, generator=g) < 0.5, torch.rand(n, D, SIZE, SIZE, generator=g) < 0.5


def time_case(label, samples, annotations, loop_images, reps):
    n = samples.shape[0]
    sn, yn = samples.numpy(), annotations.numpy()
    subset = np.linspace(0, n - 1, loop_images).round().astype(int)
    # Values: the loop against ged on the subset.
    ref = np.array([loop_ged(sn[i], yn[i]) for i in subset])
    vec = ged(samples, annotations).numpy()
    err = float(np.abs(vec[subset] - ref).max())
    # Same counts; the float64 means may sum in another order (contiguous vs strided blocks): ~1e-16.
    before_after = float((ged_dense(samples, annotations) - ged(samples, annotations)).abs().max())
    assert before_after < 1e-12, f"before/after differ by {before_after:.1e}"

    def one_thread():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            ged(samples, annotations)
        finally:
            torch.set_num_threads(threads)

    contenders = {
        "loop (numpy per pair)": lambda: [loop_ged(sn[i], yn[i]) for i in subset],
        "supuq ged": lambda: ged(samples, annotations),
        "supuq ged, 1 thread": one_thread,
        "dense Gram (before)": lambda: ged_dense(samples, annotations),
    }
    if torch.get_num_threads() == 1:
        del contenders["supuq ged, 1 thread"]
    times = benchlib.interleaved(contenders, reps=reps, warmup=1)
    per_image = {k: [t / (len(subset) if k.startswith("loop") else n) for t in v] for k, v in times.items()}
    loop = per_image["loop (numpy per pair)"]
    rows = []
    for key, values in per_image.items():
        ratio = benchlib.median(benchlib.paired_ratios(loop, values))
        images = len(subset) if key.startswith("loop") else n
        rows.append((label, key, images, benchlib.median(values) * 1e3, ratio))
    return rows, err, benchlib.median(benchlib.paired_ratios(loop, per_image["supuq ged"]))


CHILD = r"""
import json, sys, time
import numpy as np, torch
from supuq.metrics import ged
d = sys.argv[1]
s = torch.from_numpy(np.load(d + "/s.npy")); y = torch.from_numpy(np.load(d + "/y.npy"))
def status(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))
try:  # reset the peak-RSS high-water mark to the current RSS (Linux >= 4.0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    reset = True
except OSError:
    reset = False
before = status("VmRSS:")
hwm_before = status("VmHWM:")
t = time.perf_counter(); out = ged(s, y); dt = time.perf_counter() - t
print(json.dumps({"n": s.shape[0], "inputs": s.numel() + y.numel(), "before": before, "hwm_before": hwm_before,
                  "peak": status("VmHWM:"), "reset": reset, "seconds": dt, "mean": float(out.mean())}))
"""


def memory_rows(samples, annotations, sizes):
    """Peak RSS growth of one `ged` call in a fresh process with the inputs already resident. Without the
    high-water reset the import's peak could hide it, so the row says whether the reset worked."""
    rows = []
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            reps = -(-n // samples.shape[0])
            np.save(f"{tmp}/s.npy", np.concatenate([samples.numpy()] * reps)[:n])
            np.save(f"{tmp}/y.npy", np.concatenate([annotations.numpy()] * reps)[:n])
            out = subprocess.run([sys.executable, "-c", CHILD, tmp], capture_output=True, text=True, env=env)
            if out.returncode != 0:
                raise RuntimeError(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            extra = r["peak"] - max(r["before"], r["hwm_before"])
            rows.append((n, r["inputs"] / 2**20, max(extra, 0) / 2**20, "yes" if r["reset"] else "no",
                         r["seconds"] * 1e3 / n))
    return rows


def main(argv=None) -> int:
    args = benchlib.parse(benchlib.parser(__doc__, "N=64, fewer repetitions, memory at N=50,200"), argv)
    n = 64 if args.quick else 200
    reps = 3 if args.quick else 5

    t0 = time.perf_counter()
    samples, annotations = synthetic_sets(n)
    print(f"generated N={n} synthetic sets in {time.perf_counter() - t0:.1f} s; foreground "
          f"{samples.float().mean():.3f} (samples), {annotations.float().mean():.3f} (graders)", flush=True)
    rows, err, ratio = time_case("synthetic lesions", samples, annotations, 4, reps)
    dense_s, dense_y = dense_sets(32)
    dense_rows, dense_err, dense_ratio = time_case("dense random 50%", dense_s, dense_y, 2, reps)
    print(benchlib.table(["data", "method", "images", "ms/image", "speed-up vs loop"], rows + dense_rows), flush=True)
    mem = memory_rows(samples, annotations, (50, 200) if args.quick else (50, 200, 800))

    body = (
        f"GED, S={S} samples x D={D} graders, {SIZE}x{SIZE}: supuq.metrics.ged on all N={n} images (dense case: 32) "
        "vs the authors' double loop (numpy per pair) on 4 (dense: 2) images spread over the set, extrapolated per "
        "image; interleaved, medians of "
        f"{reps} rounds, speed-up = median of per-round ratios. torch threads: {torch.get_num_threads()}.\n\n"
        + benchlib.table(["data", "method", "images", "ms/image", "speed-up vs loop"], rows + dense_rows)
        + f"\n\nmax |ged - loop| on the loop's images: {err:.1e} (synthetic), {dense_err:.1e} (dense); target 1e-6.\n"
        f"Speed-up target >= 100x: synthetic {ratio:.0f}x ({'holds' if ratio >= 100 else 'does NOT hold'}), "
        f"dense worst case {dense_ratio:.0f}x ({'holds' if dense_ratio >= 100 else 'does NOT hold'}).\n\n"
        "Peak memory of ged (fresh process per N, inputs resident before the call; extra = growth of the peak RSS "
        "during ged after resetting the high-water mark):\n\n"
        + benchlib.table(["N", "inputs MiB", "extra peak MiB", "HWM reset", "ms/image"], mem)
    )
    benchlib.report("bench/ged.py" + (" --quick" if args.quick else ""), body, record=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
