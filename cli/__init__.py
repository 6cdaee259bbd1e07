"""Demi: a local, private coding assistant."""

import os as _os

__version__ = "0.1.0"

# OpenMP threads that spin while waiting collapse when another process shares the cores (a
# compiler, a browser): measured 2 threads 16-70x slower than 1 thread under one competing
# process. Sleeping waiters keep decode steady. Must be set before torch loads its OpenMP
# runtime, which is why it lives in the package root; the user's own setting wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
