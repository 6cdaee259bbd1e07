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
        "any other address needs an API key or a keys file. Prints 'demi serve: listening on URL (model NAME)' "
        "on stderr when ready (with --json, also one JSON object on stdout). For a team: named keys in a "
        "keys file (`demi serve keys add NAME`), usage per key at /v1/demi/usage, Prometheus metrics at /metrics.",
    )
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    s.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' on every request (default: $DEMI_API_KEY); one key named "
        "'default' with the admin role. A non-loopback --host needs this or --keys-file",
    )
    s.add_argument(
        "--keys-file",
        default=None,
        metavar="PATH",
        help="named API keys (TOML, SHA-256 of each key; written by `demi serve keys add`), re-read when it "
        "changes so a revoked key stops working at once (default: $DEMI_KEYS_FILE)",
    )
    s.add_argument(
        "--parallel",
        type=int,
        default=4,
        help="generations advanced at once, their decode steps batched (capped by the engine's KV slots; default 4)",
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
    s.add_argument(
        "--cache-reuse",
        type=int,
        default=None,
        metavar="N",
        help="completions: reuse cached runs of at least N tokens found later in a changed prompt (the suffix of "
        "a prefix-first FIM prompt as the user types) at their new positions instead of recomputing them; "
        "approximate, drift-bounded (default: the config's `cache_reuse`, 16; 0 = exact reuse only)",
    )
    s.add_argument("--verbose", "-v", action="store_true", help="log one line per request")
    s.set_defaults(func=cmd_serve)
    _register_keys(s, common)


def _register_keys(serve: argparse.ArgumentParser, common) -> None:
    """`demi serve keys add|list|revoke`: the keys file, edited atomically (mode 0600)."""
    from demi.serve.keys import ROLES

    sub = serve.add_subparsers(dest="serve_command", metavar="keys")
    keys = sub.add_parser(
        "keys",
        help="manage the named API keys of `demi serve --keys-file`",
        description="Add, list and revoke the named API keys a team's `demi serve --keys-file PATH` accepts. The "
        "file holds only each key's SHA-256; a running server re-reads it when it changes.",
    )
    actions = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)

    def action(name: str, help: str, func) -> argparse.ArgumentParser:
        p = actions.add_parser(name, parents=[common(model=False)], help=help, description=help)
        p.add_argument(
            "--keys-file",
            default=argparse.SUPPRESS,  # `demi serve --keys-file X keys ...` keeps X
            metavar="PATH",
            help="the keys file (default: $DEMI_KEYS_FILE, then serve-keys.toml in Demi's config folder)",
        )
        p.set_defaults(func=func)
        return p

    add = action("add", "add a key: prints the new key once, on stdout (the file keeps only its SHA-256)", cmd_keys_add)
    add.add_argument("name", help="the key's name: letters, digits, '_' or '-' (it labels usage and metrics)")
    add.add_argument(
        "--role",
        choices=ROLES,
        default="user",
        help="user: every route but /metrics, its own usage (default); admin: everything, everyone's usage; "
        "metrics: /metrics and /health only (a Prometheus scraper)",
    )
    action("list", "list the keys: name, role, creation time, fingerprint (never the key)", cmd_keys_list)
    revoke = action("revoke", "remove a key; a running server refuses it from its next request", cmd_keys_revoke)
    revoke.add_argument("name", help="the key's name")


def _keys_path(args: argparse.Namespace):
    from pathlib import Path

    from demi.serve.keys import default_keys_path

    given = getattr(args, "keys_file", None) or os.environ.get("DEMI_KEYS_FILE")
    return Path(given).expanduser() if given else default_keys_path()


def cmd_keys_add(args: argparse.Namespace) -> int:
    from demi.serve.keys import add_key

    path = _keys_path(args)
    key = add_key(path, args.name, args.role)
    if args.json:
        emit_json({"name": args.name, "role": args.role, "key": key, "keys_file": str(path)})
    else:
        print(key, flush=True)
    print(
        f"demi serve: added key {args.name!r} (role {args.role}) to {path}; it is shown only this once. "
        f"Serve with: demi serve --keys-file {path}",
        file=sys.stderr,
    )
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    from demi.serve.keys import read_keys

    path = _keys_path(args)
    keys = sorted(read_keys(path).values(), key=lambda k: k.name)
    rows = [{"name": k.name, "role": k.role, "created": k.created, "sha256": k.sha256} for k in keys]
    if args.json:
        emit_json({"keys_file": str(path), "keys": rows})
        return 0
    print(f"{len(keys)} key{'s' if len(keys) != 1 else ''} in {path}")
    width = max([len(k.name) for k in keys] + [4])
    for k in keys:
        print(f"  {k.name:<{width}}  {k.role:<7}  {k.created or '-':<20}  sha256:{k.sha256[:12]}")
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from demi.serve.keys import revoke_key

    path = _keys_path(args)
    revoke_key(path, args.name)
    if args.json:
        emit_json({"revoked": args.name, "keys_file": str(path)})
    print(
        f"demi serve: revoked key {args.name!r} in {path}; a running server refuses it from its next request",
        file=sys.stderr,
    )
    return 0


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
            "cache_reuse": getattr(args, "cache_reuse", None),
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
    if args.cache_reuse is not None and args.cache_reuse < 0:
        raise UsageError(f"demi serve: --cache-reuse must be >= 0 (0 turns it off), got {args.cache_reuse}")
    from demi.serve.binding import BindingRefused, check_binding
    from demi.serve.keys import KeyRing

    api_key = args.api_key if args.api_key is not None else os.environ.get("DEMI_API_KEY") or None
    keys_file = args.keys_file or os.environ.get("DEMI_KEYS_FILE") or None
    try:
        check_binding(args.host, api_key, keys_file)  # before loading the model: a refusal is instant
    except BindingRefused as exc:
        raise UsageError(str(exc)) from None
    KeyRing(api_key, keys_file)  # a bad keys file: one line now, not after loading the model
    if args.verbose or args.debug:
        logging.getLogger("demi.serve").setLevel(logging.INFO)

    from demi.assistant.engines import load_local_model
    from demi.cli.progress_display import showing_progress
    from demi.serve.server import bind_socket, create_app, run, url_for

    try:
        sock = bind_socket(args.host, args.port)  # fail fast (port taken) before loading the model
    except OSError as exc:
        reason = exc.strerror or exc
        raise UsageError(f"demi serve: cannot listen on {args.host}:{args.port}: {reason}") from None
    try:
        cfg = _settings(args)
        with showing_progress(f"loading {cfg['model']}", args.json):
            model = load_local_model(cfg)
        app = create_app(
            model,
            api_key=api_key,
            keys_file=keys_file,
            max_active=args.parallel,
            max_queue=args.max_queue,
            log_requests=bool(args.verbose or args.debug),
            speculate=cfg["speculate"],
            cache_reuse=cfg["cache_reuse"],
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
