"""Match torch's intra-op threads to physical cores: hyper-threads only contend for the same
memory bandwidth and vector units, which batch-1 decoding is bound by."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def physical_cores() -> int:
    """Distinct (package, core) pairs among the CPUs this process may run on."""
    try:
        allowed = os.sched_getaffinity(0)
    except AttributeError:
        allowed = set(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add(
                (topo.joinpath("physical_package_id").read_text().strip(), topo.joinpath("core_id").read_text().strip())
            )
        except OSError:
            return max(1, len(allowed))
    return max(1, len(cores))


def use_physical_cores() -> int:
    """Set torch's thread count (unless DEMI_THREADS or OMP_NUM_THREADS says otherwise)."""
    wanted = os.environ.get("DEMI_THREADS") or os.environ.get("OMP_NUM_THREADS")
    n = int(wanted) if wanted and wanted.isdigit() and int(wanted) > 0 else physical_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
