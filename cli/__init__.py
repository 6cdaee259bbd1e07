"""Demi: a local, private coding assistant."""

import os as _os

__version__ = "0.1.0"

# How OpenMP threads wait between parallel regions (decode runs hundreds of short ones per token).
# Spinning forever (libgomp's ACTIVE) collapses when another process takes a core: measured 16-70x
# slower. Sleeping at once (PASSIVE) survives that but costs a quiet machine a third of its int8
# decode speed (22.6 against 30.0 tok/s, Qwen2.5-Coder-0.5B shape). A short bounded spin keeps the
# quiet speed and, with one CPU-bound competitor, is 1.7x slower than PASSIVE instead of 16-70x
# (9.5 against 16.5 tok/s). Must be set before torch loads its OpenMP runtime, which is why it
# lives in the package root; the user's own OMP_WAIT_POLICY / GOMP_SPINCOUNT win.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
    _os.environ.setdefault("GOMP_SPINCOUNT", "20000")
