"""Shared helpers for the benchmarks: machine description, peak-memory probes, JSON output.

Every benchmark prints one JSON object with ``machine`` (CPU model, cores, flags that matter,
memory, torch/python versions, threads, git commit, load average at start and end) and
``command`` (the exact command line that reproduces it).  Timings on a shared machine are noisy,
so benchmarks measure baseline and candidate *interleaved* in the same run and report ratios.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]


def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    info = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    return info


def machine_info() -> dict[str, Any]:
    import torch

    cpu = _lscpu()
    flags = set(cpu.get("Flags", "").split())
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", None
    return {
        "cpu": cpu.get("Model name", platform.processor()),
        "cpus": cpu.get("CPU(s)"),
        "threads_per_core": cpu.get("Thread(s) per core"),
        "l2": cpu.get("L2 cache"),
        "l3": cpu.get("L3 cache"),
        "hypervisor": cpu.get("Hypervisor vendor"),
        "isa": sorted(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16") if f in flags),
        "mem_total_gib": mem_total,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "git_commit": commit,
        "git_dirty": dirty,
        "loadavg": os.getloadavg(),
    }


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def rss_bytes() -> int:
    """Current resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def hwm_bytes() -> int:
    """Peak resident set size since the process started (or the last :func:`reset_peak`)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux ``clear_refs`` 5).  False when not permitted."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_extra(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn`` and return (result, peak RSS above the RSS before the call, bytes).

    Large temporaries are mmap'ed by the allocator and returned on free, so RSS tracks the live
    scratch memory; the peak is read from VmHWM after resetting it.
    """
    import gc

    gc.collect()
    base = rss_bytes()
    ok = reset_peak()
    result = fn()
    peak = hwm_bytes() if ok else rss_bytes()
    return result, max(0, peak - base)


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def emit(result: dict[str, Any], out: str | None = None) -> None:
    text = json.dumps(result, indent=2, default=str)
    print(text, flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
