"""How many CPU threads a job uses by default: the cores this process may really run on, less the ones
other work keeps busy.

torch's own default is every core of the machine, whatever the CPU affinity, the container's quota or
the other jobs running; on a small shared machine that oversubscribes the cores and a job runs several
times slower than with one thread. `num_threads=auto` (the recipes' default) asks `choose_threads`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota (`cpu.max`)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def free_cores() -> int:
    """Usable cores not already kept busy by other processes (one-minute load average), at least 1."""
    cores = usable_cores()
    try:
        load = os.getloadavg()[0]
    except OSError:
        return cores
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def choose_threads(setting: int | str | None) -> int | None:
    """The intra-op thread count for `num_threads=<setting>`: `auto` -> `free_cores()`; an int -> itself;
    null -> None (leave torch's default)."""
    if setting is None or str(setting).lower() in ("null", "none"):
        return None
    if str(setting).lower() == "auto":
        return free_cores()
    n = int(setting)
    if n < 1:
        raise ValueError(f"num_threads must be auto, null or a positive integer, got {setting!r}")
    return n


def set_threads(setting: int | str | None) -> int:
    """Apply `choose_threads(setting)` to torch; returns the thread count in effect."""
    import torch

    n = choose_threads(setting)
    if n is not None:
        torch.set_num_threads(n)
    return torch.get_num_threads()
