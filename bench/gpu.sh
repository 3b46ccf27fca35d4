#!/usr/bin/env bash
# One prepared run for a lent GPU (finishes in < 8 minutes): the paper-size training step in fp32 / TF32 / bf16
# autocast / channels_last / torch.compile, the 50-sample evaluation of 2,000 test images, and achieved TFLOP/s
# against the card's measured matmul rate. The table goes to stdout and to $OUT/gpu_results.md when OUT is set.
#
#   bench/gpu.sh                 # everything (about 3-6 minutes on an H100/H200-class card)
#   bench/gpu.sh --skip-compile  # without the torch.compile variants (their compilation takes most of the time)
#   bench/gpu.sh --tiny          # CPU smoke run of the same code in seconds
#
# Uses the first Python whose torch sees a CUDA device: $PYTHON, .venv/bin/python, python3 (so a machine with a
# system CUDA torch works even when the project venv holds the CPU wheel). Extra arguments go to bench/gpu.py.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

pick_python() {
    for candidate in "${PYTHON:-}" .venv/bin/python python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || [ -x "$candidate" ] || continue
        if "$candidate" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
    # No CUDA anywhere: the project venv (gpu.py then says so and exits 0, or runs --tiny on the CPU).
    if [ -x .venv/bin/python ]; then echo .venv/bin/python; else echo python3; fi
}

PY=$(pick_python)
echo "python: $PY"
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# 470 s hard stop; gpu.py itself skips what is left after --budget (420 s by default) and keeps partial results.
timeout 470 "$PY" bench/gpu.py "$@"
status=$?
if [ -n "${OUT:-}" ] && [ -f "$OUT/gpu_results.md" ]; then echo "results: $OUT/gpu_results.md"; fi
exit $status
