"""ONNX export (model/onnx_export.py) run by onnxruntime (model/onnx_runner.py) against Demi's engine.

Every family Demi loads with a KV cache is exported once (tiny random checkpoints) and checked: fp32
logits within 1e-4 of Demi's fp32 engine for a whole sequence and through the cache (a prefill, then
one decode step per token with the presents fed back; past the sliding window for mistral and
starcoder2), the same greedy tokens, and the int8 graph onnxruntime quantized: smaller, int8
matmuls, logits close (measured on these checkpoints: mean |difference| 0.02-0.06 against a mean
|logit| of about 1, i.e. under 6%; the most any position moved, 0.47 for whole sequences, 1.7 at
one mixtral position where a routing choice flipped). A family with lightning layers is refused in one line.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from demi.model import onnx_export
from demi.model.config import ModelConfig
from demi.model.decoder import KVCache, Transformer
from demi.model.errors import DemiUserError
from demi.model.generate import GenerationRequest, decode_one_token, generate
from demi.model.loading import load_model
from demi.model.onnx_runner import OnnxDecoderSession, bench_onnx
from demi.model.quantized_checkpoint import quantize_checkpoint

FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "mixtral", "minimax_m2", "starcoder2"]
PROMPT_LEN, CACHED_PREFILL, NEW_TOKENS = 20, 7, 16
FP32_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(tiny_checkpoints, tmp_path_factory):
    """`exported(family)`: (checkpoint dir, export dir), each family exported once for the module."""
    done: dict[str, tuple] = {}

    def get(family: str):
        if family not in done:
            src = tiny_checkpoints(family)
            out = tmp_path_factory.mktemp(f"onnx-{family}") / "export"
            onnx_export.export_onnx(src, out)
            done[family] = (src, out)
        return done[family]

    return get


def prompt_for(vocab: int, length: int = PROMPT_LEN, seed: int = 1) -> list[int]:
    return torch.randint(3, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def demi_logits(model, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Demi's fp32 logits [T, V] for the whole sequence in one pass, and through its KV cache: a
    prefill of the first CACHED_PREFILL tokens, then `decode_one_token` for each of the rest."""
    with torch.inference_mode():
        whole = model(torch.tensor([ids]))[0]
        cache = KVCache(model.config, len(ids) + 1)
        rows = [model(torch.tensor([ids[:CACHED_PREFILL]]), 0, cache)[0]]
        for pos in range(CACHED_PREFILL, len(ids)):
            rows.append(decode_one_token(model, torch.tensor([[ids[pos]]]), pos, cache))
    return whole.numpy(), torch.cat(rows).numpy()


def onnx_cached_logits(session: OnnxDecoderSession, ids: list[int]) -> np.ndarray:
    logits, past = session.step(np.array([ids[:CACHED_PREFILL]]), session.empty_past())
    rows = [logits[0]]
    for token in ids[CACHED_PREFILL:]:
        logits, past = session.step(np.array([[token]]), past)
        rows.append(logits[0])
    return np.concatenate(rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_fp32_logits_and_greedy_tokens_match_demi(family, exported):
    src, out = exported(family)
    model = load_model(src, dtype="float32", quant="none")  # Demi's engine as it runs: fused, native decode ops
    ids = prompt_for(model.config.vocab_size)
    whole, cached = demi_logits(model, ids)
    session = OnnxDecoderSession(out, "fp32")
    assert np.abs(session.logits(ids) - whole).max() <= FP32_TOLERANCE
    assert np.abs(onnx_cached_logits(session, ids) - cached).max() <= FP32_TOLERANCE
    demi_tokens = list(generate(model, GenerationRequest(ids, NEW_TOKENS)))
    assert len(demi_tokens) == NEW_TOKENS
    assert session.greedy(ids, NEW_TOKENS) == demi_tokens


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_graph_runs_with_logits_close(family, exported):
    src, out = exported(family)
    graph = onnx.load(str(out / onnx_export.INT8_FILE))
    assert any(n.op_type == "MatMulInteger" for n in graph.graph.node)
    assert (out / onnx_export.INT8_FILE).stat().st_size < (out / onnx_export.FP32_FILE).stat().st_size
    model = load_model(src, dtype="float32", quant="none")
    ids = prompt_for(model.config.vocab_size)
    ref, _ = demi_logits(model, ids)
    session = OnnxDecoderSession(out, "int8")
    diff = np.abs(session.logits(ids) - ref)
    assert diff.mean() <= 0.1 * np.abs(ref).mean(), (diff.mean(), np.abs(ref).mean())
    assert diff.max() <= 0.25 * np.abs(ref).max()
    assert len(session.greedy(ids, 4)) == 4


def test_graph_contract(exported):
    """Opset 18, fp32, explicit KV inputs and outputs with dynamic batch, sequence and past axes."""
    src, out = exported("qwen2")
    graph = onnx.load(str(out / onnx_export.FP32_FILE))
    assert {o.domain: o.version for o in graph.opset_import}[""] == onnx_export.OPSET
    inputs = {i.name: i for i in graph.graph.input}
    outputs = {o.name: o for o in graph.graph.output}
    assert list(inputs) == ["input_ids", "past_key_0", "past_value_0", "past_key_1", "past_value_1"]
    assert list(outputs) == ["logits", "present_key_0", "present_value_0", "present_key_1", "present_value_1"]
    past = inputs["past_key_0"].type.tensor_type
    assert past.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in past.shape.dim]
    assert isinstance(dims[0], str) and isinstance(dims[2], str) and dims[1] == 2 and dims[3] == 16
    # batch 2, then a decode step on top of it
    session = OnnxDecoderSession(out, "fp32")
    ids = np.array([prompt_for(512, 5, seed=2), prompt_for(512, 5, seed=3)])
    logits, past_values = session.step(ids, session.empty_past(batch=2))
    assert logits.shape == (2, 5, 512) and past_values[0].shape() == [2, 2, 5, 16]
    logits, past_values = session.step(ids[:, :1], past_values)
    assert logits.shape == (2, 1, 512) and past_values[0].shape() == [2, 2, 6, 16]
    assert np.allclose(session.step(ids[1:], session.empty_past())[0][0], session.logits(ids[1].tolist()))


def test_bench_figures(exported):
    _, out = exported("qwen2")
    r = bench_onnx(out, ("fp32", "int8"), prompt_tokens=8, new_tokens=4, runs=1, threads=1)
    for variant in ("fp32", "int8"):
        assert r[variant]["prefill_tok_s"] > 0 and r[variant]["decode_tok_s"] > 0 and r[variant]["file_bytes"] > 0
        assert r[variant]["p50_ms"] <= r[variant]["p99_ms"]


def test_lightning_family_is_refused_in_one_line(tiny_checkpoints, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DemiUserError) as err:
        onnx_export.export_onnx(tiny_checkpoints("minimax"), out)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith("minimax: cannot be exported to ONNX yet: its lightning attention layers")
    assert not out.exists()


def test_xpos_positions_are_refused_in_one_line():
    cfg = ModelConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, position_embedding="xpos")
    assert (
        onnx_export.refusal(cfg)
        == "llama: cannot be exported to ONNX yet: its positions are xpos, the export has RoPE only"
    )
    with pytest.raises(DemiUserError, match="positions are xpos"):
        onnx_export.OnnxDecoder(Transformer(cfg.replace(num_hidden_layers=1, vocab_size=32)))
    assert onnx_export.refusal(cfg.replace(position_embedding="rope")) is None


def test_bad_requests_are_one_line_errors(tiny_checkpoints, tmp_path):
    src = tiny_checkpoints("qwen2")
    with pytest.raises(DemiUserError, match="opset 17 is too old; torch's exporter writes 18 or newer"):
        onnx_export.export_onnx(src, tmp_path / "a", opset=17)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DemiUserError, match="not an empty directory"):
        onnx_export.export_onnx(src, tmp_path / "full")
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    with pytest.raises(DemiUserError, match="not a Demi ONNX export"):
        OnnxDecoderSession(tmp_path / "full")


def test_missing_extra_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(DemiUserError) as err:
        onnx_export.require_onnx()
    assert str(err.value) == (
        "ONNX export and onnxruntime need the onnx extra: pip install 'demi[onnx]' (missing: onnxruntime)"
    )


def test_quantized_checkpoint_is_dequantized_for_export(tiny_checkpoints, tmp_path):
    """A checkpoint `demi models quantize` wrote exports from its dequantized weights: the float model
    is the original up to int8 rounding of the projections."""
    src = tiny_checkpoints("llama")
    q = quantize_checkpoint(src, tmp_path / "int8", "int8")
    ids = prompt_for(512)
    with torch.inference_mode():
        ref = load_model(src, dtype="float32", quant="none")(torch.tensor([ids]))[0]
        got = onnx_export.float_model(q)(torch.tensor([ids]))[0]
    assert got.dtype == torch.float32
    assert (got - ref).abs().mean() <= 0.05 * ref.abs().mean()
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= 0.8


@pytest.mark.parametrize("rope", ["linear", "dynamic", "yarn", "llama3"])
def test_export_forward_follows_rope_scaling_past_the_trained_length(rope, tiny_checkpoints):
    """The forward that is exported (run eagerly: the export's fidelity to it is checked per family
    above) against Demi's cache for every RoPE scaling, decoding past max_position_embeddings (256),
    where dynamic NTK changes its frequencies with the length."""
    src = tiny_checkpoints("llama", rope=rope)
    model = load_model(src, dtype="float32", quant="none")
    ids = prompt_for(model.config.vocab_size, 262)
    with torch.inference_mode():
        cache = KVCache(model.config, len(ids))
        ref = [model(torch.tensor([ids[:250]]), 0, cache)[0, -1:]]
        ref += [decode_one_token(model, torch.tensor([[ids[p]]]), p, cache) for p in range(250, len(ids))]
        wrapper = onnx_export.OnnxDecoder(onnx_export.float_model(src)).eval()
        empty = [torch.zeros(1, 2, 0, 16)] * 4
        logits, *past = wrapper(torch.tensor([ids[:250]]), *empty)
        got = [logits[0, -1:]]
        for token in ids[250:]:
            logits, *past = wrapper(torch.tensor([[token]]), *past)
            got.append(logits[0])
    assert (torch.cat(got) - torch.cat(ref)).abs().max() <= FP32_TOLERANCE
