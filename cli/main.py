"""The `demi` command line: argument parsing, output and the error contract of DESIGN.md.

User errors print one line on stderr and exit 2; runtime failures exit 1; a traceback only
with --debug. `--json` prints exactly one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

EXIT_USER, EXIT_RUNTIME = 2, 1


class UsageError(Exception):
    """Bad command-line usage detected after parsing."""


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


def common(json_flag: bool = True, model: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    if model:
        p.add_argument(
            "--model",
            "-m",
            help="model name, local directory or hub id (default: config, then $DEMI_MODEL, then demi-tiny)",
        )
        p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:N or auto")
        p.add_argument("--dtype", default="auto", help="auto (fp32 on CPU), float32, bfloat16, float16")
        p.add_argument("--context", type=int, default=None, help="context window to allocate (tokens)")
        p.add_argument(
            "--quant",
            default=None,
            choices=["none", "int8", "int4", "nf4", "auto"],
            help="weight quantization: int8/int4 on CPU, int8/nf4 (bitsandbytes) on CUDA, "
            "auto picks by device and free memory (default: auto, int8 on CPU)",
        )
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    return p


def build_parser() -> Parser:
    from demi.cli import commands_engine, commands_models

    parser = Parser(prog="demi", description="Demi: a local, private coding assistant.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    eval_kinds = commands_engine.register(sub, common)  # `demi eval KIND`: commands_train adds kinds too
    commands_models.register(sub, common)
    from demi.cli import commands_serve

    commands_serve.register(sub, common)
    from demi.cli import commands_assist

    commands_assist.register(sub, common)
    from demi.cli import commands_train

    commands_train.register(sub, common, eval_kinds)
    from demi.cli import commands_chat

    commands_chat.register(sub, common)
    from demi.cli import commands_lsp

    commands_lsp.register(sub, common)
    return parser


def _version() -> str:
    from demi import __version__

    return f"demi {__version__}"


def emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="demi: %(message)s")
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "func", None):
            parser.print_help(sys.stderr)
            return EXIT_USER
        run: Callable[[argparse.Namespace], int | None] = args.func
        return run(args) or 0
    except UsageError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USER
    except KeyboardInterrupt:
        print("demi: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_RUNTIME
    except Exception as exc:  # the contract: one line, exit 2 for user errors, 1 otherwise
        from demi.assistant.errors import DemiUserError

        if debug:
            traceback.print_exc()
        user = isinstance(exc, DemiUserError)
        kind = "error" if user else "runtime error"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"demi: {kind}: {text}", file=sys.stderr)
        return EXIT_USER if user else EXIT_RUNTIME


if __name__ == "__main__":
    raise SystemExit(main())
