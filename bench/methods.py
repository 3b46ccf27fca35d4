"""Training step of every method side by side at equal model size: loss + backward + Adam, one row per method.

All methods share the U-Net size (filters, convs per block) of the config; each adds its own parts (Prob. U-Net:
prior, posterior and fcomb; supervised: weight noise and the S prior draws of p_m; Kendall & Gal: two heads and
T logit draws; SSN: three heads and M low-rank Gaussian draws; PHiSeg: its latent hierarchy; soft-label: one head),
at each method's default own settings. The steps are timed interleaved (A B C ... then reversed) so that load
from other jobs hits all alike; the ratio column is the median over rounds of (method / supervised).

Usage: python bench/methods.py [--quick] [--reps N] [--no-record]
  default: configs/synthetic-study.yaml's model (filters 8-16-32) at 32x32 and 64x64, batch 32, D = 4 graders;
  --quick: 32x32 only, 3 rounds.
"""

from __future__ import annotations

from pathlib import Path

import torch

import benchlib
from supuq.config import load_config
from supuq.models.registry import METHODS, build_model

ROOT = Path(__file__).resolve().parent.parent
B, D = 32, 4


def step_fn(method: str, size: int):
    """A closure doing one training step of `method` on a fixed random batch of B images of size x size."""
    cfg = load_config(ROOT / "configs" / "synthetic-study.yaml").with_method(method)
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.loss).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.rand(B, 1, size, size)
    masks = (torch.rand(B, D, size, size) > 0.5).to(torch.uint8)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model.loss(x, masks, n_train=1000).total.backward()
        opt.step()

    return step


def main() -> None:
    p = benchlib.parser(__doc__, "32x32 only, 3 rounds")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default 5, --quick 3)")
    args = benchlib.parse(p)
    reps = args.reps or (3 if args.quick else 5)
    rows = []
    for size in (32,) if args.quick else (32, 64):
        times = benchlib.interleaved({m: step_fn(m, size) for m in METHODS}, reps=reps)
        for m in METHODS:
            ratios = benchlib.paired_ratios(times[m], times["supervised"])  # method / supervised, per round
            rows.append([f"{size}x{size}", m, benchlib.median(times[m]) * 1000, f"{benchlib.median(ratios):.2f}x"])
    body = (f"Training step (loss + backward + Adam), B={B}, D={D}, filters "
            f"{list(load_config(ROOT / 'configs' / 'synthetic-study.yaml').model.num_filters)}, each method's default "
            f"own settings; {reps} interleaved rounds after 1 warm-up, medians.\n\n"
            + benchlib.table(["size", "method", "ms per step", "time / supervised"], rows))
    benchlib.report("bench/methods.py" + (" --quick" if args.quick else ""), body, record=not args.no_record)


if __name__ == "__main__":
    main()
