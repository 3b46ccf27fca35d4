"""Measure what cluster/SCALING.md builds on: one training step of the paper-size model at 128x128.

Step = `ProbUNet.loss` (D=4 graders, S=4 weight-noise draws for p_m, gamma 100) + backward + Adam, the paper's
model (filters 32-64-128-192, 3 convs per block, latent 6, fcomb 4 convs, weight noise on), batch 32 by default.

Also reports the memory a step needs on any device, counted rather than guessed: parameters (x4 with gradients
and Adam's two moments) and the bytes of every tensor autograd saves for the backward pass (via
`torch.autograd.graph.saved_tensors_hooks`), which is what dominates GPU memory in training. With a CUDA device
(`--device cuda`) it also reports `torch.cuda.max_memory_allocated`, the number to trust when you have a GPU.

Usage: python cluster/measure_step.py [--batch 32] [--size 128] [--reps 2] [--device cpu|cuda] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--reps", type=int, default=2, help="timed steps after one warm-up step")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)

    from supuq.config import LossConfig, ModelConfig
    from supuq.models import ProbUNet

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = ProbUNet(ModelConfig(), LossConfig()).to(device)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, args.size, args.size, generator=g).to(device)
    field = torch.nn.functional.avg_pool2d(torch.rand(args.batch, 1, args.size, args.size, generator=g), 9, 1, 4)
    masks = (field > torch.linspace(0.52, 0.55, 4).view(1, 4, 1, 1)).float().to(device)
    n_params = sum(p.numel() for p in model.parameters())

    saved = {"bytes": 0}

    def pack(t):
        saved["bytes"] += t.numel() * t.element_size()
        return t

    def step(count_saved: bool = False):
        if count_saved:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                terms = model.loss(x, masks, 1000)
        else:
            terms = model.loss(x, masks, 1000)
        opt.zero_grad(set_to_none=True)
        terms.total.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(terms.total.detach())

    t0 = time.perf_counter()
    step(count_saved=True)  # warm-up, and the saved-activation count (upper bound: shared tensors count twice)
    warmup = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times, cpu = [], []
    load_before = os.getloadavg()[0]
    for _ in range(args.reps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    out = {
        "machine": f"{platform.machine()}, nproc {os.cpu_count()}, torch {torch.__version__}, "
                   f"threads {torch.get_num_threads()}, device {device}"
                   + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""),
        "batch": args.batch, "size": args.size, "params": n_params,
        "warmup_s": round(warmup, 2), "step_s": [round(t, 2) for t in times],
        "step_s_median": round(sorted(times)[len(times) // 2], 2),
        # CPU seconds of this process per step: on a machine shared with other jobs the wall time above grows
        # with their load, the CPU time much less; cpu_s / threads is the step time of an idle machine if the
        # threads kept busy (a lower bound).
        "step_cpu_s": [round(t, 2) for t in cpu],
        "load_avg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "param_state_mib": round(n_params * 4 * 4 / 2**20, 1),  # weights + grads + Adam m, v (fp32)
        "saved_activations_mib": round(saved["bytes"] / 2**20, 1),
    }
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:24s} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
