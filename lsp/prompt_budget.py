"""The FIM prompt budget an editor's completion gets: `contextTokens`, or fewer where this machine
could not answer in `targetLatencyMs` with that many.

A cold completion's time is mostly its prompt's prefill, which grows with the prompt (demi-tiny
int8 through demi-lsp on a 2-core AVX-512 Xeon: invoked p50 123 ms at 1,024 tokens, 84 ms at 640,
72 ms at 512; benchmarks/RESULTS.md), and the prefill speed differs several times between the CPUs
users have (AVX2 about 1.7x slower than AVX-512 for the same model). So the budget is sized from
the model's speed measured on this machine after it loads (`InProcessEngine.measure_speed`):
what the prefill of the prompt plus `EXPECTED_TOKENS` decode steps and the server's own work
(`SERVER_OVERHEAD_MS`) fit in the target, never below `MIN_BUDGET` tokens (below that a code model
sees too little of the file: held-out exact match 13.3% at 1,024 tokens, 12.0% at 640 and 512, and
9% with budgets near 300; benchmarks/RESULTS.md) and never above `contextTokens`.
"""

from __future__ import annotations

from collections.abc import Mapping

MIN_BUDGET = 512
# Decoded tokens to expect: completions stop at the line's end far more often than at the cap
# (held-out lines average about 11 tokens on demi-tiny), so a cap above this does not count in full.
EXPECTED_TOKENS = 16
# demi-lsp's work around the model for one request (parsing, the prompt, the workspace cache,
# post-processing, JSON-RPC): invoked latency minus the model's prefill and decode at the measured
# speeds was 15-20 ms in benchmarks/lsp_bench.py's contextTokens arms (demi-tiny, 2-core Xeon).
SERVER_OVERHEAD_MS = 20.0


def prompt_budget(context_tokens: int, target_ms: float, max_tokens: int, speed: Mapping[str, float] | None) -> int:
    """The prompt tokens a completion may use: `context_tokens` when there is no target (0) or no
    measured `speed` yet, else as many as fit in `target_ms` (see the module docstring)."""
    if not target_ms or not speed:
        return context_tokens
    decode = speed["decode_ms_per_token"] * min(max_tokens, EXPECTED_TOKENS)
    room = target_ms - SERVER_OVERHEAD_MS - decode
    per_token = speed["prefill_ms_per_token"]
    fits = int(room / per_token) if per_token > 0 else context_tokens
    return max(min(MIN_BUDGET, context_tokens), min(context_tokens, fits))
