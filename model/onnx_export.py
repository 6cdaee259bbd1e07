"""ONNX export: the decoder as one graph with explicit KV-cache inputs and outputs.

Demi's own forward writes into a preallocated `KVCache` at a Python `start` and calls native
kernels, neither of which a tracer can follow. `OnnxDecoder` is a second forward over the same
modules (the engine's fused attention and MLP, the family's norms, QK norm and RoPE scaling) that
is export-friendly: it takes `input_ids` [B, T] and, per layer, `past_key_N` / `past_value_N`
[B, kv_heads, P, head_dim], and returns `logits` [B, T, V] and `present_key_N` / `present_value_N`
[B, kv_heads, P + T, head_dim]. The position of the first token is P, so one graph serves both the
prefill (P = 0) and each decode step (T = 1, the presents fed back as pasts).

Attention is written out (scores, additive causal and sliding-window mask, softmax) and a mixture
of experts is computed densely: every expert runs and the router's top-k weights (zero for the
others) mix them, so the graph has no data-dependent control flow (E/k times the experts' work of
Demi's own decode). Lightning attention (MiniMax-Text-01) keeps a recurrent state, not a KV cache:
such a model is refused in one line (`refusal`).

The float graph is fp32 (torch.export through `torch.onnx.export(dynamo=True)`, opset 18 unless
asked otherwise); the int8 graph is onnxruntime's `quantize_dynamic` of it (int8 weights per output
channel, activations quantized per tensor at run time). A Demi-quantized checkpoint is dequantized
first (`float_model`). `onnx_runner.py` runs the result.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from demi.model.checkpoint import iter_tensors, read_index
from demi.model.config import ModelConfig
from demi.model.decoder import Attention, Block, MoE, Transformer
from demi.model.errors import CheckpointError, DemiUserError
from demi.model.loading import _IGNORED_SUFFIXES, checked_config, load_model
from demi.model.minimax import MiniMaxBlock
from demi.model.quantize import dequantize_int4, unpack_nibbles
from demi.model.rope import inv_frequencies
from demi.progress import report

# The default and the floor: torch's dynamo exporter translates to opset 18 or newer (asked for 17 it
# writes 18, and onnx's version converter has no way down for Split); newer opsets are written as asked.
OPSET = MIN_OPSET = 18
FP32_FILE, INT8_FILE, MANIFEST = "model.onnx", "model.int8.onnx", "onnx.json"
EXTRA_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
MISSING_EXTRA = "ONNX export and onnxruntime need the onnx extra: pip install 'demi[onnx]' ({})"
COPIED_FILES = (
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "chat_template.jinja",
)
EXPORT_STAGE, QUANTIZE_STAGE = "exporting to ONNX (fp32)", "quantizing the ONNX graph to int8"


def require_onnx() -> None:
    """A one-line user error naming the extra when onnx, onnxruntime or onnxscript is missing."""
    import importlib.util

    missing = [p for p in EXTRA_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        raise DemiUserError(MISSING_EXTRA.format("missing: " + ", ".join(missing)))


def refusal(cfg: ModelConfig) -> str | None:
    """Why a model cannot be exported yet (one line), or None when it can."""
    if cfg.lightning_layers:
        return (
            f"{cfg.model_type}: cannot be exported to ONNX yet: its lightning attention layers "
            f"({len(cfg.lightning_layers)} of {cfg.num_hidden_layers}) keep a recurrent state, not a KV cache"
        )
    if getattr(cfg, "position_embedding", "rope") != "rope":
        why = f"its positions are {cfg.position_embedding}, the export has RoPE only"
        return f"{cfg.model_type}: cannot be exported to ONNX yet: {why}"
    return None


def io_names(layers: int) -> tuple[list[str], list[str]]:
    """The graph's input and output names, in order."""
    past = [f"past_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    present = [f"present_{kind}_{i}" for i in range(layers) for kind in ("key", "value")]
    return ["input_ids", *past], ["logits", *present]


class OnnxDecoder(nn.Module):
    """The export-friendly forward of a float `Transformer` (see the module docstring); it switches the
    model's native inference ops off, so the model is the export's alone."""

    inv_freq: Tensor  # a buffer (register_buffer)

    def __init__(self, model: Transformer):
        super().__init__()
        cfg = model.config
        if why := refusal(cfg):
            raise DemiUserError(why)
        self.model = model
        self.cfg = cfg
        inv_freq, self.rope_scale = inv_frequencies(cfg)
        self.register_buffer("inv_freq", inv_freq.float(), persistent=False)
        scaling = cfg.rope_scaling or {}
        self.dynamic = scaling.get("rope_type") == "dynamic"
        self.factor = float(scaling.get("factor", 1.0))
        self.window = cfg.sliding_window
        # The head as its own [H, V] weight, tied or not: a MatMul on an initializer of its own, which
        # quantize_dynamic quantizes (a tied head reads the embedding through a Transpose it skips).
        self.head_t = nn.Parameter(model.lm_head.weight.detach().t().contiguous(), requires_grad=False)
        for module in model.modules():  # torch's ops only: native inference ops cannot be traced
            if getattr(module, "step_lib", None) is not None:
                setattr(module, "step_lib", None)  # noqa: B010 (nn.Module.__setattr__ is typed for tensors and modules)

    def rotary(self, start: Tensor, count: int) -> tuple[Tensor, Tensor]:
        """cos, sin [T, rotary_dim] for positions start.., as `RotaryTable.lookup` computes them."""
        pos = (torch.arange(count, device=start.device) + start).float()
        inv_freq = self.inv_freq
        if self.dynamic:  # dynamic NTK: the base grows with the sequence past max_position_embeddings
            cfg = self.cfg
            dim, max_pos = cfg.rotary_dim, cfg.max_position_embeddings
            seq = torch.clamp(start + count, min=max_pos).double()
            base = cfg.rope_theta * ((self.factor * seq / max_pos) - (self.factor - 1)) ** (dim / (dim - 2))
            exps = torch.arange(0, dim, 2, device=start.device).float() / dim
            inv_freq = 1.0 / (base.float() ** exps)
        angles = pos[:, None] * inv_freq[None, :]
        emb = torch.cat((angles, angles), dim=-1)
        return emb.cos() * self.rope_scale, emb.sin() * self.rope_scale

    def mask(self, start: Tensor, count: int, total: int, dtype: torch.dtype) -> Tensor:
        """Additive mask [T, P + T]: 0 where a query attends, the dtype's lowest value elsewhere."""
        q_pos = (torch.arange(count, device=start.device) + start)[:, None]
        k_pos = torch.arange(total, device=start.device)[None, :]
        allowed = k_pos <= q_pos
        if self.window is not None:
            allowed = allowed & (k_pos > q_pos - self.window)
        zero = torch.zeros((), dtype=dtype, device=start.device)
        return torch.where(allowed, zero, torch.finfo(dtype).min)

    def forward(self, input_ids: Tensor, *past: Tensor) -> tuple[Tensor, ...]:
        model = self.model
        t = input_ids.shape[1]
        start = torch.tensor(past[0].shape[2], device=input_ids.device)  # P: a symbolic size
        total = past[0].shape[2] + t
        x = model.model.embed_tokens(input_ids)
        cos, sin = self.rotary(start, t)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        mask = self.mask(start, t, total, x.dtype)
        presents: list[Tensor] = []
        for i, block in enumerate(model.model.layers):
            assert isinstance(block, Block)
            x = self.block(block, x, cos, sin, mask, past[2 * i], past[2 * i + 1], presents)
        logits = torch.matmul(model.model.norm(x), self.head_t)
        return (logits, *presents)

    def block(
        self, block: Block, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, pk: Tensor, pv: Tensor, out: list
    ) -> Tensor:
        h = block.input_layernorm(x)
        assert isinstance(block.self_attn, Attention)  # lightning layers are refused (`refusal`)
        attn = self.attention(block.self_attn, h, cos, sin, mask, pk, pv, out)
        if isinstance(block, MiniMaxBlock):  # post-norm, weighted residuals (minimax.py)
            x = h * block.attn_alpha + attn * block.attn_beta
            h = block.post_attention_layernorm(x)
            return h * block.mlp_alpha + self.feed_forward(block, h) * block.mlp_beta
        x = x + attn
        return x + self.feed_forward(block, block.post_attention_layernorm(x))

    def attention(
        self, attn: Attention, x: Tensor, cos: Tensor, sin: Tensor, mask: Tensor, pk: Tensor, pv: Tensor, out: list
    ) -> Tensor:
        b, t, _ = x.shape
        q, k, v = attn.qkv(x, cos, sin)  # [B, heads, T, D], QK-normed and rotated (fused or not)
        k, v = torch.cat([pk, k], dim=2), torch.cat([pv, v], dim=2)
        out += [k, v]
        heads, kv, d = attn.n_heads, attn.n_kv, attn.head_dim
        if heads != kv:  # grouped-query attention: each kv head serves heads // kv query heads
            s = k.shape[2]
            k = k[:, :, None].expand(b, kv, heads // kv, s, d).reshape(b, heads, s, d)
            v = v[:, :, None].expand(b, kv, heads // kv, s, d).reshape(b, heads, s, d)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (d**-0.5) + mask
        y = torch.matmul(torch.softmax(scores, dim=-1), v)
        return attn.o_proj(y.transpose(1, 2).reshape(b, t, heads * d))

    def feed_forward(self, block: Block, h: Tensor) -> Tensor:
        if not block.is_moe:
            return block.mlp(h)
        moe: MoE = block.block_sparse_moe
        flat = h.reshape(-1, h.shape[-1])
        weights, idx, _ = moe.route(flat)
        dense = torch.zeros(flat.shape[0], len(moe.experts), dtype=flat.dtype, device=flat.device)
        dense = dense.scatter(1, idx, weights.to(flat.dtype))
        y = torch.zeros_like(flat)
        for e, expert in enumerate(moe.experts):
            y = y + dense[:, e : e + 1] * expert(flat)
        return y.view(h.shape)


def float_model(model_dir: Path) -> Transformer:
    """The checkpoint in fp32 on the CPU with torch's ops: loaded with quant none, or, for a
    checkpoint `demi models quantize` wrote, its int8/int4 weights dequantized."""
    cfg = checked_config(model_dir)
    if (cfg.quantization_config or {}).get("quant_method") != "demi":
        return load_model(model_dir, dtype=torch.float32, device="cpu", quant="none")
    cfg = cfg.replace(quantization_config=None, torch_dtype="float32")
    tensors = read_index(model_dir)
    state = dict(iter_tensors(tensors, [n for n in tensors if not n.endswith(_IGNORED_SUFFIXES)]))
    for name in [n for n in state if n.endswith(".weight_scale")]:
        base = name[: -len("_scale")]
        q, scale, zero = state.pop(base), state.pop(name), state.pop(base + "_zero", None)
        state[base] = (
            q.float() * scale.float()[:, None] if zero is None else dequantize_int4(unpack_nibbles(q), scale, zero)
        )
    with torch.device("meta"):
        model = Transformer(cfg)
    expected = model.state_dict()
    if cfg.tie_word_embeddings and "lm_head.weight" not in state:
        expected.pop("lm_head.weight", None)
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{model_dir}: checkpoint is missing {missing[0]} (and {len(missing) - 1} more)")
    model.load_state_dict({k: state[k].float() for k in expected}, strict=False, assign=True)
    if "lm_head.weight" not in state:
        model.tie_weights()
    return model.eval()


def example_inputs(cfg: ModelConfig, tokens: int = 3, past: int = 2) -> tuple[Tensor, ...]:
    """Inputs to trace with: sizes above 1 on every dynamic axis (torch.export fixes sizes 0 and 1)."""
    ids = torch.randint(0, cfg.vocab_size, (2, tokens))
    kv = [torch.zeros(2, cfg.num_key_value_heads, past, cfg.head_dim) for _ in range(2 * cfg.num_hidden_layers)]
    return (ids, *kv)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter's and the quantizer's chatter kept off the user's terminal: progress prints (off
    stdout, where `--json` prints one object), Python warnings and log warnings (torch.onnx's missing
    torchvision, onnxruntime's advice to pre-process)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def export_decoder(model: Transformer, path: Path, opset: int = OPSET) -> None:
    """Write `model` as one fp32 ONNX graph at `path` (weights beside it past 2 GB)."""
    from torch.export import Dim

    cfg = model.config
    wrapper = OnnxDecoder(model).eval()
    inputs, outputs = io_names(cfg.num_hidden_layers)
    batch, seq, past = Dim("batch"), Dim("sequence"), Dim("past_sequence")
    shapes = ({0: batch, 1: seq}, ({0: batch, 2: past},) * (2 * cfg.num_hidden_layers))  # *past: one group
    big = sum(p.numel() * 4 for p in model.parameters()) > 1.8 * 2**30  # protobuf's 2 GB limit
    with _quiet(), torch.inference_mode(False), torch.no_grad():
        program = torch.onnx.export(
            wrapper,
            example_inputs(cfg),
            dynamo=True,
            opset_version=opset,
            input_names=inputs,
            output_names=outputs,
            dynamic_shapes=shapes,
            external_data=big,
            verbose=False,
        )
        assert program is not None
        program.save(str(path), external_data=big)


def quantize_int8(src: Path, dst: Path) -> None:
    """onnxruntime's dynamic quantization of the fp32 graph: int8 weights per output channel."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    big = src.with_name(src.name + ".data").exists() or src.stat().st_size > 1.8 * 2**30
    with _quiet():
        quantize_dynamic(
            src,
            dst,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
            use_external_data_format=big,
        )


def export_onnx(model_dir: str | Path, out_dir: str | Path, int8: bool = True, opset: int = OPSET) -> dict[str, Any]:
    """Export `model_dir` into `out_dir` (new or empty): model.onnx (fp32), model.int8.onnx (unless
    `int8` is false), onnx.json (shapes and names for the runner), config and tokenizer files.
    Returns what was written."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if opset < MIN_OPSET:
        raise DemiUserError(f"ONNX opset {opset} is too old; torch's exporter writes {MIN_OPSET} or newer")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DemiUserError(f"{out_dir}: exists and is not an empty directory; choose a new one")
    cfg = checked_config(model_dir)
    if why := refusal(cfg):
        raise DemiUserError(why)
    require_onnx()
    started = time.perf_counter()
    report(EXPORT_STAGE, 0, 1)
    model = float_model(model_dir)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"fp32": FP32_FILE}
    try:
        export_decoder(model, out_dir / FP32_FILE, opset)
        opset = written_opset(out_dir / FP32_FILE)  # what the file says, whatever was asked
        report(EXPORT_STAGE, 1, 1)
        if int8:
            report(QUANTIZE_STAGE, 0, 1)
            quantize_int8(out_dir / FP32_FILE, out_dir / INT8_FILE)
            files["int8"] = INT8_FILE
            report(QUANTIZE_STAGE, 1, 1)
    except BaseException:  # nothing half-written left behind (the directory was new or empty)
        for path in out_dir.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        if created:
            out_dir.rmdir()
        raise
    inputs, outputs = io_names(cfg.num_hidden_layers)
    manifest = {
        "format": "demi-onnx-decoder",
        "model_type": cfg.model_type,
        "source": str(model_dir),
        "opset": opset,
        "layers": cfg.num_hidden_layers,
        "kv_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "vocab_size": cfg.vocab_size,
        "context": cfg.context_limit,
        "eos_token_id": cfg.eos_token_id,
        "inputs": inputs,
        "outputs": outputs,
        "files": files,
    }
    (out_dir / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    for name in COPIED_FILES:
        if (model_dir / name).is_file():
            shutil.copy2(model_dir / name, out_dir / name)
    sizes = {kind: _size(out_dir / name) for kind, name in files.items()}
    return {
        "dir": str(out_dir),
        "model_type": cfg.model_type,
        "opset": opset,
        "files": {k: str(out_dir / v) for k, v in files.items()},
        "bytes": sizes,
        "seconds": round(time.perf_counter() - started, 2),
    }


def written_opset(path: Path) -> int:
    """The default-domain opset a graph file declares."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in graph.opset_import if o.domain in ("", "ai.onnx"))


def _size(path: Path) -> int:
    """Bytes of a graph and its external weights, if any."""
    data = path.with_name(path.name + ".data")
    return path.stat().st_size + (data.stat().st_size if data.exists() else 0)


__all__ = ["OnnxDecoder", "export_onnx", "float_model", "refusal", "require_onnx"]
