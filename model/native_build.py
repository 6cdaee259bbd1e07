"""How the native kernels are built: the instruction-set paths and their compiler flags, the C
sources, the one compile command, and the prebuilt libraries a wheel carries.

Standard library only, on purpose: the wheel build (setup.py, in an isolated build environment
without torch) loads this file by its path and compiles every path of the build machine into the
package with the same command `native_kernels.library` compiles with on first use. A machine
without a C compiler then loads the prebuilt library, if its digest says it was built from the
sources and flags installed next to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

NATIVE_DIR = Path(__file__).parent / "native"
SOURCES = tuple(NATIVE_DIR / name for name in ("qmatmul.c", "packed.c", "decode_ops.c", "prefill_attention.c"))
HEADERS = (
    NATIVE_DIR / "exp_poly.h",
    NATIVE_DIR / "quant_common.h",
)  # included by the sources: in every digest, never compiled alone
PREBUILT_DIR = Path(__file__).parent / "native" / "prebuilt"  # in the installed package (wheel)
PREBUILT_IN_PACKAGE = ("native", "prebuilt")  # the same folder, relative to the demi.model package
MANIFEST = "manifest.json"
_X86 = ("x86_64", "amd64", "i686", "i386")
_ARM = ("aarch64", "arm64")


@dataclass(frozen=True)
class KernelPath:
    name: str
    arch: tuple[str, ...]
    needs: frozenset[str]  # CPU flags (x86 /proc/cpuinfo names; ARM "Features" names)
    cflags: tuple[str, ...]


_AVX2 = ("-mavx2", "-mfma", "-mf16c")
_AVX512 = _AVX2 + ("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq")
# Fastest first: where several run, the plan times them all the same.
PATHS = (
    KernelPath(
        "avx512vnni",
        _X86,
        frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"}),
        _AVX512 + ("-mavx512vnni",),
    ),
    KernelPath("avx512", _X86, frozenset({"avx2", "fma", "avx512f", "avx512bw", "avx512vl"}), _AVX512),
    KernelPath("avxvnni", _X86, frozenset({"avx2", "fma", "f16c", "avx_vnni"}), _AVX2 + ("-mavxvnni",)),
    KernelPath("avx2", _X86, frozenset({"avx2", "fma", "f16c"}), _AVX2),
    KernelPath("neon-dotprod", _ARM, frozenset({"asimddp"}), ("-march=armv8.2-a+dotprod",)),
    KernelPath("neon", _ARM, frozenset({"asimd"}), ("-march=armv8-a",)),
    KernelPath("generic", _X86 + _ARM, frozenset(), ()),
)
PATH_NAMES = tuple(p.name for p in PATHS)


def machine() -> str:
    return platform.machine().lower()


def compiler() -> str | None:
    """The C compiler: $CC where it names one that exists (a CC naming a missing program means none),
    else cc, gcc or clang on PATH."""
    chosen = os.environ.get("CC")
    if chosen:
        return shutil.which(chosen)
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def compile_command(cc: str, path: KernelPath, out: Path) -> list[str]:
    """The one command that builds path `path`'s library, at run time and at wheel build time alike."""
    return [cc, "-O3", "-fopenmp", "-shared", "-fPIC", *path.cflags, "-o", str(out), *map(str, SOURCES), "-lm"]


def compile_library(cc: str, path: KernelPath, out: Path, timeout: float = 120) -> None:
    """Compile `path` into `out`, written whole or not at all (a temporary file, then a rename), so an
    interrupted or concurrent build never leaves half a library. Raises CalledProcessError, OSError."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        part = Path(tmp) / out.name
        subprocess.run(compile_command(cc, path, part), check=True, capture_output=True, timeout=timeout)
        os.replace(part, out)


def sources_bytes() -> bytes:
    """The kernel sources and headers, concatenated: what every digest of a build starts from."""
    return b"".join(src.read_bytes() for src in (*SOURCES, *HEADERS))


def compile_error(exc: subprocess.CalledProcessError) -> str:
    """The compiler's last line of complaint, for a one-line report."""
    return " ".join(exc.stderr.decode(errors="replace").strip().splitlines()[-1:])


def build_digest(path: KernelPath) -> str:
    """A digest of what a library of `path` is built from (the sources and the path's flags), whatever
    compiler built it: a prebuilt library is used only where it matches the installed sources."""
    return hashlib.sha256(sources_bytes() + b"\0" + " ".join(path.cflags).encode()).hexdigest()[:16]


def machine_paths(arch: str | None = None) -> list[KernelPath]:
    """Every path of one architecture (default this machine's), whether or not this CPU runs it: a
    compiler needs only the flags."""
    arch = arch or machine()
    return [p for p in PATHS if arch in p.arch]


def build_prebuilt(out: Path, names: Iterable[str] | None = None, say: Callable[[str], None] = print) -> list[str]:
    """Compile each path (default every path of this machine's architecture) into `out` as
    `qmatmul-<path>.so`, with a manifest of their digests. `out` is emptied first. A path that fails to
    compile is left out, and without a compiler nothing is built; both are said. Returns the names built."""
    shutil.rmtree(out, ignore_errors=True)
    wanted = machine_paths() if names is None else [p for p in PATHS if p.name in set(names)]
    cc = compiler()
    if not cc:
        say("no C compiler (cc, gcc or clang, or $CC): no prebuilt native kernels; they compile on first use")
        return []

    def build(path: KernelPath) -> str | None:
        try:
            compile_library(cc, path, out / f"qmatmul-{path.name}.so")
            return None
        except subprocess.CalledProcessError as exc:
            return compile_error(exc)
        except (OSError, subprocess.SubprocessError) as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=max(1, min(len(wanted), os.cpu_count() or 1))) as pool:
        failures = list(pool.map(build, wanted))
    built = {}
    for path, failure in zip(wanted, failures):
        if failure is None:
            built[path.name] = {"file": f"qmatmul-{path.name}.so", "digest": build_digest(path)}
            say(f"prebuilt native kernel {path.name}: {out / built[path.name]['file']}")
        else:
            say(f"prebuilt native kernel {path.name} left out: compile failed: {failure}")
    if built:
        manifest = {"machine": machine(), "compiler": cc, "libraries": built}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return list(built)


def find_prebuilt(path: KernelPath, folder: Path | None = None) -> tuple[Path | None, str]:
    """The prebuilt library of `path` shipped with the package, or None and why there is none usable."""
    folder = folder or PREBUILT_DIR
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        entry = manifest["libraries"].get(path.name)
        built_for = manifest["machine"]
    except FileNotFoundError:
        return None, "no prebuilt library"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"unreadable prebuilt manifest ({exc})"
    if built_for != machine():
        return None, f"the prebuilt libraries are for {built_for}"
    if not isinstance(entry, dict):
        return None, "no prebuilt library for this path"
    if entry.get("digest") != build_digest(path):
        return None, "the prebuilt library was built from other sources"
    lib = folder / Path(str(entry.get("file"))).name
    if not lib.is_file():
        return None, "no prebuilt library"
    return lib, ""
