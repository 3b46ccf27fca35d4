"""Shared helpers for the benchmarks in bench/: machine header, interleaved timing, tables, RESULTS.md.

Lives in a sub-package so that the Makefile's `for script in bench/*.py` loop does not run it. Scripts are run
as `python bench/<name>.py`, which puts bench/ first on sys.path, so `import benchlib` works without install.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent.parent / "RESULTS.md"


def machine() -> str:
    """One line: date, `uname -m`, nproc, torch version and threads (and the CUDA device if any)."""
    parts = [
        _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        f"machine {platform.machine()}",
        f"nproc {os.cpu_count()}",
        f"torch {torch.__version__}",
        f"threads {torch.get_num_threads()}",
    ]
    for var in ("THP_MEM_ALLOC_ENABLE", "OMP_WAIT_POLICY", "MALLOC_MMAP_THRESHOLD_", "BENCH_MMAP_THRESHOLD"):
        if os.environ.get(var):
            parts.append(f"{var}={os.environ[var]}")
    if THREADS_NOTE[0]:
        parts.append(THREADS_NOTE[0])
    try:
        parts.append(f"load avg {os.getloadavg()[0]:.2f}")
    except OSError:
        pass
    if torch.cuda.is_available():
        parts.append(f"cuda {torch.cuda.get_device_name()}")
    return ", ".join(parts)


def parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
    """A benchmark script's argument parser: its docstring's first line, --quick (what it means differs by
    script: `quick_help`) and the common --threads / --no-record / --mmap-threshold."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--quick", action="store_true", help=quick_help)
    add_common_args(p)
    return p


def parse(p: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse the command line and apply the common arguments (threads, allocator)."""
    args = p.parse_args(argv)
    apply_common_args(args)
    return args


def add_common_args(parser) -> None:
    """--threads and --no-record, shared by every script."""
    parser.add_argument("--threads", default="auto",
                        help="torch threads: a number, or auto (default): all cores, but 1 when other processes "
                             "already keep more than half a core busy (two OpenMP threads then wait on each other "
                             "and a step can take 5-10x longer)")
    parser.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    parser.add_argument("--mmap-threshold", action="store_true",
                        help="raise glibc's mmap threshold to 1 GiB first (mallopt), so large CPU tensors are reused "
                             "from the heap instead of fresh, page-faulted mmaps (see README)")


THREADS_NOTE = [""]


def raise_mmap_threshold(nbytes: int = 2**30) -> bool:
    """mallopt(M_MMAP_THRESHOLD, nbytes) on glibc: allocations below it come from the heap and freed blocks are
    reused, instead of each large tensor being a fresh mmap that the kernel page-faults in and unmaps on free.
    Affects allocations made afterwards; returns False where it is not available (not glibc)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(-3, ctypes.c_int(nbytes)))  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):
        return False
    if ok:
        os.environ["BENCH_MMAP_THRESHOLD"] = str(nbytes)  # recorded in the header line
    return ok


def apply_common_args(args) -> None:
    if getattr(args, "mmap_threshold", False) and not raise_mmap_threshold():
        print("mallopt(M_MMAP_THRESHOLD) not available here; running with the default allocator", flush=True)
    if args.threads == "auto":
        others = busy_fraction(1.0) * (os.cpu_count() or 1)
        if others > 0.5 and (os.cpu_count() or 1) <= 4:
            torch.set_num_threads(1)
            THREADS_NOTE[0] = f"threads auto -> 1 (other processes used {others:.1f} cores at the start)"
        else:
            THREADS_NOTE[0] = f"threads auto -> {torch.get_num_threads()} (machine idle at the start)"
    else:
        torch.set_num_threads(int(args.threads))
        THREADS_NOTE[0] = f"threads {args.threads} (given)"
    print(THREADS_NOTE[0], flush=True)


def sync(device: torch.device | str | None = None) -> None:
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        torch.cuda.synchronize()


def _cpu_times() -> tuple[int, int] | None:
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return idle, sum(fields)


_WAIT_BUDGET = [float(os.environ.get("BENCH_WAIT_BUDGET", "20"))]


def wait_for_quiet(max_wait: float = 5.0, window: float = 0.25, idle_needed: float = 0.8) -> float:
    """Wait (at most `max_wait` s) until the machine's CPUs were >= `idle_needed` idle over a `window`.

    On a shared 2-core machine another job's process makes torch's 2 OpenMP threads wait for each other and a
    step can take several times longer; waiting for a quiet moment before each timed call removes most of that
    noise. The waits of a whole run share a budget (BENCH_WAIT_BUDGET seconds, default 20): on a machine that is
    never quiet the script stops waiting rather than taking forever. With one torch thread there is nothing to
    wait for (no thread waits on another) and it returns at once. Returns the seconds waited."""
    if _WAIT_BUDGET[0] <= 0 or torch.get_num_threads() == 1:
        return 0.0
    start = time.perf_counter()
    while True:
        a = _cpu_times()
        if a is None:
            return 0.0
        time.sleep(window)
        b = _cpu_times()
        busy_total = b[1] - a[1]
        idle = (b[0] - a[0]) / busy_total if busy_total > 0 else 1.0
        waited = time.perf_counter() - start
        if idle >= idle_needed or waited >= max_wait or waited >= _WAIT_BUDGET[0]:
            _WAIT_BUDGET[0] -= waited
            return waited


def busy_fraction(window: float = 1.0) -> float:
    """Fraction of the machine's CPU time used (by anyone, including this process) over `window` seconds."""
    a = _cpu_times()
    time.sleep(window)
    b = _cpu_times()
    if a is None or b is None or b[1] == a[1]:
        return float("nan")
    return 1.0 - (b[0] - a[0]) / (b[1] - a[1])


def interleaved(
    contenders: dict[str, Callable[[], object]], reps: int, warmup: int = 1, device: str = "cpu", quiet: bool = True
) -> dict[str, list[float]]:
    """Time each contender `reps` times, alternating them (A B A B ...) after `warmup` untimed rounds, so
    that load from other jobs on a shared machine hits all of them alike; with `quiet`, each call first waits
    (up to 10 s) for a quiet moment on the CPUs. Returns seconds per call."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for rnd in range(warmup + reps):
        # Alternate the order each round too, so neither contender always runs right after the other.
        names = list(contenders) if rnd % 2 == 0 else list(reversed(contenders))
        for name in names:
            gc.collect()
            if quiet:
                wait_for_quiet()
            sync(device)
            t0 = time.perf_counter()
            contenders[name]()
            sync(device)
            dt = time.perf_counter() - t0
            if rnd >= warmup:
                times[name].append(dt)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratios(slow: Sequence[float], fast: Sequence[float]) -> list[float]:
    """Ratio of the i-th slow time to the i-th fast time (same round, so same machine load)."""
    return [s / f for s, f in zip(slow, fast)]


def matmul_gflops(n: int = 2048, reps: int = 5, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """Achieved GFLOP/s of an n x n x n matmul (2 n^3 flops), best of `reps`: the practical ceiling."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    out = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        out.append(time.perf_counter() - t0)
    return 2 * n**3 / min(out) / 1e9


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-markdown table (also readable on a terminal)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def report(title: str, body: str, record: bool = True) -> None:
    """Print `body` under a header line and append it as a dated section to bench/RESULTS.md."""
    header = f"## {title}\n\n{machine()}\n"
    text = f"{header}\n{body.rstrip()}\n"
    print(text)
    if record:
        new = not RESULTS.exists()
        with RESULTS.open("a") as fh:
            if new:
                fh.write("# Benchmark results\n\nAppended by the scripts in bench/ (see bench/README.md); newest last.\n\n")
            fh.write(text + "\n")
