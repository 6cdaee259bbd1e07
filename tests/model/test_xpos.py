"""Adaptive xPos (model/xpos.py): attention scores that depend on relative position only and decay
with distance as the paper states, numerics at 16k positions, decode through the KV cache equal to
a full forward (loaded, fused, with the native decode ops left off), the config saved and loaded
with Demi's checkpoints and refused for transformers, the prefix cache never shifting xPos keys,
and the training pipeline training and exporting such a model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from tokenizers_fixture import make_bytelevel_tokenizer

from demi.model.config import XPOS_ADAPTIVE_SPAN, ModelConfig, load_config
from demi.model.decoder import Attention, KVCache, Transformer
from demi.model.engine import LocalModel, drain
from demi.model.errors import ConfigError
from demi.model.generate import GenerationRequest
from demi.model.loading import save_model
from demi.model.prefix_cache import PrefixCache
from demi.model.rope import RotaryTable, apply_rotary, shift_keys, shifts_exactly
from demi.model.scaffold import random_model
from demi.model.xpos import XPos, zetas

CPU = torch.device("cpu")


def xpos_config(**changes) -> ModelConfig:
    fields = dict(
        model_type="llama",
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        position_embedding="xpos",
        xpos_adaptive=True,
    )
    return ModelConfig(**(fields | changes))


def scores(attn: Attention, table: RotaryTable, x: torch.Tensor, start: int) -> torch.Tensor:
    """q . k for every pair of rows of x [1, T, H] placed at positions start.., as Attention.forward
    computes them (rotation, then xPos)."""
    cos, sin = table.lookup(start, x.shape[1], CPU)
    q, k, _ = attn.qkv(x, cos, sin)
    assert attn.xpos is not None
    q, k = attn.xpos(q, k, start)
    k = k.repeat_interleave(attn.n_heads // attn.n_kv, dim=1)
    return q @ k.transpose(-1, -2)


def test_zeta_and_the_scale_base_per_layer():
    cfg = xpos_config(num_hidden_layers=5, xpos_scale_base=512.0)
    d = cfg.rotary_dim
    expected = [(i / (d / 2) + 0.4) / 1.4 for i in range(d // 2)]
    torch.testing.assert_close(zetas(cfg), torch.tensor(expected, dtype=torch.float64))
    bases = [cfg.xpos_scale_base_at(i) for i in range(5)]
    assert bases[0] == pytest.approx(512 / XPOS_ADAPTIVE_SPAN) and bases[-1] == pytest.approx(512 * XPOS_ADAPTIVE_SPAN)
    assert bases[2] == pytest.approx(512)  # the middle layer keeps B
    ratios = {round(b / a, 9) for a, b in zip(bases, bases[1:])}
    assert len(ratios) == 1 and ratios.pop() > 1  # geometric growth with depth
    assert math.prod(bases) ** (1 / 5) == pytest.approx(512)  # B is the stack's geometric mean
    flat = cfg.replace(xpos_adaptive=False)
    assert {flat.xpos_scale_base_at(i) for i in range(5)} == {512.0}


@pytest.mark.parametrize("adaptive", [False, True])
def test_scores_depend_only_on_relative_position_up_to_16k(adaptive):
    cfg = xpos_config(max_position_embeddings=16384, xpos_adaptive=adaptive)
    model = random_model(cfg, seed=1)
    table = RotaryTable(cfg, 16384)
    x = torch.randn(1, 24, cfg.hidden_size)
    causal = torch.ones(24, 24, dtype=torch.bool).tril()
    with torch.no_grad():
        for layer in model.model.layers:
            at_0 = scores(layer.self_attn, table, x, 0)
            for start in (1000, 8180, 16384 - 24):  # the centre, and the far end of the context
                moved = scores(layer.self_attn, table, x, start)
                assert torch.isfinite(moved).all()
                # atol: RoPE's own fp32 angles at 16k drift by ~4e-5 here, with or without xPos
                torch.testing.assert_close(moved[..., causal], at_0[..., causal], rtol=1e-4, atol=1e-4)
    # the xPos factors alone, exactly: q's scale at n times k's at m is zeta^((n-m)/B) at any n
    xpos = XPos(cfg, 0)
    q_scale, k_scale = xpos.scales(0, 16384, CPU, torch.float32)
    for n, m in [(7, 0), (8192, 8000), (16383, 16383), (16383, 16000), (16383, 0)]:
        expected = (zetas(cfg) ** ((n - m) / xpos.scale_base)).repeat(2).float()
        torch.testing.assert_close(q_scale[n] * k_scale[m], expected, rtol=2e-7, atol=1e-30)


def test_each_pair_decays_with_distance_by_zeta_to_the_distance_over_b():
    """The paper's claim, pair by pair: xPos's score is RoPE's times zeta_i^((n-m)/B), which is 1 at
    distance 0 and falls strictly as the distance grows."""
    cfg = xpos_config(num_hidden_layers=1, hidden_size=32, num_attention_heads=1, num_key_value_heads=1)
    xpos, table = XPos(cfg, 0), RotaryTable(cfg, 512)
    d, half = cfg.head_dim, cfg.head_dim // 2
    cos, sin = table.lookup(0, 512, CPU)
    q_scale, k_scale = xpos.scales(0, 512, CPU, torch.float32)
    m, n = 100, torch.arange(100, 512)  # key at 100, queries at 100 .. 511
    zeta = zetas(cfg)
    for i in range(half):
        v = torch.zeros(1, 1, 512, d)
        v[..., i], v[..., i + half] = 0.6, 0.8  # only pair i
        rotated = apply_rotary(v, cos, sin)[0, 0]
        rope = (rotated[n] * rotated[m]).sum(-1)
        xp = (rotated[n] * q_scale[n] * rotated[m] * k_scale[m]).sum(-1)
        factor = (zeta[i] ** ((n - m) / cfg.xpos_scale_base_at(0))).float()
        torch.testing.assert_close(xp, rope * factor, rtol=1e-5, atol=1e-6)
        assert factor[0] == 1 and bool((factor[1:] < factor[:-1]).all())


def test_the_expected_score_decays_where_ropes_oscillates():
    """The paper's figure: with q = k = ones, the largest score in each block of 512 distances falls
    from block to block under xPos, and does not under RoPE alone."""
    cfg = xpos_config(num_hidden_layers=1, hidden_size=256, num_attention_heads=4, num_key_value_heads=4)
    cfg = cfg.replace(max_position_embeddings=8192)
    table, xpos = RotaryTable(cfg, 8192), XPos(cfg, 0)
    cos, sin = table.lookup(0, 8192, CPU)
    ones = apply_rotary(torch.ones(1, 1, 8192, cfg.head_dim), cos, sin)[0, 0]
    q_scale, k_scale = xpos.scales(0, 8192, CPU, torch.float32)
    rope = (ones * ones[0]).sum(-1)  # the key at 0, queries at every distance
    xp = (ones * q_scale * ones[0] * k_scale[0]).sum(-1)
    rope_peaks, xpos_peaks = (s.abs().view(-1, 512).amax(1) for s in (rope, xp))
    assert bool((xpos_peaks[1:] < xpos_peaks[:-1]).all())
    assert not bool((rope_peaks[1:] <= rope_peaks[:-1]).all())
    assert xpos_peaks[-1] < rope_peaks[-1] / 4


def test_decode_through_the_cache_equals_a_full_forward():
    cfg = xpos_config()
    model = random_model(cfg, seed=2, std=0.1)  # weights large enough for peaked attention
    rope_model = random_model(cfg.replace(position_embedding="rope"), seed=2, std=0.1)
    ids = torch.randint(0, cfg.vocab_size, (1, 48))
    with torch.no_grad():
        full = model(ids)
        assert (full - rope_model(ids)).abs().max() > 1e-3  # xPos changes the model
        cache = KVCache(cfg, 64)
        steps = [model(ids[:, :30], 0, cache)] + [model(ids[:, i : i + 1], i, cache) for i in range(30, 48)]
        torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-4, atol=1e-5)
        # speculative decoding's check: several rows at once, each as its own decode step
        cache = KVCache(cfg, 64)
        model.hidden_states(ids[:, :30], 0, cache)
        rows = model.lm_head(model.hidden_states(ids[:, 30:], 30, cache, rowwise=True))
        torch.testing.assert_close(rows, full[:, 30:], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def xpos_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("xpos-model")
    tok = make_bytelevel_tokenizer(out)
    cfg = xpos_config(vocab_size=tok.vocab_size, eos_token_id=list(tok.eos_token_ids), pad_token_id=tok.pad_token_id)
    save_model(random_model(cfg, seed=3, std=0.1), out)
    return out


def test_the_config_is_saved_and_loaded_with_demis_checkpoints(xpos_dir):
    raw = json.loads((xpos_dir / "config.json").read_text())
    assert raw["position_embedding"] == "xpos" and raw["xpos_adaptive"] is True
    assert raw["xpos_gamma"] == 0.4 and raw["xpos_scale_base"] == 512.0
    cfg = load_config(xpos_dir)
    assert cfg.position_embedding == "xpos" and cfg.xpos_adaptive and not cfg.native_rotary
    assert ModelConfig.from_hf(cfg.to_hf()) == cfg
    plain = cfg.replace(position_embedding="rope")
    assert "position_embedding" not in plain.to_hf() and plain.to_hf(transformers_only=True) == plain.to_hf()


def test_the_config_is_refused_for_transformers_and_bad_values_are_one_line_errors():
    cfg = xpos_config()
    with pytest.raises(ConfigError, match="cannot be written as a transformers config.json: xPos") as err:
        cfg.to_hf(transformers_only=True)
    assert "\n" not in str(err.value)
    raw = cfg.to_hf()
    bad = [
        ({"position_embedding": "alibi"}, "unknown position_embedding 'alibi'"),
        ({"xpos_gamma": 0}, "xpos_gamma > 0"),
        ({"xpos_scale_base": -1}, "xpos_scale_base > 0"),
        ({"xpos_adaptive": "yes"}, "xpos_adaptive must be true or false"),
        ({"max_position_embeddings": 65536}, "raise xpos_scale_base to"),
    ]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message) as err:
            ModelConfig.from_hf(raw | change)
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="float16"):
        XPos(cfg, 0).scales(0, 4, CPU, torch.float16)


def test_a_loaded_model_keeps_xpos_layers_off_the_native_decode_path(xpos_dir):
    lm = LocalModel.load(str(xpos_dir), dtype="float32")
    layers = [layer.self_attn for layer in lm.model.model.layers]
    assert all(type(a).__name__ == "FusedAttention" and a.step_lib is None for a in layers)
    assert lm.model.decode_stack is None
    reference = random_model(load_config(xpos_dir), seed=3, std=0.1)  # the unfused model it holds
    ids = list(range(5, 45))
    done = drain(lm.run(GenerationRequest(ids, 12)))
    expected = list(ids)
    with torch.no_grad():
        for _ in range(12):
            expected.append(int(reference(torch.tensor([expected]))[0, -1].argmax()))
    assert done.token_ids == expected[len(ids) :]


def test_a_batched_decode_step_equals_lone_steps(xpos_dir):
    from demi.model.batch import decode_batch

    lm = LocalModel.load(str(xpos_dir), dtype="float32")
    cfg, model = lm.model.config, lm.model
    seqs = [list(range(5, 25)), list(range(30, 41))]
    with torch.no_grad():
        caches = [KVCache(cfg, 64) for _ in seqs]
        for ids, cache in zip(seqs, caches):
            model(torch.tensor([ids[:-1]]), 0, cache)
        got = decode_batch(model, torch.tensor([ids[-1] for ids in seqs]), [len(ids) - 1 for ids in seqs], caches)
        want = torch.cat([model(torch.tensor([ids]))[:, -1] for ids in seqs])
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_the_prefix_cache_never_shifts_xpos_keys(xpos_dir):
    cfg = load_config(xpos_dir)
    assert not shifts_exactly(cfg) and shifts_exactly(cfg.replace(position_embedding="rope"))
    with pytest.raises(ConfigError, match="cannot be moved by a rotation"):
        shift_keys(cfg, torch.zeros(1, 2, 4, cfg.head_dim), 3)
    assert PrefixCache(cfg, 64, torch.float32, CPU, shift_keys=lambda k, d: k).shift_keys is None
    lm = LocalModel.load(str(xpos_dir), dtype="float32")
    assert lm.prefix_cache.shift_keys is None
    # a prompt whose tail moved gets the same answer as a cold run: recomputed, not shifted
    head, tail = list(range(5, 25)), list(range(60, 100))
    drain(lm.run(GenerationRequest(head + [1] + tail, 4, cache_shift=8)))
    warm = drain(lm.run(GenerationRequest(head + [1, 2] + tail, 4, cache_shift=8)))
    cold = drain(LocalModel.load(str(xpos_dir), dtype="float32").run(GenerationRequest(head + [1, 2] + tail, 4)))
    assert warm.token_ids == cold.token_ids


def test_the_training_pipeline_trains_and_exports_an_xpos_model(tmp_path):
    from demi.train.corpus import Document
    from demi.train.data import DataOptions, PackedData
    from demi.train.trainer import TrainConfig, Trainer, init_model

    tok = make_bytelevel_tokenizer(tmp_path / "tok")
    docs = [Document("src", f"m{i}.py", f"def f{i}(x):\n    return x * {i} + {i * i}\n" * 20) for i in range(8)]
    data = PackedData(docs, tok, DataOptions(seq_len=32, seed=0), [], docs[:1])
    cfg = xpos_config(vocab_size=tok.vocab_size, num_hidden_layers=2, eos_token_id=list(tok.eos_token_ids))
    settings = dict(steps=10, batch_size=4, warmup_steps=2, lr=3e-3, compile="off", precision="fp32", log_every=1)
    trainer = Trainer(init_model(cfg, seed=0), data, TrainConfig(**settings), tmp_path / "run", progress=False)
    trainer.train()
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    out = trainer.export(tmp_path / "model", tmp_path / "tok")
    assert load_config(out).position_embedding == "xpos"
    loaded = LocalModel.load(str(out), dtype="float32")
    assert isinstance(loaded.model, Transformer) and loaded.model.model.layers[0].self_attn.xpos is not None


def test_length_eval_scores_the_same_held_out_tokens_at_every_length(xpos_dir, tmp_path, capsys):
    import gzip

    from demi.train.length_eval import main

    text = "def area(r):\n    return 3.14159 * r * r\n\n" * 12
    (tmp_path / "corpus").mkdir()
    with gzip.open(tmp_path / "corpus" / "heldout.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(json.dumps({"source": "src", "path": "area.py", "text": text}) + "\n")
    assert main(["--run", str(tmp_path), str(xpos_dir), "--contexts", "32,64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    short, long = out["rows"]
    assert out["files"] == 1 and (short["context"], long["context"]) == (32, 64)
    assert short["tokens"] == long["tokens"] > 64 and math.isfinite(long["perplexity"])
    lm = LocalModel.load(str(xpos_dir), dtype="float32", context=64)
    assert long["nll"] == pytest.approx(lm.perplexity([text])["nll"])
    assert main(["--run", str(tmp_path), str(xpos_dir), "--contexts", "32,4096"]) == 2  # past the config's 512
    assert "allows 512 positions" in capsys.readouterr().err
