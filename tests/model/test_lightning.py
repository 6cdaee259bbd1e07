"""MiniMax-Text-01's lightning layers (model/lightning.py, model/minimax.py) beyond the parity tests
(tests/model/test_parity.py runs both tiny hybrids of tests/hf_models.py's LIGHTNING_FAMILIES against
transformers): the block form is the recurrence, the slopes are transformers', the cache of a
lightning layer is a fixed-size state that goes back only within its last pass (and says so in one
line past that), and the engine's features on a hybrid stack: speculative decoding, batched decode
steps, the prefix cache, padded prefills, int8, saving; the size figures of `demi models info`.
"""

from __future__ import annotations

import math

import pytest
import torch
from hf_models import LIGHTNING_FAMILIES, build_hf_model

from demi.model.batch import decode_batch
from demi.model.check_cost import Price, check_cost
from demi.model.config import LIGHTNING, SOFTMAX, ModelConfig, load_config
from demi.model.decoder import KVCache, Transformer
from demi.model.engine import LocalModel
from demi.model.errors import ConfigError
from demi.model.generate import GenerationRequest, Run, decode_one_token, generate, prefill
from demi.model.info import count_parameters, format_info, kv_cache_bytes, model_info, parameter_shapes
from demi.model.lightning import REWIND_ROWS, LightningAttention, absorb_blocks, absorb_steps, slopes, state_bytes
from demi.model.loading import load_model, save_model
from demi.model.presets import get_preset
from demi.model.quantize import Int8Linear

transformers = pytest.importorskip("transformers")
TOL = 1e-4


@pytest.fixture(scope="module", params=list(LIGHTNING_FAMILIES))
def lm(request, tiny_checkpoints) -> LocalModel:
    model = LocalModel.load(str(tiny_checkpoints(request.param)), context=256)
    # checks priced at nothing: whether drafting pays on a tiny random model is its own timings' call,
    # and these tests need the speculative path to run
    check_cost(model.model).pin(Price(fixed=0.0, row=0.0))
    return model


def _ids(n: int, seed: int) -> list[int]:
    return [1, *torch.randint(3, 500, (n - 1,), generator=torch.Generator().manual_seed(seed)).tolist()]


# --- the math ------------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 5, 16, 64])
def test_blocks_are_the_recurrence(block):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 37, 8, generator=g) for _ in range(3))
    start = torch.randn(2, 3, 8, 8, generator=g)
    s = slopes(3, 1, 4)
    out_blocks, kv_blocks = absorb_blocks(q, k, v, start, s, block)
    out_steps, kv_steps = absorb_steps(q, k, v, start, torch.exp(-s)[:, None, None])
    assert out_blocks is not None and out_steps is not None
    torch.testing.assert_close(out_blocks, out_steps, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(kv_blocks, kv_steps, atol=1e-4, rtol=1e-4)
    # the definition: S_t = sum over s <= t of lambda^(t - s) k_s^T v_s (from the starting state)
    lam = torch.exp(-s)[:, None, None]
    want = lam**37 * start + sum(lam ** (36 - t) * k[:, :, t, :, None] @ v[:, :, t, None, :] for t in range(37))
    torch.testing.assert_close(kv_steps, want, atol=1e-4, rtol=1e-4)


def test_slopes_are_transformers():
    hf = build_hf_model("minimax", **LIGHTNING_FAMILIES["minimax-text01"][1])
    cfg = ModelConfig.from_hf(hf.config.to_dict())
    for i in cfg.lightning_layers:
        theirs = hf.model.layers[i].self_attn.slope_rate.flatten()
        assert torch.equal(slopes(cfg.num_attention_heads, i, cfg.num_hidden_layers), theirs)


# --- the cache -----------------------------------------------------------------------------------


def test_a_lightning_layer_keeps_a_fixed_size_state(lm):
    cfg = lm.model.config
    assert cfg.lightning_layers and set(cfg.layer_types or []) <= {SOFTMAX, LIGHTNING}
    small, large = KVCache(cfg, 128), KVCache(cfg, 4096)
    for i in range(cfg.num_hidden_layers):
        lightning = cfg.is_lightning(i)
        assert (small.states[i] is not None) == lightning == (small.k[i].numel() == 0 == large.v[i].numel())
        assert isinstance(lm.model.model.layers[i].self_attn, LightningAttention) == lightning
    ids = torch.tensor([_ids(100, 1)])
    with torch.inference_mode():
        lm.model(ids, 0, small)
        lm.model(ids, 0, large)
    states = [s.nbytes() for s in small.states if s is not None]
    assert states == [s.nbytes() for s in large.states if s is not None]  # the same at any context
    assert states == [state_bytes(cfg.num_attention_heads, cfg.head_dim)] * len(states)  # after a full tail
    assert small.nbytes() == kv_cache_bytes(cfg, 128, "fp32") and large.nbytes() == kv_cache_bytes(cfg, 4096, "fp32")


def test_a_pass_can_start_again_within_the_last_one_only(lm):
    model, ids = lm.model, torch.tensor([_ids(120, 2)])
    cache = KVCache(model.config, 160)
    with torch.inference_mode():
        full = model(ids)
        for start in (110, 109, 60, 46):  # back within the pass's last 64 rows: as if it had stopped there
            model(ids[:, :110], 0, cache)
            got = model(ids[:, start : start + 3], start, cache)
            assert (got - full[:, start : start + 3]).abs().max().item() < TOL
        assert cache.reusable(49) == 49 and cache.reusable(47) == 47 and cache.reusable(45) == 0  # last pass: 46..
        model(ids[:, :110], 0, cache)
        assert cache.reusable(46) == 46 and cache.reusable(30) == 0 and cache.reusable(0) == 0
        with pytest.raises(ValueError, match="can go back only to token 46; it cannot continue from token 30") as err:
            model(ids[:, 30:31], 30, cache)
        assert "\n" not in str(err.value)
        model(ids[:, :5], 0, cache)  # from nothing is always possible
        assert (model(ids[:, 5:6], 5, cache) - full[:, 5:6]).abs().max().item() < TOL


def test_verifying_several_tokens_at_an_offset_matches_one_at_a_time(lm):
    """A prefill chunk at an offset (blocks) and a speculative check (rows step by step, as decode
    steps) after a cached head give the logits one-token steps give; the check's rows exactly."""
    model, ids = lm.model, torch.tensor([_ids(40, 3)])
    one, many, rows = (KVCache(model.config, 64) for _ in range(3))
    with torch.inference_mode():
        for cache in (one, many, rows):
            model(ids[:, :20], 0, cache)
        steps = torch.cat([model(ids[:, i : i + 1], i, one) for i in range(20, 29)], dim=1)
        block = model(ids[:, 20:29], 20, many)
        check = model.lm_head(model.hidden_states(ids[:, 20:29], 20, rows, rowwise=True))
        with pytest.raises(ValueError, match="holds 0 tokens"):  # a state cannot start in the middle
            model(ids[:, 20:21], 20, KVCache(model.config, 64))
    assert (steps - block).abs().max().item() < TOL
    assert (steps - check).abs().max().item() < TOL


# --- the engine ------------------------------------------------------------------------------------


def _gen(model, prompt: list[int], **fields) -> tuple[list[int], Run]:
    request = GenerationRequest(prompt, stop_ids=set(), **fields)
    run = Run.of(request)
    return [t for t in generate(model, request, run=run) if isinstance(t, int)], run


@pytest.fixture(scope="module")
def looping(lm) -> tuple[list[int], list[int]]:
    """A prompt with repeats and a random model's greedy loops after it (drafts to accept), and the
    40 tokens plain greedy decoding gives after it."""
    block = _ids(12, 4)[1:]
    prompt = [1, *block, *block, *block[:6], *block]
    prompt += _gen(lm.model, prompt, max_new_tokens=80)[0]
    return prompt, _gen(lm.model, prompt, max_new_tokens=40)[0]


@pytest.mark.parametrize("k", [1, 8])
def test_greedy_output_is_identical_with_speculation(lm, looping, k):
    prompt, plain = looping
    spec, run = _gen(lm.model, prompt, max_new_tokens=40, speculate=k)
    assert spec == plain
    stats = run.speculation()
    assert stats is not None and stats["drafted"] > 0 and (k == 1 or stats["accepted"] > 0), stats


def test_batched_steps_are_each_sequences_own(lm):
    model = lm.model
    prompts = [_ids(n, seed) for n, seed in ((5, 1), (17, 2), (30, 3))]
    lone = [KVCache(model.config, 64) for _ in prompts]
    batched = [KVCache(model.config, 64) for _ in prompts]
    with torch.inference_mode():
        for ids, a, b in zip(prompts, lone, batched):
            prefill(model, torch.tensor([ids]), 0, a)
            prefill(model, torch.tensor([ids]), 0, b)
        tokens, positions = [p[-1] for p in prompts], [len(p) for p in prompts]
        for _ in range(4):
            one = torch.cat(
                [decode_one_token(model, torch.tensor([[t]]), p, c) for t, p, c in zip(tokens, positions, lone)]
            )
            many = decode_batch(model, torch.tensor(tokens), positions, batched)
            assert torch.equal(one, many)  # row by row: exactly a lone step
            tokens, positions = one.argmax(-1).tolist(), [p + 1 for p in positions]


def _run(lm: LocalModel, prompt: list[int], **fields):
    return lm.complete(prompt, **{"max_new_tokens": 10, "stop_ids": set(), **fields})


def test_prefix_cache_reuses_a_state_only_where_it_can_go_on(lm):
    cold = LocalModel.load(str(lm.path), context=256)
    warm = LocalModel.load(str(lm.path), context=256)
    prompt = _ids(50, 5)
    first = _run(warm, prompt)
    assert first.extra["cached_tokens"] == 0
    chat = prompt + first.token_ids + [7, 8]  # the answer and a new turn: the state goes on from there
    again = _run(warm, chat)
    assert again.extra["cached_tokens"] == len(prompt) + len(first.token_ids) - 1
    assert again.token_ids == _run(cold, chat).token_ids
    # the same prompt again: its state went on through the answer, so from the start; but right after
    # a run that only prefilled it, all but its last token (within that prefill's last pass)
    same = _run(warm, chat, max_new_tokens=1)
    assert same.extra["cached_tokens"] == 0 and same.token_ids == again.token_ids[:1]
    assert _run(warm, chat).extra["cached_tokens"] == len(chat) - 1
    edited = chat[:20] + [9, 9] + chat[22:]  # an edit far back: the state cannot go there, so from the start
    third = _run(warm, edited, cache_shift=4)
    assert third.extra["cached_tokens"] == 0 and third.extra["shifted_tokens"] == 0
    assert third.token_ids == _run(cold, edited).token_ids


def test_padded_prefill_rows_leave_the_state_as_without(lm):
    padded = LocalModel.load(str(lm.path), context=256)
    padded.max_pad = 63  # as a bf16 model pads (generate.PAD_BUCKETS): the padding is absorbed, then undone
    prompt = _ids(70, 6)  # 70 rows padded to 128: 58 padding rows, within the last 64
    assert _run(padded, prompt).token_ids == _run(lm, prompt).token_ids


def test_int8_and_saving(lm, tmp_path):
    path = lm.path
    assert path is not None
    q = load_model(path, quant="int8")
    attn = next(layer.self_attn for layer in q.model.layers if isinstance(layer.self_attn, LightningAttention))
    assert all(isinstance(m, Int8Linear) for m in (attn.qkv_proj, attn.output_gate, attn.out_proj))
    ids = torch.tensor([_ids(30, 7)])
    with torch.inference_mode():
        ref = lm.model(ids)
        cos = torch.nn.functional.cosine_similarity(ref.flatten(), q(ids).float().flatten(), dim=0)
        assert cos > 0.98, cos
        save_model(lm.model, tmp_path)  # the softmax layers' fused q/k/v split again, lightning qkv_proj kept
        assert load_config(tmp_path) == lm.model.config
        assert torch.equal(load_model(tmp_path)(ids), ref)


# --- config and sizes ------------------------------------------------------------------------------


def test_config_round_trip_and_one_line_errors(lm):
    cfg = lm.model.config
    assert cfg.model_type == "minimax" and cfg.postnorm and cfg.residual_scale("mlp_beta_factor") == 1.2
    assert ModelConfig.from_hf(cfg.to_hf()) == cfg
    raw = cfg.to_hf()
    for bad, words in (
        ({"layer_types": [SOFTMAX]}, "one of 'full_attention' or 'linear_attention' per layer"),
        ({"layer_types": ["sliding_attention"] * cfg.num_hidden_layers}, "per layer"),
        ({"hidden_act": "gelu"}, "through SiLU"),
        ({"block_size": 0}, "block_size must be >= 1"),
    ):
        with pytest.raises(ConfigError, match=words) as err:
            ModelConfig.from_hf(raw | bad)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="minimax's only"):
        cfg.replace(model_type="mixtral").to_hf()
    # no layer_types: transformers' default, softmax on even layers; rotary_dim ignored, as there
    plain = ModelConfig.from_hf({k: v for k, v in raw.items() if k != "layer_types"} | {"rotary_dim": 8})
    assert plain.layer_types == [SOFTMAX if i % 2 == 0 else LIGHTNING for i in range(cfg.num_hidden_layers)]
    assert plain.partial_rotary_factor == 1.0


@pytest.mark.parametrize("name", list(LIGHTNING_FAMILIES))
def test_sizes_match_transformers_and_demis_decoder(name):
    hf = build_hf_model("minimax", **LIGHTNING_FAMILIES[name][1])
    cfg = ModelConfig.from_hf(hf.config.to_dict())
    theirs = {n: tuple(p.shape) for n, p in hf.named_parameters()}
    assert count_parameters(cfg).total == sum(math.prod(s) for s in theirs.values())
    ours = parameter_shapes(cfg)
    rest = {k.replace(".mlp.", ".block_sparse_moe."): v for k, v in theirs.items() if ".experts." not in k}
    assert {k: v for k, v in ours.items() if ".experts." not in k} == rest
    with torch.device("meta"):
        state = {k: tuple(v.shape) for k, v in Transformer(cfg).state_dict().items()}
    assert state == ours  # and no decay buffers: Demi computes them


def test_minimax_text01_preset_and_models_info():
    cfg = get_preset("minimax-text-01")
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim) == (80, 6144, 64, 128)
    assert cfg.layer_types == ([LIGHTNING] * 7 + [SOFTMAX]) * 10
    pc = count_parameters(cfg)
    assert 455e9 < pc.total < 457e9  # published: 456B total
    assert 45.5e9 < pc.active_non_embedding < 46.5e9  # published: 45.9B activated per token
    assert ModelConfig.from_hf(cfg.to_hf()) == cfg
    short, long = model_info(cfg, 4096), model_info(cfg, 1_000_000)
    state = 70 * state_bytes(64, 128)
    assert short.lightning_state == long.lightning_state == state
    assert long.kv_cache - state == 2 * 10 * 8 * 128 * 1_000_000 * 2  # only the 10 softmax layers grow
    assert short.as_dict()["lightning_state_bytes"] == state
    text = format_info("minimax-text-01", cfg, 1_000_000)
    assert "80 layers (70 lightning, 10 softmax)" in text and "post-norm" in text
    assert f"lightning layers: a fixed-size state instead, {state / 2**20:.2f} MiB at any context" in text
    assert "KV cache: 2 x 10 softmax layers" in text and f"last {REWIND_ROWS} keys" in text
