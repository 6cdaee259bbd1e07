"""Native int8/int4 matmul kernels for the CPU this runs on, compiled on first use.

One C file (native/qmatmul.c) holds every instruction-set path; it is built once per path with
that path's compiler flags into the user cache directory and called through ctypes: no torch
extension build, about a second to compile, once. Before a library is used it runs its own
self-check in a child process, so a CPU flag that lies (SIGILL) or a miscompiled path costs a
one-line warning and torch's kernel, never the user's process. Without a C compiler (or when the
compile fails) the library prebuilt with the package for that path is used instead, after the same
self-check, if it was built from the installed sources (native_build owns the build and its digest);
`origin` says which one loaded.

Which paths this CPU can run comes from its flags; which one is *used* is the kernel plan's job
(kernel_plan.py), which times them. `DEMI_KERNEL=<path>` forces one family (`torch` turns native
kernels off; `DEMI_NATIVE=0` does the same), for tests and for measuring a slower path on a machine
that has a faster one.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import subprocess
import sys
from contextlib import suppress
from functools import cache, lru_cache
from pathlib import Path

import torch

# The paths, their flags, the sources and the compile command have one owner, native_build (standard
# library only, so the wheel build compiles the prebuilt libraries with the very same command).
from demi.model.native_build import (
    PATH_NAMES,
    PATHS,
    KernelPath,
    compile_error,
    compile_library,
    compiler,
    find_prebuilt,
    sources_bytes,
)

log = logging.getLogger("demi.model")
QBLOCK = 32  # activation block; int8 layers need K % 32 == 0, int4 groups are multiples of it
QCHUNK = 128  # int4 weights are packed in chunks of this many (see pack_q4), the rest in blocks of 32


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (x86 `flags`, ARM `Features`)."""
    return _cpu_info()[1]


def cpu_model() -> str:
    return _cpu_info()[0] or platform.processor() or platform.machine()


@lru_cache(maxsize=1)
def _cpu_info() -> tuple[str, frozenset[str]]:
    name = ""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("flags", "Features") and not flags:
                    flags = set(value.split())
                elif key in ("model name", "Model", "CPU part") and not name:
                    name = value.strip()
    except OSError:
        pass
    if platform.machine().lower() in ("arm64",) and not flags:  # macOS on Apple Silicon: dotprod always
        flags = {"asimd", "asimddp"}
    return name, frozenset(flags)


def runnable_paths() -> list[str]:
    """The native paths this CPU claims to run, fastest first (the self-check still has a say)."""
    arch, flags = platform.machine().lower(), cpu_flags()
    return [p.name for p in PATHS if arch in p.arch and p.needs <= flags]


def forced() -> str | None:
    """The kernel family the environment forces: a path name, `torch`, or None."""
    if os.environ.get("DEMI_NATIVE", "1").lower() in ("0", "false", "no"):
        return "torch"
    value = os.environ.get("DEMI_KERNEL", "").strip().lower()
    if not value or value == "auto":
        return None
    if value != "torch" and value not in PATH_NAMES:
        log.warning("DEMI_KERNEL=%s is not a kernel family (%s, torch); ignored", value, ", ".join(PATH_NAMES))
        return None
    return value


def candidate_paths() -> list[str]:
    """The native paths the plan may use here: the forced one alone, or every runnable one."""
    f = forced()
    if f == "torch":
        return []
    runnable = runnable_paths()
    if f:
        if f not in runnable:
            log.warning("DEMI_KERNEL=%s: this CPU lacks the flags that path needs; using torch's kernels", f)
            return []
        return [f]
    return runnable


def _source_digest(cc: str, path: KernelPath) -> str:
    return hashlib.sha256(sources_bytes() + cc.encode() + " ".join(path.cflags).encode()).hexdigest()[:16]


def source_version() -> str:
    """A digest of the kernel sources, part of the plan's cache key."""
    return hashlib.sha256(sources_bytes()).hexdigest()[:12]


def _cache_dir() -> Path:
    import platformdirs

    return Path(platformdirs.user_cache_dir("demi")) / "native"


# argv: the library, then the runtimes to load first (this process's OpenMP runtime, see _runtimes)
_SELFTEST = (
    "import ctypes, sys; [ctypes.CDLL(p, mode=ctypes.RTLD_GLOBAL) for p in sys.argv[2:]]; "
    "lib = ctypes.CDLL(sys.argv[1]); sys.exit(lib.demi_selftest())"
)
_NO_COMPILER = "no C compiler"
_problems: dict[str, str] = {}
_origins: dict[str, str] = {}


def problem(name: str) -> str | None:
    """Why path `name` is unusable here (after an attempt to load it), or None."""
    return _problems.get(name)


def origin(name: str) -> str | None:
    """Where path `name`'s loaded library came from: "compiled here", "prebuilt (no C compiler)" or
    "prebuilt (compile failed: ...)"; None until it has loaded."""
    return _origins.get(name)


def _compiled(path: KernelPath) -> tuple[Path | None, str]:
    """The library compiled here for `path` (on first use, into the user cache), or None and why not."""
    cc = compiler()
    if not cc:
        return None, _NO_COMPILER
    lib = _cache_dir() / f"qmatmul-{path.name}-{_source_digest(cc, path)}.so"
    try:
        if not lib.is_file():
            compile_library(cc, path, lib)
    except subprocess.CalledProcessError as exc:
        return None, "compile failed: " + compile_error(exc)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"compile failed: {exc}"
    return lib, ""


@lru_cache(maxsize=1)
def _runtimes() -> tuple[str, ...]:
    """The OpenMP runtime this process loaded with torch (torch's wheels carry their own
    libgomp.so.1, the soname the kernels link against). The self-check child loads it first, so a
    library is checked against the runtime it will run with here, and a machine without a system
    libgomp (often one without a compiler, using the prebuilt libraries) passes as this process would."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and Path(fields[5].strip()).name.startswith("libgomp"):
                    return (fields[5].strip(),)
    except OSError:  # not Linux: the child finds the runtime as this process did
        pass
    return ()


def _self_check(name: str, lib: Path, ok: Path, how: str) -> bool:
    """Run the library's self-check in a child process once (`ok` remembers a pass): a CPU flag that
    lies or a miscompiled path kills or fails the child, never this process."""
    if ok.is_file():
        return True
    check = subprocess.run([sys.executable, "-c", _SELFTEST, str(lib), *_runtimes()], capture_output=True, timeout=60)
    if check.returncode != 0:
        why = (
            f"killed by signal {-check.returncode}"
            if check.returncode < 0
            else f"wrong results (code {check.returncode})"
        )
        _problems[name] = f"self-check failed: {why}"
        log.warning("native %s kernel (%s) failed its self-check (%s); using torch's kernel", name, how, why)
        return False
    with suppress(OSError):  # a cache that cannot be written only means checking again next time
        ok.parent.mkdir(parents=True, exist_ok=True)
        ok.write_text("ok\n")
    return True


@cache
def library(name: str) -> ctypes.CDLL | None:
    """The self-checked library for path `name`: compiled here on first use, else (no C compiler, or the
    compile failed) the one prebuilt with the package if it was built from these sources; None where
    neither loads, with the reason in `problem`. `origin` says which one it is."""
    path = next(p for p in PATHS if p.name == name)
    lib, why = _compiled(path)
    ok: Path | None = None
    if lib is not None:
        how, ok = "compiled here", lib.with_suffix(".ok")
    else:
        lib, missing = find_prebuilt(path)
        if lib is None:
            if why == _NO_COMPILER:
                why = "no C compiler (cc, gcc or clang on PATH, or $CC)"
            _problems[name] = f"{why}, and {missing}"
            log.info("native %s kernel unavailable (%s)", name, _problems[name])
            return None
        how = f"prebuilt ({why})"
    try:
        # a prebuilt library's pass is remembered in the user cache, by the library's own digest
        ok = ok or _cache_dir() / f"prebuilt-{name}-{hashlib.sha256(lib.read_bytes()).hexdigest()[:16]}.ok"
        if not _self_check(name, lib, ok, how):
            return None
        handle = ctypes.CDLL(str(lib))
    except (OSError, subprocess.SubprocessError) as exc:
        _problems[name] = f"unavailable: {exc}"
        log.info("native %s kernel unavailable (%s)", name, exc)
        return None
    _origins[name] = how
    vp, i64 = ctypes.c_void_p, ctypes.c_int64
    handle.demi_linear_q8.argtypes = [vp, ctypes.c_int, i64, vp, vp, vp, vp, ctypes.c_int, i64, i64, ctypes.c_int]
    handle.demi_linear_q8.restype = None
    handle.demi_linear_q4.argtypes = [
        vp, ctypes.c_int, i64, vp, vp, vp, i64, vp, vp, ctypes.c_int, i64, i64, ctypes.c_int
    ]  # fmt: skip
    handle.demi_linear_q4.restype = None
    handle.demi_linear_q8p.argtypes = [vp, ctypes.c_int, i64, vp, vp, vp, vp, ctypes.c_int, i64, i64]
    handle.demi_linear_q8p.restype = None
    handle.demi_pack_q8p.argtypes = [vp, i64, i64, vp]
    handle.demi_pack_q8p.restype = None
    handle.demi_unpack_q8p.argtypes = [vp, vp, i64, i64, vp, ctypes.c_int]
    handle.demi_unpack_q8p.restype = None
    handle.demi_pack_q4p.argtypes = [vp, vp, vp, i64, i64, i64, vp, vp, vp]
    handle.demi_pack_q4p.restype = None
    handle.demi_linear_q4p.argtypes = [vp, ctypes.c_int, i64, vp, vp, vp, i64, vp, vp, ctypes.c_int, i64, i64]
    handle.demi_linear_q4p.restype = None
    handle.demi_attend_step.argtypes = [vp, vp, vp, i64, vp, vp, i64, i64, i64, i64, i64, i64, vp]
    handle.demi_attend_step.restype = None
    handle.demi_prefill_attention.argtypes = [vp, i64, vp, i64, i64, vp, i64, i64, i64, i64, i64, i64, i64, i64, vp]
    handle.demi_prefill_attention.restype = ctypes.c_int
    handle.demi_rms_norm.argtypes = [vp, vp, ctypes.c_float, vp, i64, i64]
    handle.demi_rms_norm.restype = None
    handle.demi_rescore_rows.argtypes = [vp, i64, vp, vp, i64, vp, i64, i64]
    handle.demi_rescore_rows.restype = None
    handle.demi_rotate_heads.argtypes = [vp, i64, i64, i64, i64, vp, vp, i64]
    handle.demi_rotate_heads.restype = None
    handle.demi_silu_mul.argtypes = [vp, i64, i64, vp]
    handle.demi_silu_mul.restype = None
    # x, rows, layers, n_layers, kcs, vcs, max_len, pos, lo, eps, cos, sin, rot, hq, hkv, d, scratch
    handle.demi_decode_rows.argtypes = [vp, i64, vp, i64, vp, vp, vp, vp, vp, ctypes.c_float, vp, vp]
    handle.demi_decode_rows.argtypes += [i64, i64, i64, i64, vp]
    handle.demi_decode_rows.restype = None
    handle.demi_quantize_rows.argtypes = [vp, ctypes.c_int, i64, i64, vp, vp]
    handle.demi_quantize_rows.restype = None
    handle.demi_scale_rows.argtypes = [vp, i64, i64, vp, vp, vp, vp, ctypes.c_int]
    handle.demi_scale_rows.restype = None
    handle.demi_dequantize_q4.argtypes = [vp, vp, vp, i64, i64, i64, vp, ctypes.c_int]
    handle.demi_dequantize_q4.restype = None
    handle.demi_path.restype = ctypes.c_char_p
    handle.demi_set_threads.argtypes = [ctypes.c_int]
    handle.demi_release_threads.restype = ctypes.c_int
    # libgomp.so.1 is the one torch loaded (same soname), so the kernels share torch's thread pool;
    # this sets the count for the calling thread as torch has it
    handle.demi_set_threads(torch.get_num_threads())
    _loaded.append(handle)
    return handle


_loaded: list[ctypes.CDLL] = []  # the libraries loaded so far (any one reaches the shared OpenMP runtime)


def release_idle_threads() -> bool:
    """End the calling thread's idle OpenMP workers (torch's and the kernels', one runtime); True when
    done. Call it on a thread that has finished its model work (the one that loaded the model): libgomp
    lets idle workers spin between parallel regions only while it manages no more threads than there
    are CPUs, so the loading thread's idle team made the model runner's thread sleep and wake its
    workers at every region (a 0.5B decode step 21 ms there against 14-16 ms on the loading thread, 2
    cores). The next parallel region on this thread starts a team again."""
    return bool(_loaded) and _loaded[0].demi_release_threads() == 0


def prepare(names: list[str]) -> list[str]:
    """Build (first use: compile and self-check, ~1 s each) the libraries of `names` side by side;
    returns those that load."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        loaded = list(pool.map(library, names))
    return [n for n, lib in zip(names, loaded) if lib is not None]


_KINDS = {torch.float32: 0, torch.bfloat16: 1}


def _rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    row = x if x.dtype in _KINDS else x.float()
    return row.contiguous(), _KINDS[row.dtype if row.dtype in _KINDS else torch.float32]


def linear_q8(
    lib: ctypes.CDLL,
    x: torch.Tensor,
    q: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    one_row: bool = False,
) -> torch.Tensor:
    """y [.., N] = x [.., K] @ (q * scale).T + bias in one native call, in x's dtype (fp32 and bf16
    natively, others through fp32). q int8 [N, K] contiguous, K % 32 == 0; scale and bias fp32.
    one_row: read one weight row at a time instead of four side by side (the plan's `rows_at_once`;
    speed only, the same numbers bit for bit)."""
    row, kind = _rows(x)
    n, k = q.shape
    y = torch.empty(*x.shape[:-1], n, dtype=row.dtype)
    lib.demi_linear_q8(
        row.data_ptr(),
        kind,
        row.numel() // k,
        q.data_ptr(),
        scale.data_ptr(),
        None if bias is None else bias.data_ptr(),
        y.data_ptr(),
        kind,
        n,
        k,
        int(one_row),
    )
    return y if y.dtype == x.dtype else y.to(x.dtype)


PACK_GROUP = 16  # outputs a packed weight interleaves (packed.c)


def _packed_rows(n: int) -> int:
    """Output rows of a packed weight: N rounded up to PACK_GROUP (zero rows)."""
    return -(-n // PACK_GROUP) * PACK_GROUP


def pack_q8(lib: ctypes.CDLL, q: torch.Tensor) -> torch.Tensor:
    """int8 [N, K] -> the bytes `linear_q8p` reads (packed.c): N rounded up to 16, then per group of
    16 outputs and quad of k 64 bytes (output j's k..k+3 at 4j), each byte w XOR 0x80. The same bytes
    for every kernel path."""
    n, k = q.shape
    q = q.contiguous()
    out = torch.empty(_packed_rows(n) * k, dtype=torch.uint8)
    lib.demi_pack_q8p(q.data_ptr(), n, k, out.data_ptr())
    return out


def unpack_q8(
    lib: ctypes.CDLL, packed: torch.Tensor, scale: torch.Tensor, n: int, k: int, dtype: torch.dtype
) -> torch.Tensor:
    """A packed weight back in rows [N, K]: torch.int8 as stored, bfloat16 of the int8 values (the
    outputs are scaled after the matmul), or float32 times the scale."""
    kind = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2}[dtype]
    out = torch.empty(n, k, dtype=dtype)
    lib.demi_unpack_q8p(packed.data_ptr(), scale.data_ptr(), n, k, out.data_ptr(), kind)
    return out


def linear_q8p(
    lib: ctypes.CDLL, x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, n: int
) -> torch.Tensor:
    """y [.., N] = x [.., K] @ (q * scale).T + bias for q packed by `pack_q8`, in x's dtype (fp32 and
    bf16 natively, others through fp32). Each row gives the same bits whatever rows share the call."""
    row, kind = _rows(x)
    k = x.shape[-1]
    y = torch.empty(*x.shape[:-1], n, dtype=row.dtype)
    lib.demi_linear_q8p(
        row.data_ptr(), kind, row.numel() // k, packed.data_ptr(), scale.data_ptr(),
        None if bias is None else bias.data_ptr(), y.data_ptr(), kind, n, k,
    )  # fmt: skip
    return y if y.dtype == x.dtype else y.to(x.dtype)


def pack_q4p(
    lib: ctypes.CDLL, q: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, group: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """int4 q [N, K] (values 0..15, one a byte) with scale and offset [N, K / group] (W = q * scale +
    offset, as `int4_offset` gives) -> what `linear_q4p` reads (packed.c): the nibbles of 16 outputs
    interleaved 8 k at a time, scales and offsets in half, [N / 16][K / group][16]."""
    n, k = q.shape
    padded = _packed_rows(n)
    q, scale, offset = q.contiguous(), half(scale), half(offset)
    packed = torch.empty(padded * k // 2, dtype=torch.uint8)
    ps = torch.empty(padded * (k // group), dtype=torch.float16)
    po = torch.empty_like(ps)
    lib.demi_pack_q4p(
        q.data_ptr(), scale.data_ptr(), offset.data_ptr(), n, k, group, packed.data_ptr(), ps.data_ptr(), po.data_ptr()
    )
    return packed, ps, po


def linear_q4p(
    lib: ctypes.CDLL,
    x: torch.Tensor,
    packed: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    group: int,
    bias: torch.Tensor | None,
    n: int,
) -> torch.Tensor:
    """y [.., N] = x [.., K] @ W.T + bias for W packed by `pack_q4p`; each row the same bits whatever
    rows share the call."""
    row, kind = _rows(x)
    k = x.shape[-1]
    p, ps, po = packed
    y = torch.empty(*x.shape[:-1], n, dtype=row.dtype)
    lib.demi_linear_q4p(
        row.data_ptr(), kind, row.numel() // k, p.data_ptr(), ps.data_ptr(), po.data_ptr(), group,
        None if bias is None else bias.data_ptr(), y.data_ptr(), kind, n, k,
    )  # fmt: skip
    return y if y.dtype == x.dtype else y.to(x.dtype)


def linear_int_mm(
    lib: ctypes.CDLL | None, x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """y = x @ (q * scale).T + bias through torch's int8 GEMM (`torch._int_mm`): each row of x as two
    int8 terms, x ~ q1 s + q2 s / 254 with s = max|x| / 127 (the second rounds what the first left,
    so the activations keep about 15 bits: one term moved logits ~3x as far as the weights' own
    rounding), the K sums in int32, scaled once per output. `lib` does the passes around the GEMM
    natively (see qmatmul.c; torch's ops take several times as long); None runs them in torch."""
    row, kind = _rows(x)
    n, k = q.shape
    m = row.numel() // k
    if lib is None:
        x2 = row.reshape(m, k).float()
        s = x2.abs().amax(1, keepdim=True) / 127.0
        inv = torch.where(s > 0, 1.0 / s, 0.0)
        q1 = torch.round(x2 * inv)
        q2 = torch.round((x2 - q1 * s) * inv * 254.0).clamp_(-127, 127)
        acc = torch._int_mm(torch.cat([q1, q2]).to(torch.int8), q.t()).float()
        y = (acc[:m] * s + acc[m:] * (s / 254.0)).mul_(scale)
        y = (y if bias is None else y.add_(bias)).reshape(*x.shape[:-1], n)
        return y.to(x.dtype)
    xq = torch.empty(2 * m, k, dtype=torch.int8)
    xs = torch.empty(m, dtype=torch.float32)
    lib.demi_quantize_rows(row.data_ptr(), kind, m, k, xq.data_ptr(), xs.data_ptr())
    acc = torch._int_mm(xq, q.t())
    y = torch.empty(*x.shape[:-1], n, dtype=row.dtype)
    b = None if bias is None else bias.data_ptr()
    lib.demi_scale_rows(acc.data_ptr(), m, n, xs.data_ptr(), scale.data_ptr(), b, y.data_ptr(), kind)
    return y if y.dtype == x.dtype else y.to(x.dtype)


def int4_offset(scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Demi's int4 is W = (q - 8) * scale + zero; the kernels take W = q * scale + offset (unsigned
    nibbles go straight into the unsigned-by-signed byte dot), so offset = zero - 8 * scale, in the
    half precision they read (`half`)."""
    return half(zero.float() - 8.0 * scale.float())


def half(t: torch.Tensor) -> torch.Tensor:
    """int4 scales and offsets as the kernels read them: IEEE half, contiguous. Beside a group of 64
    weights' 32 nibble bytes, fp32 scale and offset were 8 more bytes that every decode step streams
    from memory (20% of an int4 row of the 0.5B shape); half's 11 bits round an offset by 0.05% at
    most, under 1% of an int4 step. Demi's stored scales are bf16, which half holds exactly down to 6e-5."""
    return t if t.dtype == torch.float16 and t.is_contiguous() else t.to(torch.float16).contiguous()


def dequantize_q4(
    packed: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    group: int,
    lib: ctypes.CDLL | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[N, K] in `dtype` (fp32 or bf16) from the `pack_q4` layout: q * scale + offset (offset from
    int4_offset; both read in half precision, `half`). With a native `lib`, one pass per row in C
    (what a float prefill runs); without, torch's ops, which the tests hold it to."""
    n, k = packed.shape[0], packed.shape[1] * 2
    scale, offset = half(scale), half(offset)
    if lib is not None and dtype in _KINDS:
        out = torch.empty(n, k, dtype=dtype)
        lib.demi_dequantize_q4(
            packed.data_ptr(), scale.data_ptr(), offset.data_ptr(), group, n, k, out.data_ptr(), _KINDS[dtype]
        )
        return out
    main = k // QCHUNK * QCHUNK
    chunks = packed[:, : main // 2].reshape(n, main // QCHUNK, 1, QCHUNK // 2)
    blocks = packed[:, main // 2 :].reshape(n, (k - main) // QBLOCK, 1, QBLOCK // 2)
    q = torch.cat(
        [
            torch.cat([chunks & 0xF, chunks >> 4], dim=2).reshape(n, main),
            torch.cat([blocks & 0xF, blocks >> 4], dim=2).reshape(n, k - main),
        ],
        dim=1,
    )
    q = q.reshape(n, k // group, group).float()
    return (q * scale.float()[..., None] + offset.float()[..., None]).reshape(n, k).to(dtype)


def linear_q4(
    lib: ctypes.CDLL,
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    offset: torch.Tensor,
    group: int,
    bias: torch.Tensor | None,
    one_row: bool = False,
) -> torch.Tensor:
    """y = x @ W.T + bias for W = q * scale + offset, q in `pack_q4` layout, scale and offset [N, K /
    group] in half precision (`half`; int4_offset converts Demi's stored zero points); one_row as
    for linear_q8."""
    row, kind = _rows(x)
    scale, offset = half(scale), half(offset)
    n, k = packed.shape[0], packed.shape[1] * 2
    y = torch.empty(*x.shape[:-1], n, dtype=row.dtype)
    lib.demi_linear_q4(
        row.data_ptr(),
        kind,
        row.numel() // k,
        packed.data_ptr(),
        scale.data_ptr(),
        offset.data_ptr(),
        group,
        None if bias is None else bias.data_ptr(),
        y.data_ptr(),
        kind,
        n,
        k,
        int(one_row),
    )
    return y if y.dtype == x.dtype else y.to(x.dtype)


def pack_q4(q: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K] in 0..15 -> [N, K / 2] bytes as the kernels read them: chunks of 128 weights in 64
    bytes (byte i: k = i low nibble, k = 64 + i high), then the rest (K % 128) in blocks of 32 in 16
    bytes (byte i: k = i low, k = 16 + i high)."""
    n, k = q.shape
    main = k // QCHUNK * QCHUNK
    chunks = q[:, :main].reshape(n, main // QCHUNK, 2, QCHUNK // 2)
    blocks = q[:, main:].reshape(n, (k - main) // QBLOCK, 2, QBLOCK // 2)
    return torch.cat(
        [
            (chunks[:, :, 0] | (chunks[:, :, 1] << 4)).reshape(n, main // 2),
            (blocks[:, :, 0] | (blocks[:, :, 1] << 4)).reshape(n, (k - main) // 2),
        ],
        dim=1,
    ).contiguous()
