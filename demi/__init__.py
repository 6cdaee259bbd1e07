"""Demi: a local, private coding assistant."""

import os as _os

__version__ = "0.1.0"

# How OpenMP threads wait between parallel regions (decode runs hundreds of short ones per token).
# Spinning forever (libgomp's ACTIVE) collapses when another process takes a core: measured 16-70x
# slower. Sleeping at once (PASSIVE) survives that but costs a quiet machine a third of its int8
# decode speed (22.6 against 30.0 tok/s, Qwen2.5-Coder-0.5B shape). A short bounded spin keeps the
# quiet speed; with a CPU-bound competitor on a core, inference drops the thread that shares it
# (model/threads.py), and then is as fast as PASSIVE there (1.01-1.02x, benchmarks/contention.py).
# Must be set before torch loads its OpenMP runtime, which is why it
# lives in the package root; the user's own OMP_WAIT_POLICY / GOMP_SPINCOUNT win.
if "OMP_WAIT_POLICY" not in _os.environ:
    _os.environ["OMP_WAIT_POLICY"] = "ACTIVE"
    _os.environ.setdefault("GOMP_SPINCOUNT", "20000")

# DEMI_KERNEL=<path> forces one kernel family (model/native_kernels.py) to measure it on a machine
# that has a faster one. Demi's native kernels honour it themselves; torch's own (ATen's vector
# code, oneDNN and MKL, which run the fp32/bf16 matmuls) read their instruction-set caps when torch
# loads, so they are capped here, before that. The user's own settings win.
_ISA_CAPS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avxvnni": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2_VNNI", "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
    "avx512": {
        "ATEN_CPU_CAPABILITY": "avx512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
    },
    "avx512vnni": {
        "ATEN_CPU_CAPABILITY": "avx512",
        "ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI",
        "MKL_ENABLE_INSTRUCTIONS": "AVX512",
    },
    "generic": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
}
for _name, _value in _ISA_CAPS.get(_os.environ.get("DEMI_KERNEL", "").strip().lower(), {}).items():
    _os.environ.setdefault(_name, _value)
