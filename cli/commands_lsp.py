"""`demi lsp`: the language server (the same as the `demi-lsp` console script)."""

from __future__ import annotations

import argparse


def register(sub, common) -> None:
    p = sub.add_parser(
        "lsp",
        parents=[common(json_flag=False, model=False)],
        help="language server for editors (LSP over stdio; --tcp PORT)",
        description="Run Demi's language server: inline completion (LSP 3.18) with a completion "
        "fallback, and code actions to explain and refactor. Editors start it over "
        "stdio; --tcp PORT listens on 127.0.0.1 instead. Settings come from the "
        "config file, DEMI_* variables, these flags, then the editor's "
        "initializationOptions and workspace/didChangeConfiguration.",
    )
    # the flags of `demi-lsp` (demi.lsp.server.add_arguments), without importing pygls for every command
    p.add_argument("--stdio", action="store_true", help="talk LSP over stdin/stdout (the default)")
    p.add_argument("--tcp", type=int, metavar="PORT", default=None, help="listen on PORT instead of stdio")
    p.add_argument("--host", default="127.0.0.1", help="address for --tcp (default 127.0.0.1)")
    p.add_argument("--log-file", default=None, help="write the server's log here (stderr by default)")
    p.add_argument(
        "--model",
        "-m",
        default=None,
        help="model name, directory or hub id (default: $DEMI_MODEL, then the config file, then demi-tiny)",
    )
    p.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="an OpenAI-compatible server (demi serve) instead of the in-process model",
    )
    p.add_argument("--quant", default=None, choices=["none", "int8", "int4", "nf4", "auto"])
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or auto")
    p.add_argument("--context", type=int, default=None, help="context window to allocate (tokens)")
    p.set_defaults(func=cmd_lsp)


def cmd_lsp(args: argparse.Namespace) -> int:
    from demi.lsp.server import serve

    return serve(args)
