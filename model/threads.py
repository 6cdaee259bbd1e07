"""Match torch's intra-op threads to physical cores: hyper-threads only contend for the same
memory bandwidth and vector units, which batch-1 decoding is bound by."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from demi.model.quantize import DECODE_ROWS

log = logging.getLogger("demi.model")


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


def use_physical_cores(adapt: bool = True) -> int:
    """Set torch's thread count (unless DEMI_THREADS or OMP_NUM_THREADS says otherwise); with `adapt`,
    inference then runs on fewer while other processes take cores (`GOVERNOR`), unless the user set
    the count (training keeps its count: adapt=False)."""
    wanted = os.environ.get("DEMI_THREADS") or os.environ.get("OMP_NUM_THREADS")
    pinned = bool(wanted and wanted.isdigit() and int(wanted) > 0)
    n = int(wanted) if pinned and wanted else physical_cores()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    GOVERNOR.govern(n if adapt and not pinned else 0)
    return n


# While other processes take cores (an editor, a build), a thread that shares a core with them is
# descheduled for whole time slices, and every one of the hundreds of parallel regions a token needs
# waits for it at its barrier: measured on a 2-core AMD EPYC with one core busy, the 0.5B shape's int8
# decode fell from 62-73 to 10.7 tok/s on 2 threads, where 1 thread kept 44. So inference re-reads
# the machine's load every ADAPT_INTERVAL_S (from /proc/stat, in the model's own loop) and runs on
# the cores the others leave free (a core counts as taken from a quarter of it in use).
ADAPT_INTERVAL_S = 0.25
ADAPT_BUSY_CORE = 0.75  # others' use in cores is rounded up from a quarter


class ThreadGovernor:
    """The torch/OpenMP thread count of inference, between 1 and the cores chosen at load, following
    what other processes leave free. Off when the user set DEMI_THREADS or OMP_NUM_THREADS, or with
    DEMI_ADAPT_THREADS=0 (benchmarks of a fixed count)."""

    def __init__(self) -> None:
        self.most = 0  # 0: not governing
        self.wanted = 0  # the count for decode-sized passes (0: not decided yet)
        self.mark: tuple[int, int, float] | None = None
        self.marked_at = 0.0
        self.changes = 0

    def govern(self, most: int) -> None:
        """Govern up to `most` threads (the count use_physical_cores chose)."""
        self.most = most if os.environ.get("DEMI_ADAPT_THREADS", "1").lower() not in ("0", "false", "no") else 0
        self.mark, self.marked_at = None, 0.0
        self.wanted = 0

    def tick(self, rows: int = 1) -> None:
        """Called on the model's thread before a forward pass of `rows` rows: cheap (a clock read)
        except every ADAPT_INTERVAL_S, when it reads the load. Only decode-sized passes (at most
        DECODE_ROWS rows) run on fewer threads: their kernels are native, each output row computed by
        one thread in one order, so the numbers do not depend on the count; a prompt's torch matmuls
        (whose sums may split differently with another count) keep every thread, so the same prompt
        gives the same numbers loaded or quiet (two processes comparing answers agree)."""
        if self.most <= 1 or torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            return
        if rows > DECODE_ROWS:
            if torch.get_num_threads() != self.most:
                torch.set_num_threads(self.most)
            return
        if self.wanted and torch.get_num_threads() != self.wanted:
            torch.set_num_threads(self.wanted)
        now = time.monotonic()
        if now - self.marked_at < ADAPT_INTERVAL_S:
            return
        from demi.model.kernel_plan import cpu_mark, others_share  # (late: it loads the native kernels' module)

        # since the last look (over an idle spell too: a fair guess of what comes); without the time a
        # hypervisor stole, which comes in bursts that fewer threads would not dodge
        share = others_share(self.mark, steal=False)
        self.mark, self.marked_at = cpu_mark(steal=False), now
        if share is None:
            return
        cpus = os.cpu_count() or 1  # (/proc/stat's share is of all of them)
        taken = int(share * cpus + ADAPT_BUSY_CORE)
        wanted = max(1, min(self.most, cpus - taken))
        self.wanted = wanted
        if wanted != torch.get_num_threads():
            log.debug("threads %d -> %d: other processes took %.2f of %d CPUs", torch.get_num_threads(), wanted,
                      share * cpus, cpus)  # fmt: skip
            torch.set_num_threads(wanted)  # also the calling thread's OpenMP count, which the native kernels use
            self.changes += 1


GOVERNOR = ThreadGovernor()
