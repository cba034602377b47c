"""Where tensors run: one device rule and one autocast rule for every stage."""
from __future__ import annotations

import contextlib
import logging
import os
import time

from .errors import ECGShardError

log = logging.getLogger(__name__)


def resolve_device(device="auto"):
    """``auto``: CUDA when present, else CPU; anything else as given, if this machine has it."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device)
    except RuntimeError:
        raise ECGShardError(f"--device {device!r} is not a device (auto, cpu, cuda, cuda:N, "
                            f"mps)") from None
    if kind.type == "cuda" and (not torch.cuda.is_available() or
                                (kind.index or 0) >= torch.cuda.device_count()):
        raise ECGShardError(f"--device {device}: this machine has "
                            f"{torch.cuda.device_count()} CUDA devices visible (torch "
                            f"{torch.__version__}, CUDA build {torch.version.cuda}); use "
                            f"--device cpu or auto")
    if kind.type == "mps" and not torch.backends.mps.is_available():
        raise ECGShardError("--device mps: MPS is not available here; use --device cpu or auto")
    return device


def autocast(device, enabled=True):
    """bf16 autocast on CUDA; a no-op context elsewhere (CPU autocast would slow convs)."""
    import torch

    if enabled and torch.device(device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def cpu_budget():
    """The cores this process may use: its CPU affinity, capped by a cgroup (container) CPU
    quota, which ``os.cpu_count`` and torch's own default both ignore."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return max(1, cores or 1)


def _cgroup_quota():
    """The cores a cgroup (v2) CPU quota grants this container, or None where none limits it."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else int(quota) / int(period)


def choose_threads(requested=0):
    """torch's intra-op threads: ``requested``, else the cores this process may use less
    those other jobs keep busy now (``busy_cores``). Threads beyond the free cores spin
    against the other jobs: a fit beside two busy processes on 2 cores ran 1.3-2.2x faster
    with 1 thread than with 2 (docs/performance.md, benchmarks/bench_threads.py)."""
    if requested:
        return requested, "as asked (--threads)"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():      # torchrun sets it, or the user
        return int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    cores, busy = cpu_budget(), busy_cores()
    threads = max(1, min(cores, int(cores - busy + 0.5)))
    return threads, f"{cores} cores, {busy:.1f} kept busy by other jobs"


def busy_cores(window=0.2):
    """How many of this process's cores other jobs keep busy, sampled over ``window`` s before
    this process does any work: the CPU time of this container's cgroup where a quota limits
    it, else the busy share of the CPUs this process may run on (/proc/stat). A load average
    would count this user's previous commands too. 0 where neither can be read."""
    limited = _cgroup_quota() is not None

    def sample():
        if limited:
            try:
                with open("/sys/fs/cgroup/cpu.stat") as f:
                    stat = dict(line.split() for line in f)
                return "cgroup", float(stat["usage_usec"]) / 1e6, 0.0
            except (OSError, ValueError, KeyError):
                pass                                        # read the CPUs instead
        mine = {f"cpu{i}" for i in os.sched_getaffinity(0)}
        busy = total = 0.0
        with open("/proc/stat") as f:
            for line in f:
                name, *ticks = line.split()
                if name in mine:
                    ticks = [float(t) for t in ticks[:8]]
                    total += sum(ticks)
                    busy += sum(ticks) - ticks[3] - ticks[4]        # less idle and iowait
        return "proc", busy, total

    try:
        kind, busy0, total0 = sample()
        time.sleep(window)
        _, busy1, total1 = sample()
    except (OSError, ValueError, AttributeError):
        return 0.0
    if kind == "cgroup":
        return (busy1 - busy0) / window
    share = (busy1 - busy0) / (total1 - total0) if total1 > total0 else 0.0
    return share * len(os.sched_getaffinity(0))


def set_threads(requested=0):
    """Set the thread count every stage's torch and BLAS use, before torch is imported (the
    CLI does this once, at start); returns it."""
    threads, why = choose_threads(requested)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    log.debug("torch threads: %d (%s)", threads, why)
    return threads
