"""`demi generate` and `demi eval perplexity`: the engine's raw abilities from the command line."""

from __future__ import annotations

import argparse
import sys
import time

from .main import UsageError, emit_json


def register(sub, common) -> None:
    g = sub.add_parser("generate", parents=[common()], help="raw generation from a prompt",
                       description="Generate from a prompt, encoded as the model's tokenizer does "
                                   "by default; streams the text unless --json.")
    g.add_argument("--prompt", "-p", help="the prompt text ('-' reads standard input)")
    g.add_argument("--max-tokens", "-n", type=int, default=128)
    g.add_argument("--temperature", "-t", type=float, default=0.0, help="0 (default) is greedy")
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--time-budget", type=float, default=None, help="stop after this many seconds")
    g.add_argument("--no-special-tokens", action="store_true",
                   help="do not add the tokenizer's special tokens (e.g. BOS) to the prompt")
    g.set_defaults(func=cmd_generate)

    ev = sub.add_parser("eval", help="evaluate a model").add_subparsers(
        dest="eval_command", metavar="KIND", required=True)
    ppl = ev.add_parser("perplexity", parents=[common()], help="mean NLL per token of text files",
                        description="Mean negative log-likelihood per token (natural log) over the "
                                    "files; each file tokenized as the tokenizer does by default and "
                                    "its first token not scored.")
    ppl.add_argument("files", nargs="+", metavar="FILE")
    ppl.set_defaults(func=cmd_perplexity)


def _engine(args: argparse.Namespace):
    from demi.assistant.engines import open_engine

    return open_engine(args.model, device=args.device, dtype=args.dtype, context=args.context)


def cmd_generate(args: argparse.Namespace) -> int:
    from demi.assistant.engines import Sampling

    prompt = args.prompt
    if prompt is None:
        raise UsageError("demi generate: --prompt TEXT is required")
    if prompt == "-":
        prompt = sys.stdin.read()
    if args.max_tokens < 0:
        raise UsageError("demi generate: --max-tokens must be >= 0")
    sampling = Sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty, args.seed)
    engine = _engine(args)
    stream = None if args.json else (lambda piece: (sys.stdout.write(piece), sys.stdout.flush()))
    result = engine.complete(prompt, on_text=stream, max_new_tokens=args.max_tokens, sampling=sampling,
                             stop=args.stop, time_budget=args.time_budget,
                             add_special_tokens=not args.no_special_tokens)
    if args.json:
        emit_json({"text": result.text, "token_ids": result.token_ids, "model": engine.name,
                   "prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
                   "finish_reason": result.finish_reason, "seconds": round(result.seconds, 4)})
    else:
        sys.stdout.write("\n")
    return 0


def cmd_perplexity(args: argparse.Namespace) -> int:
    from demi.assistant.files import read_text_file

    texts = [read_text_file(f) for f in args.files]  # fail on a bad file before loading the model
    engine = _engine(args)
    started = time.monotonic()
    res = engine.perplexity(texts)
    out = {"tokens": res["tokens"], "nll": res["nll"], "perplexity": res["perplexity"],
           "files": len(texts), "model": engine.name, "seconds": round(time.monotonic() - started, 4)}
    if args.json:
        emit_json(out)
    else:
        print(f"{out['tokens']} tokens  nll {out['nll']:.4f}  perplexity {out['perplexity']:.3f}")
    return 0
