"""GPU measurements for a lent accelerator (run through bench/gpu.sh; must finish in < 8 minutes).

1. Matmul rate of the card (fp32, TF32, bf16; 8192^3) as the practical ceiling.
2. The paper-size training step (128x128, filters 32-64-128-192, batch 32, D=4): ProbUNet.loss + backward + Adam
   in fp32, fp32 with TF32, bf16 autocast, channels_last (+ bf16), and torch.compile (+ bf16 + channels_last);
   plus the per-grader formulation of bench/step.py in fp32 for the ratio. ms/step, img/s, achieved TFLOP/s
   (FLOPs from FlopCounterMode) against the matmul rate of the same precision.
3. The 50-sample evaluation (M=5 x K=10) of 2,000 synthetic 128x128 test images with supuq.evaluate (sampling,
   GED, NCC, calibration), at eval batch 32 and 64; sampling alone for the split.

Writes a markdown table to stdout and to $OUT/gpu_results.md when OUT is set (rewritten after every section,
so a run cut short still leaves what it measured). Without a CUDA device it prints a message and exits 0, unless
--tiny: a CPU smoke run at 32x32 with tiny filters that takes seconds and exercises every code path (torch.compile
with the aot_eager backend there, as inductor's C++ build alone takes minutes on a small CPU).

Usage: python bench/gpu.py [--tiny] [--budget SECONDS] [--skip-compile]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import benchlib  # noqa: E402
from step import D, make_batch, per_grader_loss  # noqa: E402
from supuq.config import LossConfig, ModelConfig  # noqa: E402
from supuq.data.synthetic import generate  # noqa: E402
from supuq.evaluate import evaluate_indices, predict_samples  # noqa: E402
from supuq.models import ProbUNet  # noqa: E402

SKIP_MESSAGE = "no CUDA device; skipping (use --tiny for a CPU smoke run)"


class Report:
    """Accumulates markdown sections; prints each and rewrites $OUT/gpu_results.md after every section."""

    def __init__(self, header: str, out: Path | None):
        self.parts = [header]
        self.out = out

    def add(self, text: str) -> None:
        print(text + "\n", flush=True)
        self.parts.append(text)
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text("\n\n".join(self.parts) + "\n")

    def text(self) -> str:
        return "\n\n".join(self.parts[1:])


def timed(fn, device, reps: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    benchlib.sync(device)
    times = []
    for _ in range(reps):
        benchlib.sync(device)
        t0 = time.perf_counter()
        fn()
        benchlib.sync(device)
        times.append(time.perf_counter() - t0)
    return times


def matmul_rates(device, n: int) -> dict[str, float]:
    """TFLOP/s of an n^3 matmul in fp32 (TF32 off), TF32 and bf16 (best of a few: the card's practical ceiling)."""
    rates = {}
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                                  ("bf16", torch.bfloat16, False)):
            if device.type == "cpu" and name == "tf32":
                continue
            torch.backends.cuda.matmul.allow_tf32 = tf32
            a = torch.randn(n, n, device=device, dtype=dtype)
            b = torch.randn(n, n, device=device, dtype=dtype)
            t = min(timed(lambda: a @ b, device, reps=5, warmup=2))
            rates[name] = 2 * n**3 / t / 1e12
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return rates


@contextlib.contextmanager
def tf32(enabled: bool):
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def step_variants(device, model_cfg, loss_cfg, b, size, reps, warmup, compile_backend, budget_end):
    """(name, precision key, ms/step, img/s, GFLOP/step, TFLOP/s) per variant."""
    x0, m0 = make_batch(b, size)
    x0, m0 = x0.to(device), m0.to(device)
    torch.manual_seed(0)
    reference = ProbUNet(model_cfg, loss_cfg).to(device)
    with FlopCounterMode(display=False) as counter:
        reference.loss(x0, m0, 1000).total.backward()
    flops = counter.get_total_flops()
    with FlopCounterMode(display=False) as counter:
        per_grader_loss(reference, x0, m0, 1000).total.backward()
    flops_pg = counter.get_total_flops()
    bf16 = lambda: torch.autocast(device.type, dtype=torch.bfloat16)  # noqa: E731
    none = contextlib.nullcontext
    variants = [
        # name, precision, autocast, channels_last, compiled, tf32, loss function
        ("fp32", "fp32", none, False, False, False, "fused"),
        ("fp32, per-grader loop (bench/step.py)", "fp32", none, False, False, False, "per-grader"),
        ("fp32 + TF32", "tf32", none, False, False, True, "fused"),
        ("bf16 autocast", "bf16", bf16, False, False, False, "fused"),
        ("channels_last fp32", "fp32", none, True, False, False, "fused"),
        ("channels_last + bf16", "bf16", bf16, True, False, False, "fused"),
        ("torch.compile fp32", "fp32", none, False, True, False, "fused"),
        ("torch.compile + bf16 + channels_last", "bf16", bf16, True, True, False, "fused"),
    ]
    rows = []
    for name, precision, autocast, channels_last, compiled, allow_tf32, kind in variants:
        if compile_backend is None and compiled:
            continue
        if time.perf_counter() > budget_end:
            rows.append((name, "skipped (time budget)", "", "", "", ""))
            continue
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = ProbUNet(model_cfg, loss_cfg).to(device)
        model.load_state_dict(reference.state_dict())
        model = model.to(memory_format=fmt)
        x = x0.contiguous(memory_format=fmt)
        opt = torch.optim.Adam(model.parameters(), 1e-4)
        loss_fn = per_grader_loss if kind == "per-grader" else ProbUNet.loss

        def total(x, m, model=model, loss_fn=loss_fn):
            return loss_fn(model, x, m, 1000).total

        if compiled:
            total = torch.compile(total, backend=compile_backend)

        def step(total=total, opt=opt, autocast=autocast, x=x):
            with autocast():
                loss = total(x, m0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        with tf32(allow_tf32):
            t_compile = time.perf_counter()
            step()  # first call (compiles when compiled)
            benchlib.sync(device)
            t_compile = time.perf_counter() - t_compile
            times = timed(step, device, reps=reps, warmup=warmup)
        t = benchlib.median(times)
        f = flops_pg if kind == "per-grader" else flops
        note = f" (first call {t_compile:.0f} s)" if compiled else ""
        rows.append((name + note, precision, t * 1e3, b / t, f / 1e9, f / t / 1e12))
        del model, opt
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def evaluation(device, model_cfg, n, size, batches, budget_end):
    """Seconds for evaluate_indices on n synthetic images (50 samples each) at each eval batch size, and for the
    sampling alone."""
    t0 = time.perf_counter()
    data = generate(n, size=size, graders=D, seed=0)
    gen = time.perf_counter() - t0
    torch.manual_seed(0)
    model = ProbUNet(model_cfg).to(device).eval()
    index = np.arange(n)
    rows = []
    for batch in batches:
        if time.perf_counter() > budget_end:
            rows.append((f"evaluate_indices, batch {batch}", "skipped (time budget)", "", "", ""))
            continue
        evaluate_indices(model, data, index[:batch], 5, 10, batch, device)  # warm-up
        benchlib.sync(device)
        t = time.perf_counter()
        result = evaluate_indices(model, data, index, 5, 10, batch, device)
        benchlib.sync(device)
        t = time.perf_counter() - t
        rows.append((f"evaluate_indices (sample + GED/NCC/calibration), batch {batch}", n, t, n / t,
                     f"GED {result.ged:.3f}"))

        def sample_all():
            with torch.no_grad():
                for s in range(0, n, batch):
                    x = torch.as_tensor(data.images[s : s + batch], device=device)
                    predict_samples(model, x, 5, 10)

        if time.perf_counter() < budget_end:
            ts = timed(sample_all, device, reps=1, warmup=0)
            rows.append((f"sampling only (ProbUNet.sample), batch {batch}", n, ts[0], n / ts[0], ""))
    return rows, gen


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="CPU smoke run in seconds (tiny sizes)")
    p.add_argument("--budget", type=float, default=420.0, help="seconds after which remaining parts are skipped")
    p.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile variants")
    p.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = p.parse_args(argv)
    if not args.tiny and not torch.cuda.is_available():
        print(SKIP_MESSAGE)
        return 0
    if args.tiny and not torch.cuda.is_available():
        benchlib.apply_common_args(argparse.Namespace(threads="auto"))  # 1 thread on a busy shared CPU
    start = time.perf_counter()
    budget_end = start + args.budget
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.tiny:
        model_cfg = ModelConfig(num_filters=(4, 8), convs_per_block=1, latent_dim=2, fcomb_convs=2)
        size, b, reps, warmup, n_eval, batches, mm_n = 32, 4, 2, 1, 16, (8,), 256
        backend = None if args.skip_compile else "aot_eager"
    else:
        model_cfg = ModelConfig()  # the paper's: filters 32-64-128-192, 3 convs per block, fcomb 4
        size, b, reps, warmup, n_eval, batches, mm_n = 128, 32, 10, 3, 2000, (32, 64), 8192
        backend = None if args.skip_compile else "inductor"
    loss_cfg = LossConfig()
    out_dir = os.environ.get("OUT")
    out = Path(out_dir) / "gpu_results.md" if out_dir else None
    header = f"## bench/gpu.py{' --tiny' if args.tiny else ''}\n\n{benchlib.machine()}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        header += f", {props.name}, {props.total_memory / 2**30:.0f} GiB"
    report = Report(header, out)
    print(header + "\n", flush=True)

    rates = matmul_rates(device, mm_n)
    report.add(f"Matmul {mm_n}^3 (best of 5): " + ", ".join(f"{k} {v:.1f} TFLOP/s" for k, v in rates.items()))

    rows = step_variants(device, model_cfg, loss_cfg, b, size, reps, warmup, backend, budget_end)
    table_rows = []
    for name, precision, ms, ips, gflop, tflops in rows:
        if isinstance(ms, str) or ms == "":
            table_rows.append((name, precision, ms, ips, gflop, tflops, ""))
            continue
        ceiling = rates.get(precision, rates.get("fp32"))
        table_rows.append((name, precision, ms, ips, gflop, tflops, f"{100 * tflops / ceiling:.0f}%"))
    fused = {r[0]: r[2] for r in rows if not isinstance(r[2], str)}
    ratio = ""
    if "fp32" in fused and "fp32, per-grader loop (bench/step.py)" in fused:
        ratio = f"\n\nper-grader / ProbUNet.loss at fp32: {fused['fp32, per-grader loop (bench/step.py)'] / fused['fp32']:.2f}x"
    report.add(
        f"Training step {size}x{size}, batch {b}, D={D} (ProbUNet.loss + backward + Adam; {warmup} warm-up + {reps} "
        "timed steps after the first call, median). fp32 rows: TF32 off for matmuls and cuDNN convolutions; "
        "'of matmul' compares with the matmul rate of the same precision:\n\n"
        + benchlib.table(["variant", "precision", "ms/step", "img/s", "GFLOP/step", "TFLOP/s", "of matmul"],
                         table_rows)
        + ratio
    )

    eval_rows, gen = evaluation(device, model_cfg, n_eval, size, batches, budget_end)
    report.add(
        f"Evaluation, 50 samples (M=5 x K=10) per image, {n_eval} synthetic {size}x{size} images (untrained model; "
        f"data generated in {gen:.0f} s, not counted):\n\n"
        + benchlib.table(["what", "images", "s", "img/s", ""], eval_rows)
    )
    report.add(f"Total wall time {time.perf_counter() - start:.0f} s.")
    if not args.tiny and not args.no_record:
        with benchlib.RESULTS.open("a") as fh:
            fh.write(header + "\n\n" + report.text() + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
