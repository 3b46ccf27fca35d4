"""The calibration probes and budget table of docs/calibration.md: what moves the aleatoric map's NCC against the
synthetic generator's true variance p*(1-p*), measured with supuq's own `supuq train` (no tracking), 2 seeds each.

Usage (from the project root, venv active or SUPUQ pointing at the CLI; ~25 min on 2 CPU cores):
    python study/calibration.py [--rows all|probes|budget] [--ours KEY=VALUE ...] [--out docs/calibration.md]
Each row is one variant (a method and config overrides) on configs/synthetic.yaml's data and model; the budget
rows change only the number of images and epochs, for the soft-label reference and ours with `--ours`' overrides
(default gamma 1000 with 16 supervision samples, the best probe). Runs go to runs/calibration/<row>/seed<k>/ (replaced on rerun: this script made them), their
test metrics to runs/calibration/results.json, from which the table is written (rows not rerun keep their numbers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RUNS = ROOT / "runs" / "calibration"
SUPUQ = os.environ.get("SUPUQ", str(ROOT / ".venv" / "bin" / "supuq"))
SEEDS = (0, 1)

# (row name, method, overrides): the candidates of issue 18 at the demo budget (800 images, 20 epochs), then the
# budget (images x epochs) for the soft-label reference and the supervised method's best candidate.
PROBES = [
    ("ours, gamma 10 (the demo config until 2026-12)", "supervised", ("loss.gamma=10",)),
    ("ours, gamma 1000", "supervised", ("loss.gamma=1000",)),
    ("ours, gamma 1000, 16 supervision samples", "supervised", ("loss.gamma=1000", "loss.supervision_samples=16")),
    ("ours, gamma 10000", "supervised", ("loss.gamma=10000",)),
    ("ours, gamma 1000, 16 supervision samples, latent_dim 12", "supervised",
     ("loss.gamma=1000", "loss.supervision_samples=16", "model.latent_dim=12")),
    ("Prob. U-Net (gamma 0)", "kohl", ()),
    ("soft-label U-Net", "soft_label", ()),
]
BUDGET = [("800 images, 60 epochs", ("train.epochs=60",)),
          ("2400 images, 20 epochs", ("data.synthetic.n=2400",))]
COLUMNS = (("ncc_true", "NCC vs p*(1-p*)"), ("ncc_true_binary", "same, binary samples"),
           ("ncc", "NCC vs grader var."), ("ged", "GED"), ("hm_iou_16", "HM-IoU_16"))


def slug(name: str) -> str:
    """A row's folder name under runs/calibration/."""
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def run_one(name: str, method: str, overrides: tuple[str, ...], seed: int, keep: bool = False) -> dict:
    """Train and test one (variant, seed) with `supuq train`; with `keep`, a finished run's eval.json is reused."""
    out = RUNS / slug(name) / f"seed{seed}"
    if keep and (out / "eval.json").exists():
        return json.loads((out / "eval.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [SUPUQ, "train", "--config", "configs/synthetic.yaml", "--method", method, "--seed", str(seed),
           "--no-track", "--out", str(out), *[a for o in overrides for a in ("--set", o)]]
    # One thread per run: two runs at once with two OpenMP threads each on 2 cores wait on each other (bench/README).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
    return json.loads((out / "eval.json").read_text())


def cell(values: list[float], digits: int = 3) -> str:
    arr = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    return "n/a" if not len(arr) else f"{arr.mean():.{digits}f} ± {arr.std(ddof=1) if len(arr) > 1 else 0:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/calibration.md")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rows", choices=("all", "probes", "budget"), default="all")
    parser.add_argument("--keep", action="store_true", help="reuse runs that finished (their eval.json)")
    parser.add_argument("--ours", nargs="*", default=["loss.gamma=1000", "loss.supervision_samples=16"],
                        help="ours' overrides in the budget rows (default: the best probe)")
    args = parser.parse_args()
    ours = tuple(args.ours)  # at the demo budget (800 images, 20 epochs) both are probe rows already
    budget = []
    for label, extra in BUDGET:
        budget += [(f"soft-label U-Net, {label}", "soft_label", extra),
                   (f"ours ({', '.join(ours) or 'the demo config'}), {label}", "supervised", (*ours, *extra))]
    chosen = {"all": PROBES + budget, "probes": PROBES, "budget": budget}[args.rows]
    store = RUNS / "results.json"
    stored = json.loads(store.read_text()) if store.exists() else {}
    started = time.time()
    jobs = [(row, seed) for row in chosen for seed in SEEDS]
    trained = sum(not (args.keep and (RUNS / slug(row[0]) / f"seed{seed}" / "eval.json").exists()) for row, seed in jobs)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda job: run_one(*job[0], job[1], keep=args.keep), jobs))
    for row, _ in jobs:
        stored[row[0]] = []
    for (row, _), res in zip(jobs, results):
        stored[row[0]].append({k: res.get(k) for k, _ in COLUMNS})
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(json.dumps(stored, indent=1))
    minutes = (time.time() - started) / 60
    lines = ["| variant | " + " | ".join(c for _, c in COLUMNS) + " |", "|---|" + "---|" * len(COLUMNS)]
    for name in stored:
        res = stored[name]
        lines.append(f"| {name} | " + " | ".join(cell([r.get(k) for r in res], 4 if k == "ged" else 3)
                                                for k, _ in COLUMNS) + " |")
    table = "\n".join(lines)
    out = ROOT / args.out
    text = out.read_text() if out.exists() else ""
    start, end = "<!-- calibration table: begin -->", "<!-- calibration table: end -->"
    block = (f"{start}\n{table}\n\n(mean ± std over seeds {', '.join(map(str, SEEDS))}; the last call trained {trained} "
             f"runs in {minutes:.0f} min on {os.cpu_count()} CPU cores)\n{end}")
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text + "\n" + block + "\n"
    out.write_text(text)
    print(table)


if __name__ == "__main__":
    main()
