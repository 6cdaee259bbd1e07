"""The native kernels prebuilt with the package (model/native_build.py, compiled into the wheel by
setup.py): used where there is no C compiler or the compile fails, only after the child-process
self-check, only when built from the installed sources, and `demi doctor` says which one loaded.
The installed wheel itself is checked in tests/cli/test_install.py."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from demi.model import native_build, native_kernels
from demi.model.quantize import quantize_int8

PATH = (native_kernels.runnable_paths() or [None])[0]
pytestmark = pytest.mark.skipif(PATH is None, reason="no native path for this CPU's architecture")


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A prebuilt folder as the wheel carries it, for this CPU's fastest path (one compile)."""
    out = tmp_path_factory.mktemp("prebuilt") / "prebuilt"
    said: list[str] = []
    assert native_build.build_prebuilt(out, [PATH], say=said.append) == [PATH], said
    return out


@pytest.fixture(autouse=True)
def no_compiler(shipped, tmp_path, monkeypatch):
    """An empty user cache, no C compiler, the prebuilt folder above in the package's place."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DEMI_KERNEL", raising=False)
    monkeypatch.delenv("DEMI_NATIVE", raising=False)
    monkeypatch.setattr(native_kernels, "compiler", lambda: None)
    monkeypatch.setattr(native_build, "PREBUILT_DIR", shipped)
    for state in (native_kernels._problems, native_kernels._origins):
        state.clear()
    native_kernels.library.cache_clear()
    yield
    for state in (native_kernels._problems, native_kernels._origins):
        state.clear()
    native_kernels.library.cache_clear()


def test_without_a_compiler_the_prebuilt_library_is_self_checked_and_used():
    lib = native_kernels.library(PATH)
    assert lib is not None, native_kernels.problem(PATH)
    assert native_kernels.origin(PATH) == "prebuilt (no C compiler)" and native_kernels.problem(PATH) is None
    assert lib.demi_path().decode() == PATH
    assert list(native_kernels._cache_dir().glob(f"prebuilt-{PATH}-*.ok"))  # its self-check passed
    torch.manual_seed(7)
    w, b, x = torch.randn(96, 256), torch.randn(96), torch.randn(3, 256)
    q, scale = quantize_int8(w)
    want = x @ (q.float() * scale[:, None]).T + b
    got = native_kernels.linear_q8(lib, x, q, scale, b)
    assert ((got - want).norm() / want.norm()) < 0.01
    from demi.assistant.catalog import _cpu_report

    report = _cpu_report(None)
    assert PATH in report["native_usable"] and report["origins"][PATH] == "prebuilt (no C compiler)"
    assert "prebuilt" in report["note"]


def test_a_failed_compile_falls_back_to_the_prebuilt_library(monkeypatch):
    false = shutil.which("false")
    assert false
    monkeypatch.setattr(native_kernels, "compiler", lambda: false)  # a compiler that always fails
    assert native_kernels.library(PATH) is not None
    assert native_kernels.origin(PATH).startswith("prebuilt (compile failed")


@pytest.mark.parametrize("change", ["sources", "machine"])
def test_a_prebuilt_library_built_from_other_sources_or_for_another_machine_is_not_used(
    change, shipped, tmp_path, monkeypatch
):
    if change == "sources":  # the installed sources are not the ones the library was built from
        edited = []
        for src in native_build.SOURCES:
            copy = tmp_path / src.name
            copy.write_bytes(src.read_bytes() + b"\n/* changed */\n")
            edited.append(copy)
        monkeypatch.setattr(native_build, "SOURCES", tuple(edited))
        why = "built from other sources"
    else:
        folder = tmp_path / "prebuilt"
        shutil.copytree(shipped, folder)
        manifest = json.loads((folder / native_build.MANIFEST).read_text())
        (folder / native_build.MANIFEST).write_text(json.dumps({**manifest, "machine": "riscv64"}))
        monkeypatch.setattr(native_build, "PREBUILT_DIR", folder)
        why = "are for riscv64"
    assert native_kernels.library(PATH) is None
    assert "no C compiler" in native_kernels.problem(PATH) and why in native_kernels.problem(PATH)
    assert native_kernels.origin(PATH) is None
    from demi.assistant.catalog import _cpu_report

    report = _cpu_report(None)
    assert PATH not in report["native_usable"] and "no usable prebuilt library" in report["note"]


def test_a_prebuilt_library_failing_its_self_check_costs_a_warning_not_the_process(monkeypatch, caplog):
    monkeypatch.setattr(native_kernels, "_SELFTEST", "import os, signal; os.kill(os.getpid(), signal.SIGILL)")
    with caplog.at_level(logging.WARNING, logger="demi.model"):
        assert native_kernels.library(PATH) is None
    assert native_kernels.problem(PATH) == "self-check failed: killed by signal 4"
    assert "prebuilt" in caplog.text and "self-check" in caplog.text
    assert not list(native_kernels._cache_dir().glob("*.ok"))


_SAME_RUNTIME_CHECK = """
import ctypes, sys
for runtime in sys.argv[2:]:
    ctypes.CDLL(runtime, mode=ctypes.RTLD_GLOBAL)
code = ctypes.CDLL(sys.argv[1]).demi_selftest()
maps = [line.split(maxsplit=5) for line in open("/proc/self/maps")]
runtimes = {fields[5].strip() for fields in maps if len(fields) == 6 and "libgomp" in fields[5]}
sys.exit(code or (0 if runtimes == set(sys.argv[2:]) else 9))
"""


def test_the_self_check_runs_on_the_openmp_runtime_this_process_uses(monkeypatch):
    """torch's own libgomp, the one the kernels share in this process, also in the self-check's child:
    a machine without a system libgomp (usual where there is no compiler) passes it as it runs here."""
    if not native_kernels._runtimes():
        pytest.skip("no libgomp mapped in this process (not Linux, or torch without GNU OpenMP)")
    monkeypatch.setattr(native_kernels, "_SELFTEST", _SAME_RUNTIME_CHECK)
    assert native_kernels.library(PATH) is not None, native_kernels.problem(PATH)


def test_a_build_without_a_compiler_builds_nothing_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(native_build, "compiler", lambda: None)
    said: list[str] = []
    assert native_build.build_prebuilt(tmp_path / "out", say=said.append) == []
    assert not (tmp_path / "out").exists() and "no C compiler" in said[0]
    assert native_build.find_prebuilt(native_build.PATHS[0], tmp_path / "out") == (None, "no prebuilt library")
