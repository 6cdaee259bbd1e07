"""The FIM prompt budget (lsp/prompt_budget.py): contextTokens, or fewer so that a completion fits
targetLatencyMs at the speed measured on this machine; and the host measures a real model's speed
after loading and sizes completions from it."""

from __future__ import annotations

from demi.lsp.engine_host import EngineHost
from demi.lsp.prompt_budget import EXPECTED_TOKENS, MIN_BUDGET, SERVER_OVERHEAD_MS, prompt_budget
from demi.lsp.settings import LspSettings

FAST = {"prefill_ms_per_token": 0.01, "decode_ms_per_token": 0.5}
SLOW = {"prefill_ms_per_token": 0.1, "decode_ms_per_token": 0.7}


def test_a_fast_machine_keeps_the_whole_budget_and_a_slow_one_gets_what_fits():
    assert prompt_budget(1024, 100, 64, FAST) == 1024
    room = 100 - SERVER_OVERHEAD_MS - SLOW["decode_ms_per_token"] * EXPECTED_TOKENS
    assert prompt_budget(1024, 100, 64, SLOW) == int(room / SLOW["prefill_ms_per_token"])
    assert 600 < prompt_budget(1024, 100, 64, SLOW) < 700
    assert prompt_budget(1024, 100, 4, SLOW) > prompt_budget(1024, 100, 64, SLOW)  # fewer tokens to decode


def test_no_target_no_measurement_or_a_hopeless_target_keep_sane_budgets():
    assert prompt_budget(1024, 0, 64, SLOW) == 1024  # 0: off
    assert prompt_budget(1024, 100, 64, None) == 1024  # not measured yet
    assert prompt_budget(1024, 5, 64, SLOW) == MIN_BUDGET  # never below the floor...
    assert prompt_budget(300, 5, 64, SLOW) == 300  # ...unless contextTokens itself is lower


def test_the_host_measures_the_loaded_model_and_sizes_completions_from_it(tiny_checkpoints):
    host = EngineHost(probe=False)
    settings = LspSettings(model=str(tiny_checkpoints("qwen2")), quant="int8", context_tokens=900)
    try:
        host.configure(settings).result(timeout=120)
        host.engine().measure_speed().result(timeout=60)  # queued behind the host's own measurement
        for _ in range(200):
            if host.speed is not None:
                break
            host.runner.call(lambda: None).result(timeout=60)
        speed = host.speed
        assert speed is not None and speed["prefill_ms_per_token"] > 0 and speed["decode_ms_per_token"] > 0
        assert host.status()["prefillMsPerToken"] == round(speed["prefill_ms_per_token"], 4)
        expected = prompt_budget(900, settings.target_latency_ms, settings.max_tokens, speed)
        assert host.prompt_budget(settings) == expected
        off = LspSettings(model=settings.model, quant="int8", context_tokens=900, target_latency_ms=0)
        assert host.prompt_budget(off) == 900
    finally:
        host.close()
