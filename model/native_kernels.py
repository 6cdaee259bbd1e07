"""An optional native int8 GEMV, compiled on first use with the system C compiler.

torch's weight-only int8 kernel is compute-bound on CPUs (it widens int8 to fp32, 16 lanes at a
time); on CPUs with AVX-512 FP16 a 32-lane fp16 kernel decodes 1.3x faster at lower error. It is
a small C file built with `cc -O3 -march=native -fopenmp` into the user cache directory and
called through ctypes: no torch extension build, about a second to compile, once. Anything
missing (compiler, CPU feature, `DEMI_NATIVE=0`) means torch's kernel is used instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import torch

log = logging.getLogger("demi.model")
SOURCE = Path(__file__).parent / "native" / "gemv_int8_f16.c"
_FLAGS = ("avx512f", "avx512bw", "avx512_fp16")


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@lru_cache(maxsize=1)
def int8_gemv() -> ctypes.CDLL | None:
    """The compiled kernel library, or None where it cannot be used here."""
    if os.environ.get("DEMI_NATIVE", "1") in ("0", "false", "no"):
        return None
    if not set(_FLAGS) <= _cpu_flags():
        return None
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc or not SOURCE.is_file():
        return None
    import platformdirs

    digest = hashlib.sha256(SOURCE.read_bytes() + cc.encode()).hexdigest()[:16]
    lib = Path(platformdirs.user_cache_dir("demi")) / "native" / f"gemv_int8_f16-{digest}.so"
    try:
        if not lib.is_file():
            lib.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
                out = Path(tmp) / lib.name
                subprocess.run([cc, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-o", str(out),
                                str(SOURCE)], check=True, capture_output=True, timeout=120)
                os.replace(out, lib)
        handle = ctypes.CDLL(str(lib))
        handle.demi_linear_int8.argtypes = [ctypes.c_void_p, ctypes.c_int] + [ctypes.c_void_p] * 4 + \
            [ctypes.c_int] + [ctypes.c_int64] * 2
        handle.demi_linear_int8.restype = None
        handle.demi_set_threads.argtypes = [ctypes.c_int]
        handle.demi_set_threads(torch.get_num_threads())  # this library has its own OpenMP pool
        return handle
    except (OSError, subprocess.SubprocessError) as exc:
        log.info("native int8 kernel unavailable (%s); using torch's", exc)
        return None


def usable(q: torch.Tensor) -> bool:
    """Whether the native kernel takes this weight (CPU, contiguous, K a multiple of 64)."""
    return q.device.type == "cpu" and q.shape[1] % 64 == 0 and q.is_contiguous() and int8_gemv() is not None


_KINDS = {torch.float32: 0, torch.bfloat16: 1}


def linear_int8(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """y [.., N] = x [.., K] @ (q * scale).T + bias for one row (x.numel() == K), in x's dtype, in
    one native call (int8_gemv() must not be None). The kernel reads and writes fp32 or bf16;
    other dtypes go through fp32. `scale` and `bias` are fp32."""
    kind = _KINDS.get(x.dtype)
    row = (x if kind is not None else x.float()).contiguous()
    y = torch.empty(*x.shape[:-1], q.shape[0], dtype=row.dtype)
    k = _KINDS[row.dtype]
    int8_gemv().demi_linear_int8(row.data_ptr(), k, q.data_ptr(), scale.data_ptr(),
                                 None if bias is None else bias.data_ptr(), y.data_ptr(), k,
                                 q.shape[0], q.shape[1])
    return y if kind is not None else y.to(x.dtype)
