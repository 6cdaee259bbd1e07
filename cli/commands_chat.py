"""`demi chat`: the terminal chat (the same app as `demi-chat`), started from the `demi` command."""

from __future__ import annotations

import argparse


def register(sub, common) -> None:
    p = sub.add_parser(
        "chat",
        parents=[common(json_flag=False)],
        help="the terminal chat (demi-chat)",
        description="Chat about code, explain files and apply refactors in a terminal UI. "
        "Sessions are kept in the session store, shared with the CLI and editors.",
    )
    p.add_argument("--session", "-S", metavar="ID", help="resume a session (an id or a unique prefix)")
    p.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="an OpenAI-compatible server (demi serve, vLLM, llama.cpp, Ollama) instead of loading the "
        "model here (default: config, then $DEMI_SERVER)",
    )
    p.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from demi.tui.app import run

    return run(args)
