"""The real servers the remote-engine tests talk to ("peers"), built once and cached outside the repository.

Demi is a client of the servers teams already run. Two of them run on a CPU here and are built from one
source release, llama-cpp-python's sdist (`LLAMA_CPP_PYTHON`), which vendors llama.cpp. llama.cpp is
compiled once, with cmake, into shared libraries (libllama, libggml*) and the `llama-server` binary
beside them (`LIB_DIR`); both peers use that one build:

- llama.cpp's own `llama-server`;
- llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`), installed with its
  `[server]` extra in a virtual environment of its own (peers are test peers, never Demi's dependencies)
  with `LLAMA_BUILD=OFF`: its bindings compile nothing and load libllama from `LLAMA_CPP_LIB_PATH`,
  which a test passes when it starts that server (`llama_cpp_python_env()`);
- the sdist's `convert_hf_to_gguf.py` (with its own `gguf-py`), which turns a random-weight checkpoint
  into the GGUF both servers load.

`make test` runs `python tests/peers.py install` first: it builds what is missing under `PEERS_DIR`
(`$DEMI_PEERS_DIR`, default `~/.cache/demi-peers`) and does nothing when all is there. The tests ask
`require_*` for a peer: inside `make test` (`DEMI_REQUIRE_PEERS=1`) a missing one fails the test; run
by hand without the peers, the test skips and says how to build them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

LLAMA_CPP_PYTHON = "0.3.36"
PEERS_DIR = Path(os.environ.get("DEMI_PEERS_DIR") or Path.home() / ".cache" / "demi-peers")
SDIST_DIR = PEERS_DIR / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
LLAMA_CPP = SDIST_DIR / "vendor" / "llama.cpp"
# "-shared" names the layout (one shared-library build both peers use); the earlier layout's folders,
# a static llama-server and a venv with its own compiled copy, are removed by `install`.
BUILD_DIR = PEERS_DIR / f"llama.cpp-{LLAMA_CPP_PYTHON}-shared-build"
LIB_DIR = BUILD_DIR / "bin"  # llama.cpp puts libraries and programs together
SERVER_VENV = PEERS_DIR / f"llama-cpp-python-{LLAMA_CPP_PYTHON}-shared-venv"
OLD_LAYOUT = [f"llama-server-{LLAMA_CPP_PYTHON}-build", f"llama-cpp-python-{LLAMA_CPP_PYTHON}-venv"]
INSTALL_HINT = "build them with `python tests/peers.py install` (make test does)"

# Shared libraries and llama-server only: no tests, examples, other tools, web UI (it would be fetched),
# HTTPS or curl. -O1: the peers serve a 2-layer model, so compile time counts and run time does not
# (-O1 compiles in about half the CPU time of Release's -O3). ggml picks up ccache by itself if present.
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DCMAKE_C_FLAGS_RELEASE=-O1 -DNDEBUG",
    "-DCMAKE_CXX_FLAGS_RELEASE=-O1 -DNDEBUG",
    "-DBUILD_SHARED_LIBS=ON",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",  # the folder llama-server is in; only the targets below are built
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_ALL_WARNINGS=OFF",
]
CMAKE_TARGETS = ["llama", "llama-server"]
SHARED_LIB = LIB_DIR / ("libllama.dylib" if sys.platform == "darwin" else "libllama.so")


READY = ".demi-peer-ready"  # written last, so a build or install cut short is never taken for done


def llama_server() -> Path | None:
    """The built `llama-server` binary (its libraries beside it), or None."""
    path = LIB_DIR / "llama-server"
    return path if (BUILD_DIR / READY).is_file() and os.access(path, os.X_OK) and SHARED_LIB.is_file() else None


def llama_cpp_python() -> Path | None:
    """The Python of the virtual environment that has `llama_cpp.server`, or None. It runs with
    `llama_cpp_python_env()` in its environment."""
    python = SERVER_VENV / "bin" / "python"
    ready = (SERVER_VENV / READY).is_file() and python.is_file() and llama_server() is not None
    return python if ready else None


def llama_cpp_python_env() -> dict[str, str]:
    """What llama-cpp-python's processes need in their environment: its bindings were installed without
    a library of their own (`LLAMA_BUILD=OFF`) and load the shared libllama built here."""
    return {"LLAMA_CPP_LIB_PATH": str(LIB_DIR)}


def converter() -> Path | None:
    """The sdist's `convert_hf_to_gguf.py`, or None."""
    path = LLAMA_CPP / "convert_hf_to_gguf.py"
    return path if path.is_file() else None


ROOT = Path(__file__).resolve().parents[1]
CONVERT_LIBS = PEERS_DIR / "convert-libs"  # what the converter imports that Demi does not (sentencepiece)
GGUF_DIR = PEERS_DIR / "gguf"
TINY_MODEL = "qwen2.5-coder-tiny"  # the name servers report: Qwen2.5-Coder's FIM family by name


def tiny_model_dir() -> Path:
    """benchmarks/qwen_standin.py --tiny (Qwen2.5-Coder's real tokenizer, hidden 64, 2 layers, seeded
    random weights), built once under PEERS_DIR: what `demi serve` loads and the GGUF is made from."""
    out = GGUF_DIR / TINY_MODEL
    if not (out / "model.safetensors").is_file():
        partial = GGUF_DIR / f"{TINY_MODEL}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        script = ROOT / "benchmarks" / "qwen_standin.py"
        subprocess.run([sys.executable, str(script), "--out", str(partial), "--tiny"], check=True, capture_output=True)
        shutil.rmtree(out, ignore_errors=True)
        partial.rename(out)
    return out


def tiny_gguf() -> Path:
    """`tiny_model_dir()` converted by the sdist's convert_hf_to_gguf.py (f16), built once."""
    gguf = GGUF_DIR / f"{TINY_MODEL}-f16.gguf"
    if gguf.is_file():
        return gguf
    convert = require_converter()
    src = tiny_model_dir()
    partial = gguf.with_suffix(".partial")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(LLAMA_CPP / "gguf-py"), str(CONVERT_LIBS)]))
    subprocess.run(
        [sys.executable, str(convert), str(src), "--outfile", str(partial), "--outtype", "f16"],
        check=True,
        capture_output=True,
        env=env,
    )
    partial.rename(gguf)
    return gguf


def _require(what: str, found: Path | None) -> Path:
    if found is not None:
        return found
    import pytest

    message = f"{what} is not built under {PEERS_DIR}: {INSTALL_HINT}"
    if os.environ.get("DEMI_REQUIRE_PEERS"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_llama_server() -> Path:
    return _require("llama-server", llama_server())


def require_llama_cpp_python() -> Path:
    return _require("llama-cpp-python[server]", llama_cpp_python())


def require_converter() -> Path:
    return _require("convert_hf_to_gguf.py", converter())


# -- building ------------------------------------------------------------------------------------------


def _run(cmd: list[str], **kwargs: object) -> None:
    print("peers:", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, **kwargs)  # type: ignore[call-overload]


def fetch_sdist(python: str) -> None:
    """llama-cpp-python's source release from the package index, unpacked under PEERS_DIR."""
    if converter() is not None and (LLAMA_CPP / "CMakeLists.txt").is_file():
        return
    download = PEERS_DIR / "download"
    download.mkdir(parents=True, exist_ok=True)
    archive = download / f"llama_cpp_python-{LLAMA_CPP_PYTHON}.tar.gz"
    if not archive.is_file():
        _run(
            [python, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps", "--no-binary",
             ":all:", "-d", str(download), f"llama-cpp-python=={LLAMA_CPP_PYTHON}"]
        )  # fmt: skip
    partial = PEERS_DIR / "unpacking"
    shutil.rmtree(partial, ignore_errors=True)
    with tarfile.open(archive) as tar:
        tar.extractall(partial, filter="data")
    shutil.rmtree(SDIST_DIR, ignore_errors=True)
    (partial / SDIST_DIR.name).rename(SDIST_DIR)
    shutil.rmtree(partial, ignore_errors=True)


def build_llama_cpp(jobs: int) -> None:
    """cmake: llama.cpp's shared libraries and `llama-server`, the one compile both peers use; an
    interrupted build resumes where it stopped."""
    if llama_server() is not None:
        return
    (BUILD_DIR / READY).unlink(missing_ok=True)
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", str(LLAMA_CPP), "-B", str(BUILD_DIR), *generator, *CMAKE_OPTIONS], stdout=subprocess.DEVNULL)
    _run(["cmake", "--build", str(BUILD_DIR), "--target", *CMAKE_TARGETS, "-j", str(jobs)])
    (BUILD_DIR / READY).touch()


def install_llama_cpp_python(python: str) -> None:
    """llama-cpp-python[server] from the unpacked sdist into its own virtual environment, compiling
    nothing (`LLAMA_BUILD=OFF`): its bindings load the libllama `build_llama_cpp` made, which is
    checked here by importing them."""
    if llama_cpp_python() is not None:
        return
    shutil.rmtree(SERVER_VENV, ignore_errors=True)
    _run([python, "-m", "venv", str(SERVER_VENV)])
    venv_python = str(SERVER_VENV / "bin" / "python")
    env = dict(os.environ, CMAKE_ARGS="-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF")
    _run([venv_python, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"{SDIST_DIR}[server]"], env=env)
    _run([venv_python, "-c", "import llama_cpp, llama_cpp.server.app"], env=dict(os.environ, **llama_cpp_python_env()))
    (SERVER_VENV / READY).touch()


def install_converter_libs(python: str) -> None:
    """sentencepiece, which the converter imports before it looks for a SentencePiece model (ours is
    byte-level BPE), into a folder of its own: on the converter's path only, not in Demi's venv."""
    if (CONVERT_LIBS / "sentencepiece").is_dir():
        return
    _run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(CONVERT_LIBS),
         "sentencepiece>=0.2"]
    )  # fmt: skip


def remove_old_layout() -> None:
    """The folders of the layout before the shared build (each peer compiled llama.cpp on its own)."""
    for name in OLD_LAYOUT:
        if (PEERS_DIR / name).exists():
            print(f"peers: removing {PEERS_DIR / name} (earlier layout)", flush=True)
            shutil.rmtree(PEERS_DIR / name)


def install(jobs: int) -> None:
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    remove_old_layout()
    python = sys.executable
    fetch_sdist(python)
    install_converter_libs(python)
    build_llama_cpp(jobs)
    install_llama_cpp_python(python)
    tiny_gguf()
    print(f"peers: ready in {PEERS_DIR}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="build the peers that are missing (idempotent)")
    inst.add_argument("-j", "--jobs", type=int, default=os.cpu_count() or 2)
    sub.add_parser("status", help="where each peer is, or that it is missing")
    args = parser.parse_args()
    if args.command == "install":
        install(args.jobs)
    else:
        for name, found in (("llama-server", llama_server()), ("llama-cpp-python", llama_cpp_python())):
            print(f"{name}: {found or 'missing'}")
        print(f"LLAMA_CPP_LIB_PATH={LIB_DIR}")


if __name__ == "__main__":
    main()
