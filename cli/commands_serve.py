"""`demi serve`: the OpenAI-compatible HTTP server (demi.serve.server) from the command line."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from demi.cli.main import UsageError, emit_json

DEFAULT_PORT = 8642


def register(sub, common) -> None:
    s = sub.add_parser(
        "serve",
        parents=[common()],
        help="OpenAI-compatible HTTP server for one model",
        description="Serve the model over an OpenAI-compatible HTTP API (/v1/models, /v1/completions with "
        "`suffix` for FIM, /v1/chat/completions, SSE streaming). Binds 127.0.0.1 by default; "
        "any other address needs an API key. Prints 'demi serve: listening on URL (model NAME)' "
        "on stderr when ready (with --json, also one JSON object on stdout).",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    s.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every request (default: $DEMI_API_KEY); "
        "mandatory on a non-loopback --host",
    )
    s.add_argument(
        "--parallel",
        type=int,
        default=4,
        help="generations advanced at once, round-robin (capped by the engine's KV slots; default 4)",
    )
    s.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a slot (default 64)")
    s.add_argument(
        "--speculate",
        type=int,
        default=None,
        metavar="K",
        help="draft tokens per step of speculative decoding from the prompt for chat requests "
        "(default: the config's `speculate`, 8; 0 = off; greedy output is unchanged; a request's "
        "`speculate` field wins, and completions speculate only when they ask)",
    )
    s.add_argument("--verbose", "-v", action="store_true", help="log one line per request")
    s.set_defaults(func=cmd_serve)


def _settings(args: argparse.Namespace):
    """Model options: flags over `DEMI_*` variables over the config file."""
    from demi.assistant.config import load_config

    return load_config(
        {
            "model": args.model,
            "device": args.device,
            "context": args.context,
            "dtype": None if args.dtype == "auto" else args.dtype,
            "quant": getattr(args, "quant", None),
            "speculate": getattr(args, "speculate", None),
        }
    )


def _stop_on_sigterm() -> None:
    """SIGTERM (systemd, docker stop) stops the server like Ctrl-C: a clean shutdown and exit 0."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, handler)


def cmd_serve(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise UsageError(f"demi serve: --port must be between 0 and 65535, got {args.port}")
    if args.parallel < 1 or args.max_queue < 0:
        raise UsageError("demi serve: --parallel must be >= 1 and --max-queue >= 0")
    if args.speculate is not None and args.speculate < 0:
        raise UsageError(f"demi serve: --speculate must be >= 0 (0 turns it off), got {args.speculate}")
    from demi.serve.server import BindingRefused, check_binding

    api_key = args.api_key if args.api_key is not None else os.environ.get("DEMI_API_KEY") or None
    try:
        check_binding(args.host, api_key)  # before loading the model: a refusal is instant
    except BindingRefused as exc:
        raise UsageError(str(exc)) from None
    if args.verbose or args.debug:
        logging.getLogger("demi.serve").setLevel(logging.INFO)

    from demi.assistant.engines import load_local_model
    from demi.serve.server import bind_socket, create_app, run, url_for

    try:
        sock = bind_socket(args.host, args.port)  # fail fast (port taken) before loading the model
    except OSError as exc:
        reason = exc.strerror or exc
        raise UsageError(f"demi serve: cannot listen on {args.host}:{args.port}: {reason}") from None
    try:
        cfg = _settings(args)
        model = load_local_model(cfg)
        app = create_app(
            model,
            api_key=api_key,
            max_active=args.parallel,
            max_queue=args.max_queue,
            log_requests=bool(args.verbose or args.debug),
            speculate=cfg["speculate"],
        )
        url = url_for(sock)

        def ready() -> None:
            print(f"demi serve: listening on {url} (model {model.name})", file=sys.stderr, flush=True)
            if args.json:
                emit_json(
                    {
                        "url": url,
                        "host": sock.getsockname()[0],
                        "port": sock.getsockname()[1],
                        "model": model.name,
                        "context": model.context,
                    }
                )

        _stop_on_sigterm()
        try:
            run(app, sock, on_ready=ready)
        except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised the signal: a normal stop
            pass
    finally:
        sock.close()
    return 0
