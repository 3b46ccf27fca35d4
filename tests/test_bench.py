"""The GPU benchmark script, as far as a machine without a GPU can run it: bench/gpu.sh --tiny runs the same code
on the CPU at toy sizes (the task that lends a GPU runs it for real), and without --tiny it skips cleanly."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from .conftest import ROOT


def run_script(args: list[str], out_dir) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out_dir), "PYTHON": sys.executable}
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)


def test_gpu_script_tiny_runs_every_section_on_the_cpu(tmp_path):
    done = run_script(["--tiny", "--no-record"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    table = (tmp_path / "gpu_results.md").read_text()
    for row in ("fp32", "bf16", "channels_last", "torch.compile", "per-grader / ProbUNet.loss", "evaluate_indices",
                "50 samples"):
        assert row in table, row
    assert "Total wall time" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device: the full run would start")
def test_gpu_script_without_a_gpu_says_so_and_exits_0(tmp_path):
    done = run_script(["--no-record"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no CUDA device; skipping" in done.stdout
