"""`demi chat`: the terminal chat (the same app as `demi-chat`), started from the `demi` command."""

from __future__ import annotations

import argparse


def register(sub, common) -> None:
    from demi.tui.arguments import add_arguments

    p = sub.add_parser(
        "chat",
        parents=[common(json_flag=False)],
        help="the terminal chat (demi-chat)",
        description="Chat about code, explain files and apply refactors in a terminal UI. "
        "Sessions are kept in the session store, shared with the CLI and editors.",
    )
    add_arguments(p, model_flags=False)  # demi-chat's own flags (--session, --server, --temperature), one definition
    p.set_defaults(func=cmd_chat)


def cmd_chat(args: argparse.Namespace) -> int:
    from demi.tui.app import run

    return run(args)
