"""demi-chat's command-line arguments (shared with `demi chat`) and the config flags they give."""

from __future__ import annotations

import argparse
from typing import Any

from demi.tui import commands as cmds


def build_parser(prog: str = "demi-chat") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Demi's terminal chat: chat about code, explain files, "
        "apply refactors; sessions are kept in the session store.",
    )
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser, model_flags: bool = True) -> None:
    p.add_argument("--session", "-S", metavar="ID", help="resume a session (an id or a unique prefix)")
    p.add_argument(
        "--server",
        metavar="URL",
        help="an OpenAI-compatible server (demi serve, vLLM, llama.cpp, Ollama) instead of loading the model here "
        "(default: $DEMI_SERVER, then `server` in the config file)",
    )
    if model_flags:
        p.add_argument(
            "--model",
            "-m",
            help="model name, directory or hub id (default: $DEMI_MODEL, then `model` in the config file, "
            "then demi-tiny)",
        )
        p.add_argument("--device", help="cpu (default), cuda, cuda:N or auto")
        p.add_argument("--dtype", default=None, help="auto (fp32 on CPU), float32, bfloat16, float16")
        p.add_argument("--context", type=int, default=None, help="context window to allocate (tokens)")
        p.add_argument("--quant", choices=cmds.QUANTS, default=None, help="weight quantization")
        p.add_argument("--debug", action="store_true", help="tracebacks instead of one-line errors")
    p.add_argument(
        "--temperature",
        "-t",
        type=float,
        default=None,
        metavar="T",
        help="sampling temperature for chat answers (default: $DEMI_CHAT_TEMPERATURE, then chat.temperature in "
        "the config file, then 0 = greedy)",
    )


def flags_from(args: argparse.Namespace) -> dict[str, Any]:
    dtype = getattr(args, "dtype", None)
    return {
        "model": getattr(args, "model", None),
        "server": getattr(args, "server", None),
        "device": getattr(args, "device", None),
        "context": getattr(args, "context", None),
        "dtype": None if dtype in (None, "auto") else dtype,
        "quant": getattr(args, "quant", None),
        "chat.temperature": getattr(args, "temperature", None),
    }
