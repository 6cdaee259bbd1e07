"""benchmarks/speculation.py's ceiling (`--oracle`): drafts that are never wrong must be what the
engine's loop then accepts in full, so the speed-up it times is the most any draft source can give."""

from __future__ import annotations

from pathlib import Path

from helpers import load_script
from test_speculation import _gen, _repeated_prompt

from demi.model.check_cost import Price, check_cost
from demi.model.engine import LocalModel
from demi.model.lookup import PromptLookup

ROOT = Path(__file__).resolve().parents[2]


def test_perfect_drafts_are_all_accepted_and_change_nothing(tiny_checkpoints):
    bench = load_script(ROOT / "benchmarks" / "speculation.py")
    model = LocalModel.load(str(tiny_checkpoints("llama"))).model
    check_cost(model).pin(Price(fixed=5.0, row=5.0))  # prompt lookup would draft nothing at this price
    prompt = _repeated_prompt(model.config.vocab_size)
    plain, _, _ = _gen(model, prompt, max_new_tokens=40)
    with bench.perfect_drafts(plain):
        spec, _, run = _gen(model, prompt, max_new_tokens=40, speculate=4)
    assert spec == plain
    assert run.drafted > 0 and run.accepted == run.drafted  # every draft kept
    assert run.steps == 8 and run.drafted == 32  # 40 tokens, 5 a pass: each a token and 4 kept drafts
    import demi.model.generate as gen_module

    assert gen_module.PromptLookup is PromptLookup  # put back after the block
    check_cost(model).pin(None)
