"""The wheel's prebuilt native kernels; everything else about the package is in pyproject.toml.

The kernels are plain shared libraries loaded with ctypes, not Python extensions, so they are built
next to the package's files when build_py runs: every instruction-set path of the build machine's
architecture, with the command the run-time compile uses (model/native_build.py owns both; it is
loaded here by its path because the isolated build environment has setuptools and nothing else).
A wheel that carries them is tagged py3-none-<platform>; without a C compiler the build still
succeeds, says so, and makes a py3-none-any wheel whose kernels compile on first use or fall back
to torch's. Editable installs compile nothing: the checkout compiles on first use.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

from setuptools import Distribution, setup
from setuptools.command.bdist_wheel import bdist_wheel
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
PACKAGE = ("demi", "model")  # where model/ lands in the wheel (pyproject's package-dir)


@cache
def _native_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_demi_native_build", HERE / "model" / "native_build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _prebuilt_dir(build_lib: str) -> Path:
    return Path(build_lib, *PACKAGE, *_native_build().PREBUILT_IN_PACKAGE)


class BuildPyWithKernels(build_py):
    """build_py, then the prebuilt kernels into the build tree."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        native = _native_build()
        say = lambda message: self.announce(message, logging.WARNING)  # shown by build front ends
        native.build_prebuilt(_prebuilt_dir(self.build_lib), say=say)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        prebuilt = _prebuilt_dir(self.build_lib)
        extra = sorted(str(p) for p in prebuilt.iterdir()) if prebuilt.is_dir() and not self.editable_mode else []
        return [*super().get_outputs(include_bytecode), *extra]


class KernelDistribution(Distribution):
    """A distribution that holds platform binaries once its build has compiled kernels into it: from
    then on it installs into platlib, as a package with extension modules does."""

    carries_kernels = False

    def has_ext_modules(self) -> bool:
        return self.carries_kernels or super().has_ext_modules()


class PlatformWheel(bdist_wheel):
    """A wheel with prebuilt kernels is platform-specific, py3-none-<platform> (the libraries need no
    particular Python, only the platform); one without them stays py3-none-any."""

    def run(self) -> None:
        if not self.skip_build:
            self.run_command("build")  # once: bdist_wheel's own run_command("build") is then a no-op
        manifest = _prebuilt_dir(self.get_finalized_command("build_py").build_lib) / _native_build().MANIFEST
        carries = manifest.is_file() and bool(json.loads(manifest.read_text(encoding="utf-8"))["libraries"])
        if isinstance(self.distribution, KernelDistribution):
            self.distribution.carries_kernels = carries
        self.root_is_pure = not carries
        super().run()

    def get_tag(self) -> tuple[str, str, str]:
        tag = super().get_tag()
        return tag if self.root_is_pure else ("py3", "none", tag[2])


setup(distclass=KernelDistribution, cmdclass={"build_py": BuildPyWithKernels, "bdist_wheel": PlatformWheel})
