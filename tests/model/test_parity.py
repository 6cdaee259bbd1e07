"""Demi's decoder against transformers on tiny random checkpoints of every family.

Logits must agree within 1e-4 (fp32) for a whole sequence and token by token through the KV
cache; greedy generation must be token-identical for 32 tokens; perplexity must match
transformers' loss.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from hf_models import FAMILIES, LIGHTNING_FAMILIES, ROPE_VARIANTS, VOCAB, save_family

from demi.model.decoder import KVCache
from demi.model.generate import GenerationRequest, generate
from demi.model.loading import load_model

transformers = pytest.importorskip("transformers")
TOL = 1e-4
CASES = [(f, None) for f in FAMILIES] + [("llama", r) for r in ROPE_VARIANTS] + [(f, None) for f in LIGHTNING_FAMILIES]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c[0] + (f"-{c[1]}" if c[1] else ""))
def pair(request, tmp_path_factory):
    name, rope = request.param
    out = tmp_path_factory.mktemp(name + (rope or ""))
    save_family(name, out, rope=rope)
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    return hf, load_model(out)


def _ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (1, n), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_full_sequence_logits(pair):
    hf, ours = pair
    ids = _ids(40)
    diff = (hf(ids).logits - ours(ids)).abs().max().item()
    assert diff < TOL, diff


# transformers 5.24 renamed forward's `past_key_values` to `cache` (the old name warns, then goes).
_HF_CACHE_ARG = (
    "cache" if "cache" in inspect.signature(transformers.LlamaForCausalLM.forward).parameters else "past_key_values"
)


def _chunks(n: int) -> list[tuple[int, int]]:
    """Prefill 10 tokens, a chunk of 7 at an offset (the prefix-cache path), then one at a time."""
    return [(0, 10), (10, 17)] + [(i, i + 1) for i in range(17, n)]


def _hf_cache(hf):
    """transformers' cache for `hf`: MiniMax's own (lightning states beside the keys and values), or
    None where its chunked forward cannot run: MiniMaxCache counts cached tokens on layer 0, which a
    lightning layer never fills, so with lightning first and softmax later its masks come out short
    (its generate() passes positions and works; there the full-sequence pass is the reference)."""
    if hf.config.model_type != "minimax":
        return transformers.DynamicCache(config=hf.config)
    from transformers.models.minimax.modeling_minimax import MiniMaxCache

    types = hf.config.layer_types
    return None if types[0] == "linear_attention" and "full_attention" in types else MiniMaxCache()


@torch.no_grad()
def test_kv_cache_decoding_matches_transformers(pair):
    hf, ours = pair
    ids = _ids(40, seed=2)
    cache, hf_cache = KVCache(ours.config, 64), _hf_cache(hf)
    got = torch.cat([ours(ids[:, a:b], start=a, cache=cache) for a, b in _chunks(40)], dim=1)
    if hf_cache is not None:
        ref = torch.cat(
            [hf(ids[:, a:b], use_cache=True, **{_HF_CACHE_ARG: hf_cache}).logits for a, b in _chunks(40)], dim=1
        )
        assert (ref - got).abs().max().item() < TOL
    assert cache.length == 40
    if (ours.config.rope_scaling or {}).get("rope_type") != "dynamic":
        # Dynamic NTK re-scales every position when the sequence grows, so only there does the
        # cached path legitimately differ from one full-sequence pass (in transformers too).
        assert (hf(ids).logits - got).abs().max().item() < TOL


def test_greedy_generation_is_token_identical(pair):
    hf, ours = pair
    prompt = _ids(12, seed=3)
    with torch.no_grad():
        ref = hf.generate(prompt, max_new_tokens=32, do_sample=False, pad_token_id=0)[0, 12:].tolist()
    got = list(generate(ours, GenerationRequest(prompt[0].tolist(), 32)))
    assert got == ref


@torch.no_grad()
def test_loss_matches_transformers(pair):
    hf, ours = pair
    ids = _ids(48, seed=4)
    ref = hf(ids, labels=ids).loss.item()
    logits = ours(ids)[0, :-1]
    got = torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item()
    assert math.isclose(ref, got, abs_tol=TOL), (ref, got)
