"""Installing Demi as a user does (`pipx install .`, `uv tool install .`): the project is built into a
wheel and an sdist by its own build backend, the wheel is installed into a fresh virtual environment,
and the console scripts it puts on PATH run from there: `demi`, `demi-lsp` and `demi-chat --version`,
`demi completion bash`; `uv tool install` of the same wheel links the three into a bin folder of its
own. The wheel is installed without its dependencies and the fresh environment sees this
environment's site-packages through a .pth file, so nothing (torch above all) is downloaded; the
package itself must come from the wheel, never from this checkout. The wheel carries the native
kernels prebuilt for this machine's architecture (setup.py) and is tagged for its platform; with no
C compiler the installed package loads them, self-checked, and `demi doctor` says so.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from demi.model import native_build

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
SCRIPTS = sorted(PYPROJECT["project"]["scripts"])


def _run(
    cmd: list[str], cwd: Path, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run(cmd, cwd=cwd, env={**clean, **(env or {})}, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> dict[str, Path]:
    """The wheel and the sdist, built by the build backend from a copy of the files they are made of
    (so the build's scratch folders never land in the checkout)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    for folder in set(PYPROJECT["tool"]["setuptools"]["package-dir"].values()):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
    out = tmp_path_factory.mktemp("dist")
    built = {}
    for kind in ("wheel", "sdist"):  # one process per hook, as build front ends call them
        hook = f"import sys; from setuptools import build_meta as b; print('built', b.build_{kind}(sys.argv[1]))"
        proc = _run([sys.executable, "-c", hook, str(out)], cwd=src)
        assert proc.returncode == 0, proc.stderr[-3000:]
        name = [line for line in proc.stdout.splitlines() if line.startswith("built ")][-1].split()[1]
        built[kind] = out / name
        assert built[kind].is_file(), sorted(p.name for p in out.iterdir())
    return built


@pytest.fixture(scope="module")
def venv(dists, tmp_path_factory) -> Path:
    """A fresh virtual environment with only the wheel installed; its dependencies resolve from this
    environment's site-packages (a .pth line), which holds no `demi` of its own on that path."""
    home = tmp_path_factory.mktemp("venv")
    path = home / "env"
    proc = _run([sys.executable, "-m", "venv", "--without-pip", str(path)], cwd=home)
    assert proc.returncode == 0, proc.stderr
    python = path / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
    proc = _run([*install, "--disable-pip-version-check", "-q", str(dists["wheel"])], cwd=home)
    assert proc.returncode == 0, proc.stderr
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=home)
    ours = sysconfig.get_paths()
    lines = dict.fromkeys([ours["purelib"], ours["platlib"]])
    (Path(site.stdout.strip()) / "demi-test-deps.pth").write_text("\n".join(lines) + "\n")
    return path


def test_wheel_declares_license_scripts_and_dependencies(dists):
    with zipfile.ZipFile(dists["wheel"]) as whl:
        info = f"demi-{VERSION}.dist-info"
        names = whl.namelist()
        meta = whl.read(f"{info}/METADATA").decode()
        entry_points = whl.read(f"{info}/entry_points.txt").decode()
        license_text = whl.read(f"{info}/licenses/LICENSE").decode()
    headers = meta.split("\n\n", 1)[0].splitlines()
    assert "License-Expression: Apache-2.0" in headers
    assert "License-File: LICENSE" in headers
    assert any(h.startswith("Requires-Dist: shtab") for h in headers)
    assert license_text == (ROOT / "LICENSE").read_text() and "Apache License" in license_text
    for script in SCRIPTS:
        assert f"{script} = {PYPROJECT['project']['scripts'][script]}" in entry_points
    # the built-in model travels with the package: `demi` works with nothing downloaded
    assert any(n.startswith("demi/model/builtin/") and n.endswith(".safetensors") for n in names)
    assert not any("__pycache__" in n for n in names)


def test_the_wheel_carries_prebuilt_kernels_for_this_machine_and_says_its_platform(dists):
    """Every path of this machine's architecture (the build compiles them all, whatever this CPU
    runs), each with the digest of the sources and flags it was built from; a platform tag."""
    prebuilt = "demi/model/native/prebuilt"
    with zipfile.ZipFile(dists["wheel"]) as whl:
        names = set(whl.namelist())
        manifest = json.loads(whl.read(f"{prebuilt}/manifest.json"))
        wheel_info = whl.read(f"demi-{VERSION}.dist-info/WHEEL").decode().splitlines()
    paths = native_build.machine_paths()
    assert paths and manifest["machine"] == native_build.machine()
    assert sorted(manifest["libraries"]) == sorted(p.name for p in paths)
    for path in paths:
        assert f"{prebuilt}/qmatmul-{path.name}.so" in names
        assert manifest["libraries"][path.name]["digest"] == native_build.build_digest(path)
    platform_tag = sysconfig.get_platform().replace("-", "_").replace(".", "_")
    assert dists["wheel"].name == f"demi-{VERSION}-py3-none-{platform_tag}.whl"
    assert "Root-Is-Purelib: false" in wheel_info and f"Tag: py3-none-{platform_tag}" in wheel_info


def test_sdist_carries_the_license(dists):
    with tarfile.open(dists["sdist"]) as sdist:
        names = sdist.getnames()
        pkg_info = sdist.extractfile(f"demi-{VERSION}/PKG-INFO").read().decode()  # type: ignore[union-attr]
    assert f"demi-{VERSION}/LICENSE" in names
    # what a wheel built from the sdist compiles its prebuilt kernels from
    assert {f"demi-{VERSION}/setup.py", f"demi-{VERSION}/model/native_build.py"} <= set(names)
    assert all(f"demi-{VERSION}/model/native/{src.name}" in names for src in native_build.SOURCES)
    assert not any(n.endswith(".so") for n in names)
    assert "License-Expression: Apache-2.0" in pkg_info.split("\n\n", 1)[0].splitlines()


def test_the_package_comes_from_the_wheel(venv, tmp_path):
    probe = "import demi, importlib.metadata as m; print(demi.__file__); print(m.version('demi'))"
    proc = _run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    where, version = proc.stdout.split()
    assert Path(where).is_relative_to(venv) and version == VERSION


@pytest.mark.parametrize("script", SCRIPTS)
def test_console_scripts_print_the_version(venv, tmp_path, script):
    assert SCRIPTS == ["demi", "demi-chat", "demi-lsp"]
    proc = _run([str(venv / "bin" / script), "--version"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{script} {VERSION}\n"


@pytest.mark.parametrize(
    ("module", "prog"), [("demi.cli.main", "demi"), ("demi.lsp.server", "demi-lsp"), ("demi.tui.app", "demi-chat")]
)
def test_version_does_not_load_torch(venv, tmp_path, module, prog):
    """`--version` (what an editor or an install check runs first) answers without loading the engine."""
    probe = (
        "import sys; from importlib import import_module\n"
        f"sys.argv = [{prog!r}, '--version']\n"
        "try:\n"
        f"    import_module({module!r}).main()\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded')\n"
    )
    proc = _run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [f"{prog} {VERSION}", "torch not loaded"]


def test_uv_tool_install_puts_the_three_commands_on_path(dists, tmp_path):
    """`uv tool install` as the README gives it: the wheel in an environment of its own, `demi`,
    `demi-lsp` and `demi-chat` linked into the tools' bin folder, the PATH entry every editor setup
    relies on (`demi-lsp` by name). pipx does the same through pip (the tests above). Offline: the
    wheel's dependencies are left out of the resolution (`--excludes`) and come from this environment
    through a .pth line."""
    from uv import find_uv_bin

    with zipfile.ZipFile(dists["wheel"]) as whl:
        meta = whl.read(f"demi-{VERSION}.dist-info/METADATA").decode().split("\n\n", 1)[0]
    requirements = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    names = {re.split(r"[\s;<>=!~\[(]", r, maxsplit=1)[0] for r in requirements if "extra ==" not in r}
    assert {"torch", "pygls", "textual"} <= names
    (tmp_path / "excludes.txt").write_text("\n".join(sorted(names)) + "\n")
    tools, bin_dir = tmp_path / "tools", tmp_path / "bin"
    uv_env = {
        "UV_TOOL_DIR": str(tools),
        "UV_TOOL_BIN_DIR": str(bin_dir),
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "UV_NO_CONFIG": "1",
        "UV_PYTHON_DOWNLOADS": "never",
    }
    install = [find_uv_bin(), "tool", "install", "--offline", "--no-index", "--python", sys.executable]
    proc = _run([*install, "--excludes", "excludes.txt", str(dists["wheel"])], cwd=tmp_path, env=uv_env)
    assert proc.returncode == 0, proc.stderr
    assert "Installed 3 executables: demi, demi-chat, demi-lsp" in proc.stderr, proc.stderr
    assert sorted(p.name for p in bin_dir.iterdir()) == SCRIPTS
    python = tools / "demi" / "bin" / "python"
    site = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
    ours = sysconfig.get_paths()
    lines = dict.fromkeys([ours["purelib"], ours["platlib"]])
    (Path(site.stdout.strip()) / "demi-test-deps.pth").write_text("\n".join(lines) + "\n")
    path = os.pathsep.join([str(bin_dir), "/usr/bin", "/bin"])
    for script in SCRIPTS:
        assert shutil.which(script, path=path) == str(bin_dir / script)
        proc = _run([script, "--version"], cwd=tmp_path, timeout=60, env={"PATH": path})
        assert proc.returncode == 0 and proc.stdout == f"{script} {VERSION}\n", proc.stderr


def test_installed_demi_prints_a_completion_script_bash_accepts(venv, tmp_path):
    bash = shutil.which("bash")
    assert bash, "bash is needed to check the completion script"
    demi = venv / "bin" / "demi"
    proc = _run([bash, "-c", f"source <({demi} completion bash) && complete -p demi"], cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith(" demi") and "-F _shtab_demi" in proc.stdout


_PREBUILT_PROBE = """
import json, torch
from demi.model import native_kernels as nk
from demi.model.quantize import quantize_int8
torch.manual_seed(0)
w, x = torch.randn(64, 128), torch.randn(2, 128)
q, scale = quantize_int8(w)
want = x @ (q.float() * scale[:, None]).T
loaded = {p: nk.library(p) for p in nk.runnable_paths()}
print(json.dumps({
    "compiler": nk.compiler(),
    "module": nk.__file__,
    "paths": list(loaded),
    "problems": {p: nk.problem(p) for p in loaded if nk.problem(p)},
    "origins": {p: nk.origin(p) for p, lib in loaded.items() if lib},
    "runs": {p: lib.demi_path().decode() for p, lib in loaded.items() if lib},
    "errors": {
        p: ((nk.linear_q8(lib, x, q, scale, None) - want).norm() / want.norm()).item()
        for p, lib in loaded.items() if lib
    },
}))
"""


def test_without_a_compiler_the_installed_package_uses_its_prebuilt_kernels(venv, tmp_path):
    """No C compiler ($CC names a missing program, PATH holds none): every path this CPU runs loads
    from the wheel's prebuilt libraries after its self-check, computes a correct int8 matmul, nothing
    is compiled into the (fresh) user cache, and `demi doctor` says where the kernels came from."""
    cache = tmp_path / "cache"
    env = {"CC": str(tmp_path / "no-such-cc"), "PATH": str(venv / "bin"), "XDG_CACHE_HOME": str(cache)}
    env |= {"DEMI_KERNEL": "auto", "DEMI_NATIVE": "1"}  # whatever this environment forces
    proc = _run([str(venv / "bin" / "python"), "-c", _PREBUILT_PROBE], cwd=tmp_path, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(proc.stdout.splitlines()[-1])
    assert r["compiler"] is None and Path(r["module"]).is_relative_to(venv)
    assert r["paths"] and not r["problems"], r
    assert r["origins"] == dict.fromkeys(r["paths"], "prebuilt (no C compiler)")
    assert r["runs"] == {p: p for p in r["paths"]}
    assert all(err < 0.01 for err in r["errors"].values()), r["errors"]
    native = cache / "demi" / "native"
    assert len(list(native.glob("prebuilt-*.ok"))) == len(r["paths"])  # each passed its self-check
    assert not list(native.glob("*.so"))  # and nothing was compiled here
    doctor = _run([str(venv / "bin" / "demi"), "doctor"], cwd=tmp_path, timeout=120, env=env)
    assert doctor.returncode == 0, doctor.stderr[-3000:]
    lines = doctor.stdout.splitlines()
    kernels = next(line for line in lines if line.startswith("native kernels"))
    assert kernels.endswith(f"{', '.join(r['paths'])}: prebuilt (no C compiler)"), kernels
    assert any("no C compiler: the native kernels prebuilt" in line for line in lines), doctor.stdout
