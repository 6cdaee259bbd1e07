"""The real servers the remote-engine tests talk to ("peers"), built once and cached outside the repository.

Demi is a client of the servers teams already run. Two of them run on a CPU here and are built from one
source release, llama-cpp-python's sdist (`LLAMA_CPP_PYTHON`), which vendors llama.cpp:

- llama.cpp's own `llama-server`, built with cmake from the vendored sources (only that target);
- llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`), installed with its
  `[server]` extra in a virtual environment of its own: peers are test peers, never Demi's dependencies;
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
BUILD_DIR = PEERS_DIR / f"llama-server-{LLAMA_CPP_PYTHON}-build"
SERVER_VENV = PEERS_DIR / f"llama-cpp-python-{LLAMA_CPP_PYTHON}-venv"
INSTALL_HINT = "build them with `python tests/peers.py install` (make test does)"

# llama-server only: no tests, examples, web UI (it would be fetched), HTTPS or curl.
CMAKE_OPTIONS = [
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DGGML_NATIVE=ON",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
]


def llama_server() -> Path | None:
    """The built `llama-server` binary, or None."""
    path = BUILD_DIR / "bin" / "llama-server"
    return path if path.is_file() and os.access(path, os.X_OK) else None


def llama_cpp_python() -> Path | None:
    """The Python of the virtual environment that has `llama_cpp.server`, or None."""
    python = SERVER_VENV / "bin" / "python"
    return python if (SERVER_VENV / ".demi-peer-ready").is_file() and python.is_file() else None


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


def build_llama_server(jobs: int) -> None:
    """cmake, the `llama-server` target only; an interrupted build resumes where it stopped."""
    if llama_server() is not None:
        return
    generator = ["-G", "Ninja"] if shutil.which("ninja") else []
    _run(["cmake", "-S", str(LLAMA_CPP), "-B", str(BUILD_DIR), *generator, *CMAKE_OPTIONS])
    _run(["cmake", "--build", str(BUILD_DIR), "--target", "llama-server", "-j", str(jobs)])


def install_llama_cpp_python(python: str) -> None:
    """llama-cpp-python[server] in its own virtual environment (pip builds its wheel once and caches it)."""
    if llama_cpp_python() is not None:
        return
    _run([python, "-m", "venv", str(SERVER_VENV)])
    pip = [str(SERVER_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # libllama and ggml only: no multimodal library (llama_cpp imports it only for image chats)
    env = dict(os.environ, CMAKE_ARGS=os.environ.get("CMAKE_ARGS", "-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF"))
    _run([*pip, f"llama-cpp-python[server]=={LLAMA_CPP_PYTHON}"], env=env)
    (SERVER_VENV / ".demi-peer-ready").touch()


def install_converter_libs(python: str) -> None:
    """sentencepiece, which the converter imports before it looks for a SentencePiece model (ours is
    byte-level BPE), into a folder of its own: on the converter's path only, not in Demi's venv."""
    if (CONVERT_LIBS / "sentencepiece").is_dir():
        return
    _run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(CONVERT_LIBS),
         "sentencepiece>=0.2"]
    )  # fmt: skip


def install(jobs: int) -> None:
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    python = sys.executable
    fetch_sdist(python)
    install_converter_libs(python)
    build_llama_server(jobs)
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


if __name__ == "__main__":
    main()
