"""Size figures computed from a `ModelConfig` alone: parameters, weight memory, KV cache.

No tensor is built: every number follows from the shapes the decoder gives each parameter
(the Hugging Face checkpoint names, see `parameter_shapes`).

Parameter counts (`count_parameters`):

- ``embedding``: ``embed_tokens`` plus ``lm_head`` when it is untied. A tied matrix is one
  tensor in the checkpoint and is counted once, as embedding.
- ``non_embedding``: everything else (attention, MLP or experts, router, norms, biases, and
  MiniMax-M2's ``e_score_correction_bias``, a buffer but a tensor of the checkpoint).
- ``active``: what one token runs through. For a dense model it is ``total``; for a
  mixture of experts only ``num_experts_per_tok`` of the ``num_experts`` experts of each
  layer count, everything else (embeddings included) counts in full.

Checked against Qwen2.5-3B's published figures (the Sheikh-2.5-Coder shape): this module
gives 3,085,938,688 total (3.09B) and 2,774,773,760 non-embedding (2.77B), the same as the
quoted 3.09B / 2.77B. The quoted "non-embedding" leaves out the tied 151936 x 2048 matrix
once (311,164,928); there is no separate lm_head to leave out.

Weight memory (`weight_bytes`), one figure per precision:

- ``fp32`` / ``bf16``: 4 / 2 bytes for every tensor.
- ``int8``: weight-only, per output channel: each Linear weight ``[out, in]`` inside the
  layers (q/k/v/o, the MLP or every expert's w1/w2/w3) and ``lm_head`` when untied takes
  ``out * in`` bytes plus one fp32 scale per output channel (``4 * out``). Embeddings,
  norms, biases, the MoE router and the correction bias stay in bf16 (2 bytes).
- ``int4``: group-wise along the input dimension, groups of ``INT4_GROUP_SIZE`` (the engine's
  default, ``quantize.DEFAULT_GROUP``: 64): the same Linear weights take half a byte per weight
  (``out * ceil(in / 2)``) plus a bf16 scale and a bf16 zero point per group
  (``4 * out * ceil(in / INT4_GROUP_SIZE)``); everything else stays in bf16 as for int8. A tied
  ``lm_head`` is the embedding and stays in bf16.

KV cache (`kv_cache_bytes`): ``2 * layers * kv_heads * head_dim * context * bytes`` per
sequence (keys and values, every layer, ``context`` positions preallocated). A hybrid stack's
lightning layers (MiniMax-Text-01) keep no keys or values: each holds a fixed-size state instead,
counted as Demi allocates it (`lightning_state_bytes`: per layer ``4 * heads * (2 * D * D + 2 * 64 * D)``,
the fp32 state, the one before the last pass's final 64 tokens, and those tokens' keys and values),
the same at any context; only the softmax layers count in the first formula.

Training memory per GPU under FSDP2 (`fsdp_training_bytes`, as `demi train run --parallel fsdp`
runs it: bf16 compute, fp32 master weights, gradients and AdamW state, one FSDP group per
decoder block plus one for the embeddings, final norm and head), an estimate for planning:

- ``sharded``: ``16 * total / gpus``: fp32 weights, fp32 gradients, AdamW's two moments.
- ``gathered``: what FSDP2 holds unsharded at once: the root group (embeddings, head, final
  norm) as bf16 weights and gradients for the whole step (4 bytes per parameter) and two blocks
  (the one running and the one prefetched) as bf16 weights, bf16 gradients and the fp32
  reduce-scatter buffer (8 bytes per parameter). A mixture of experts gathers every expert of a
  block (no expert parallelism).
- ``activations``: what autograd keeps per token, counted from the decoder's forward with bf16
  weights: per block ``20H + 2 * (3q + 2kv + 4I)`` bytes: each RMSNorm keeps its input and
  normalized value in fp32 and its output in bf16 (``10H``), then in bf16 the queries and keys
  after RoPE, the values, the attention output and its reshaped copy, the SwiGLU gate, its
  SiLU, up and product (``I`` times the ``k`` active experts for a MoE; a GELU MLP keeps two,
  ``2I``: c_fc's output and the GELU's); plus ``10 * vocab``
  bytes for the logits (bf16, the fp32 copy, the log-softmax kept for backward). Checked against
  the tensors autograd saves for a block (tests/train/test_train_distributed.py). With gradient
  checkpointing each block keeps only its bf16 input (``2H``) and one block's activations exist
  at a time. Not counted: the CUDA context and the allocator's slack
  (typically 1-3 GiB), and the pipeline's data.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from demi.model.config import ModelConfig
from demi.model.errors import DemiUserError
from demi.model.lightning import REWIND_ROWS, state_bytes
from demi.model.quantize import DEFAULT_GROUP

__all__ = [
    "PRECISIONS",
    "INT4_GROUP_SIZE",
    "KV_DTYPE_BYTES",
    "TensorGroup",
    "ParamCounts",
    "ModelInfo",
    "tensor_groups",
    "parameter_shapes",
    "count_parameters",
    "weight_bytes",
    "kv_cache_bytes",
    "cache_bytes",
    "lightning_state_bytes",
    "model_info",
    "FsdpMemory",
    "FSDP_GPUS",
    "fsdp_training_bytes",
    "format_info",
    "human_count",
    "human_bytes",
]

PRECISIONS = ("fp32", "bf16", "int8", "int4")
INT4_GROUP_SIZE = DEFAULT_GROUP  # the group the engine quantizes int4 with (one source: quantize.py)
KV_DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "fp8": 1, "int8": 1}

# Kinds of tensors: "linear" and "lm_head" are what int8/int4 quantize.
_QUANTIZED_KINDS = ("linear", "lm_head")
_EMBEDDING_KINDS = ("embedding", "lm_head")


@dataclass(frozen=True)
class TensorGroup:
    """`count` tensors of one shape (e.g. every layer's q_proj); `active` of them per token."""

    name: str  # checkpoint name, with {i} for the layer and {e} for the expert
    shape: tuple[int, ...]
    count: int
    active: int
    kind: str  # embedding | lm_head | linear | router | bias | norm | buffer
    layers: tuple[int, ...] | None = None  # the layers {i} stands for; None: every layer

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def tensor_groups(cfg: ModelConfig) -> list[TensorGroup]:
    """Every tensor of the checkpoint, grouped by name pattern and shape."""
    H, I, V, L = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size, cfg.num_hidden_layers
    q_dim = cfg.num_attention_heads * cfg.head_dim
    kv_dim = cfg.num_key_value_heads * cfg.head_dim
    layer = "model.layers.{i}."
    out: list[TensorGroup] = [TensorGroup("model.embed_tokens.weight", (V, H), 1, 1, "embedding")]

    def per_layer(name: str, shape: tuple[int, ...], kind: str, layers: tuple[int, ...] | None = None) -> None:
        n = L if layers is None else len(layers)
        if n:
            out.append(TensorGroup(layer + name, shape, n, n, kind, layers))

    lightning = tuple(cfg.lightning_layers)
    softmax = tuple(i for i in range(L) if i not in lightning) if lightning else None

    per_layer("input_layernorm.weight", (H,), "norm")
    per_layer("post_attention_layernorm.weight", (H,), "norm")
    if cfg.norm == "layer":  # StarCoder2's LayerNorm has a bias
        per_layer("input_layernorm.bias", (H,), "bias")
        per_layer("post_attention_layernorm.bias", (H,), "bias")
    attn = "self_attn."
    per_layer(attn + "q_proj.weight", (q_dim, H), "linear", softmax)
    per_layer(attn + "k_proj.weight", (kv_dim, H), "linear", softmax)
    per_layer(attn + "v_proj.weight", (kv_dim, H), "linear", softmax)
    per_layer(attn + "o_proj.weight", (H, q_dim), "linear", softmax)
    if cfg.qkv_bias:
        per_layer(attn + "q_proj.bias", (q_dim,), "bias", softmax)
        per_layer(attn + "k_proj.bias", (kv_dim,), "bias", softmax)
        per_layer(attn + "v_proj.bias", (kv_dim,), "bias", softmax)
    if cfg.o_bias:
        per_layer(attn + "o_proj.bias", (H,), "bias", softmax)
    if lightning:  # MiniMax's lightning layers (lightning.py): q, k, v in one projection, a gate, a norm
        per_layer(attn + "qkv_proj.weight", (3 * q_dim, H), "linear", lightning)
        per_layer(attn + "output_gate.weight", (q_dim, H), "linear", lightning)
        per_layer(attn + "norm.weight", (q_dim,), "norm", lightning)
        per_layer(attn + "out_proj.weight", (H, q_dim), "linear", lightning)
    if cfg.qk_norm == "head":
        per_layer(attn + "q_norm.weight", (cfg.head_dim,), "norm", softmax)
        per_layer(attn + "k_norm.weight", (cfg.head_dim,), "norm", softmax)
    elif cfg.qk_norm == "whole":
        per_layer(attn + "q_norm.weight", (q_dim,), "norm", softmax)
        per_layer(attn + "k_norm.weight", (kv_dim,), "norm", softmax)
    elif cfg.qk_norm != "none":
        raise DemiUserError(f"unknown qk_norm {cfg.qk_norm!r}; expected none, head or whole")

    if cfg.is_moe:
        E, k = cfg.num_experts, cfg.num_experts_per_tok
        moe = "block_sparse_moe."
        per_layer(moe + "gate.weight", (E, H), "router")
        if cfg.routing_bias:
            per_layer(moe + "e_score_correction_bias", (E,), "buffer")
        for w, shape in (("w1", (I, H)), ("w3", (I, H)), ("w2", (H, I))):
            out.append(TensorGroup(layer + moe + "experts.{e}." + w + ".weight", shape, L * E, L * min(k, E), "linear"))
    elif cfg.mlp == "gelu":  # StarCoder2: c_fc, GELU, c_proj
        per_layer("mlp.c_fc.weight", (I, H), "linear")
        per_layer("mlp.c_proj.weight", (H, I), "linear")
        if cfg.mlp_bias:
            per_layer("mlp.c_fc.bias", (I,), "bias")
            per_layer("mlp.c_proj.bias", (H,), "bias")
    else:
        per_layer("mlp.gate_proj.weight", (I, H), "linear")
        per_layer("mlp.up_proj.weight", (I, H), "linear")
        per_layer("mlp.down_proj.weight", (H, I), "linear")
        if cfg.mlp_bias:
            per_layer("mlp.gate_proj.bias", (I,), "bias")
            per_layer("mlp.up_proj.bias", (I,), "bias")
            per_layer("mlp.down_proj.bias", (H,), "bias")

    out.append(TensorGroup("model.norm.weight", (H,), 1, 1, "norm"))
    if cfg.norm == "layer":
        out.append(TensorGroup("model.norm.bias", (H,), 1, 1, "bias"))
    if not cfg.tie_word_embeddings:
        out.append(TensorGroup("lm_head.weight", (V, H), 1, 1, "lm_head"))
    return out


def parameter_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every checkpoint tensor by its full name (layers and experts spelled out)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for g in tensor_groups(cfg):
        layers = range(cfg.num_hidden_layers) if g.layers is None else g.layers
        if "{e}" in g.name:
            for i in layers:
                for e in range(cfg.num_experts):
                    shapes[g.name.format(i=i, e=e)] = g.shape
        elif "{i}" in g.name:
            for i in layers:
                shapes[g.name.format(i=i)] = g.shape
        else:
            shapes[g.name] = g.shape
    return shapes


@dataclass(frozen=True)
class ParamCounts:
    total: int
    embedding: int  # embed_tokens, plus lm_head when untied
    non_embedding: int
    active: int  # per token: only the top-k experts of each MoE layer
    active_non_embedding: int


def count_parameters(cfg: ModelConfig) -> ParamCounts:
    groups = tensor_groups(cfg)
    total = sum(g.numel * g.count for g in groups)
    active = sum(g.numel * g.active for g in groups)
    embedding = sum(g.numel * g.count for g in groups if g.kind in _EMBEDDING_KINDS)
    return ParamCounts(
        total=total,
        embedding=embedding,
        non_embedding=total - embedding,
        active=active,
        active_non_embedding=active - embedding,
    )


def _group_bytes(g: TensorGroup, precision: str) -> int:
    if precision == "fp32":
        return 4 * g.numel
    if precision == "bf16" or g.kind not in _QUANTIZED_KINDS:
        return 2 * g.numel
    rows, cols = g.shape
    if precision == "int8":
        return rows * cols + 4 * rows
    if precision == "int4":
        return rows * math.ceil(cols / 2) + 4 * rows * math.ceil(cols / INT4_GROUP_SIZE)
    raise DemiUserError(f"unknown precision {precision!r}; expected one of: " + ", ".join(PRECISIONS))


def weight_bytes(cfg: ModelConfig, precision: str) -> int:
    """Bytes of all weights at `precision` (fp32, bf16, int8, int4; see the module docstring)."""
    if precision not in PRECISIONS:
        raise DemiUserError(f"unknown precision {precision!r}; expected one of: " + ", ".join(PRECISIONS))
    return sum(_group_bytes(g, precision) * g.count for g in tensor_groups(cfg))


def _kv_bytes_per_value(kv_dtype: str) -> int:
    try:
        return KV_DTYPE_BYTES[kv_dtype.lower()]
    except KeyError:
        raise DemiUserError(
            f"unknown KV cache dtype {kv_dtype!r}; expected one of: " + ", ".join(KV_DTYPE_BYTES)
        ) from None


def kv_cache_bytes(cfg: ModelConfig, context: int, kv_dtype: str = "bf16", batch: int = 1) -> int:
    """Keys and values of every softmax layer for `context` positions (2*L*kv_heads*head_dim*ctx*bytes),
    plus each lightning layer's fixed-size state (`lightning_state_bytes`)."""
    return cache_bytes(cfg, context, _kv_bytes_per_value(kv_dtype), batch)


def cache_bytes(cfg: ModelConfig, context: int, bytes_per_value: int, batch: int = 1) -> int:
    """`kv_cache_bytes` with the keys' and values' element size in bytes."""
    if context < 0 or batch < 0:
        raise DemiUserError(f"context and batch must be >= 0, got {context} and {batch}")
    softmax = cfg.num_hidden_layers - len(cfg.lightning_layers)
    kv = 2 * softmax * cfg.num_key_value_heads * cfg.head_dim * context * bytes_per_value * batch
    return kv + lightning_state_bytes(cfg, batch)


def lightning_state_bytes(cfg: ModelConfig, batch: int = 1) -> int:
    """What Demi keeps for the lightning layers, whatever the context: per layer and sequence the fp32
    state [heads, D, D], the state before the last pass's tail and that tail's keys and values
    (`lightning.state_bytes`); 0 without lightning layers."""
    return len(cfg.lightning_layers) * state_bytes(cfg.num_attention_heads, cfg.head_dim, batch)


FSDP_GPUS = (1, 8, 64)  # the GPU counts `demi models info` shows


@dataclass(frozen=True)
class FsdpMemory:
    """Bytes per GPU to train under FSDP2 on `gpus` GPUs, `tokens` per GPU per micro-batch."""

    gpus: int
    tokens: int
    sharded: int  # fp32 weights + gradients + AdamW moments, 1/gpus of each
    gathered: int  # unsharded bf16 copies held at once: root group + two blocks
    activations: int  # with gradient checkpointing
    activations_full: int  # without

    @property
    def total(self) -> int:
        return self.sharded + self.gathered + self.activations

    @property
    def total_full(self) -> int:
        return self.sharded + self.gathered + self.activations_full

    def as_dict(self) -> dict[str, int]:
        return {
            "gpus": self.gpus,
            "tokens": self.tokens,
            "sharded_state_bytes": self.sharded,
            "gathered_bytes": self.gathered,
            "activation_bytes_checkpointing": self.activations,
            "activation_bytes": self.activations_full,
            "total_bytes_checkpointing": self.total,
            "total_bytes": self.total_full,
        }


def fsdp_training_bytes(cfg: ModelConfig, gpus: int, tokens: int) -> FsdpMemory:
    """Per-GPU training memory under FSDP2 (see the module docstring for what is counted)."""
    if gpus < 1 or tokens < 0:
        raise DemiUserError(f"gpus must be >= 1 and tokens >= 0, got {gpus} and {tokens}")
    groups = tensor_groups(cfg)
    total = sum(g.numel * g.count for g in groups)
    root = sum(g.numel * g.count for g in groups if "{i}" not in g.name)
    block = (total - root) // max(1, cfg.num_hidden_layers)
    H, L = cfg.hidden_size, cfg.num_hidden_layers
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    inter = cfg.intermediate_size * (min(cfg.num_experts_per_tok, cfg.num_experts) if cfg.is_moe else 1)
    per_block = 20 * H + 2 * (3 * q + 2 * kv + (2 if cfg.mlp == "gelu" else 4) * inter)  # GELU: c_fc out, GELU out
    logits = 10 * cfg.vocab_size
    return FsdpMemory(
        gpus=gpus,
        tokens=tokens,
        sharded=math.ceil(16 * total / gpus),
        gathered=4 * root + 2 * 8 * block,
        activations=tokens * (L * 2 * H + per_block + logits),
        activations_full=tokens * (L * per_block + logits),
    )


@dataclass(frozen=True)
class ModelInfo:
    """Everything `format_info` shows, as numbers (`as_dict` for `--json`)."""

    params: ParamCounts
    weights: dict[str, int]  # precision -> bytes, for every name in PRECISIONS
    context: int
    kv_dtype: str
    kv_cache: int  # bytes for one sequence of `context` positions (lightning states included)
    fsdp: tuple[FsdpMemory, ...] = ()  # training per GPU under FSDP2, one sequence of `context` per GPU
    lightning_state: int = 0  # the part of kv_cache that is lightning layers' state, the same at any context

    def total_bytes(self, precision: str) -> int:
        """Weights at `precision` plus the KV cache."""
        return self.weights[precision] + self.kv_cache

    def as_dict(self) -> dict[str, Any]:
        return {
            "parameters": {
                "total": self.params.total,
                "embedding": self.params.embedding,
                "non_embedding": self.params.non_embedding,
                "active": self.params.active,
                "active_non_embedding": self.params.active_non_embedding,
            },
            "context": self.context,
            "kv_dtype": self.kv_dtype,
            "kv_cache_bytes": self.kv_cache,
            "lightning_state_bytes": self.lightning_state,
            "weight_bytes": dict(self.weights),
            "total_bytes": {p: self.total_bytes(p) for p in self.weights},
            "fsdp_training_per_gpu": [m.as_dict() for m in self.fsdp],
        }


def model_info(cfg: ModelConfig, context: int | None = None, kv_dtype: str = "bf16") -> ModelInfo:
    """Counts, weight bytes per precision and the KV cache at `context` (default: the model's)."""
    ctx = cfg.max_position_embeddings if context is None else int(context)
    kv = kv_cache_bytes(cfg, ctx, kv_dtype)
    return ModelInfo(
        params=count_parameters(cfg),
        weights={p: weight_bytes(cfg, p) for p in PRECISIONS},
        context=ctx,
        kv_dtype=kv_dtype.lower(),
        kv_cache=kv,
        fsdp=tuple(fsdp_training_bytes(cfg, n, ctx) for n in FSDP_GPUS),
        lightning_state=lightning_state_bytes(cfg),
    )


# --- text -----------------------------------------------------------------------------------


def human_count(n: int) -> str:
    """3085938688 -> '3.09B'."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def human_bytes(n: int) -> str:
    """Binary units: 1.50 GiB, 12.0 MiB."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{value:.2f} TiB"


def _describe(cfg: ModelConfig) -> list[str]:
    heads = f"{cfg.num_attention_heads} query / {cfg.num_key_value_heads} KV heads of dim {cfg.head_dim}"
    if cfg.num_key_value_heads == cfg.num_attention_heads:
        heads += " (MHA)"
    elif cfg.num_key_value_heads == 1:
        heads += " (MQA)"
    elif cfg.num_key_value_heads < cfg.num_attention_heads:
        heads += " (GQA)"
    rope = f"RoPE theta {cfg.rope_theta:g}"
    if cfg.rotary_dim != cfg.head_dim:
        rope += f" on {cfg.rotary_dim} of {cfg.head_dim} dims"
    if cfg.rope_scaling:
        rope += f", {cfg.rope_scaling.get('rope_type', 'scaled')} scaling"
    extras = [
        x
        for x, on in (
            ("qkv bias", cfg.qkv_bias),
            ("o bias", cfg.o_bias),
            ("mlp bias", cfg.mlp_bias),
            (f"QK norm ({cfg.qk_norm})", cfg.qk_norm != "none"),
            (f"sliding window {cfg.sliding_window}", bool(cfg.sliding_window)),
        )
        if on
    ]
    if cfg.is_moe:
        ffn = (
            f"MoE: {cfg.num_experts} experts of intermediate {cfg.intermediate_size}, "
            f"top-{cfg.num_experts_per_tok}, {cfg.router} router"
            + (" with correction bias" if cfg.routing_bias else "")
        )
    elif cfg.mlp == "gelu":
        ffn = f"dense GELU MLP ({cfg.hidden_act}), intermediate {cfg.intermediate_size}"
    else:
        ffn = f"dense SwiGLU, intermediate {cfg.intermediate_size}"
    norm = "LayerNorm with bias" if cfg.norm == "layer" else "RMSNorm"
    if cfg.postnorm:
        norm += " after each residual (post-norm)"
    layers = f"{cfg.num_hidden_layers} layers"
    if cfg.lightning_layers:
        n = len(cfg.lightning_layers)
        layers += f" ({n} lightning, {cfg.num_hidden_layers - n} softmax)"
    return [
        f"{cfg.model_type}, {layers}, hidden {cfg.hidden_size}, {ffn}, {norm}",
        f"attention: {heads}; {rope}" + ("; " + ", ".join(extras) if extras else ""),
        f"vocab {cfg.vocab_size}, {'tied' if cfg.tie_word_embeddings else 'untied'} "
        f"embeddings, context {cfg.max_position_embeddings}",
    ]


def format_info(
    name: str,
    cfg: ModelConfig,
    ctx: int | None = None,
    *,
    kv_dtype: str = "bf16",
    precisions: Sequence[str] | None = None,
) -> str:
    """A human-readable summary: shape, parameter counts, memory per precision at `ctx`.

    `ctx` defaults to the model's context length; `precisions` picks rows (default: all of
    fp32, bf16, int8, int4).
    """
    info = model_info(cfg, ctx, kv_dtype)
    rows = list(precisions) if precisions else list(PRECISIONS)
    for p in rows:
        if p not in PRECISIONS:
            raise DemiUserError(f"unknown precision {p!r}; expected one of: " + ", ".join(PRECISIONS))
    pc = info.params
    lines = [name] + ["  " + line for line in _describe(cfg)]
    lines.append("")
    lines.append("parameters")
    emb_note = "embed_tokens, shared with lm_head" if cfg.tie_word_embeddings else "embed_tokens + lm_head"
    table: list[tuple[str, int, str]] = [
        ("total", pc.total, ""),
        ("embedding", pc.embedding, emb_note),
        ("non-embedding", pc.non_embedding, ""),
    ]
    if cfg.is_moe:
        table.append(
            (
                "active per token",
                pc.active,
                f"top-{cfg.num_experts_per_tok} of {cfg.num_experts} experts; "
                f"{human_count(pc.active_non_embedding)} without embeddings",
            )
        )
    for label, n, note in table:
        lines.append(f"  {label:<17}{human_count(n):>9}  {n:>17,}" + (f"  {note}" if note else ""))
    lines.append("")
    kv_head = f"KV @ {info.context} ({info.kv_dtype})"
    lines.append(f"memory{'':<6}{'weights':>12}  {kv_head:>22}  {'total':>12}")
    for p in rows:
        lines.append(
            f"  {p:<10}{human_bytes(info.weights[p]):>12}  "
            f"{human_bytes(info.kv_cache):>22}  {human_bytes(info.total_bytes(p)):>12}"
        )
    lines.append("")
    notes = {
        "int8": "int8: weight-only per output channel (fp32 scale); embeddings, norms, biases, router in bf16",
        "int4": f"int4: groups of {INT4_GROUP_SIZE} with bf16 scale + zero; the rest in bf16",
    }
    lines.extend(notes[p] for p in rows if p in notes)
    lightning = len(cfg.lightning_layers)
    lines.append(
        f"KV cache: 2 x {cfg.num_hidden_layers - lightning} {'softmax ' if lightning else ''}layers x "
        f"{cfg.num_key_value_heads} KV heads x {cfg.head_dim} x {info.context} positions x "
        f"{_kv_bytes_per_value(kv_dtype)} bytes, one sequence"
    )
    if lightning:
        lines.append(
            f"lightning layers: a fixed-size state instead, {human_bytes(info.lightning_state)} at any context "
            f"({lightning} layers x {cfg.num_attention_heads} heads x fp32 [{cfg.head_dim} x {cfg.head_dim}], "
            f"twice, plus the last {REWIND_ROWS} keys and values)"
        )
    lines.append("")
    lines.append(
        f"training per GPU under FSDP2 (bf16 compute; fp32 weights, gradients and AdamW state sharded; "
        f"one {info.context}-token sequence per GPU)"
    )
    lines.append(f"  {'GPUs':>5}  {'sharded':>10}  {'gathered':>10}  {'activations':>22}  {'total':>22}")
    lines.append(f"  {'':>5}  {'':>10}  {'':>10}  {'checkpointed / all':>22}  {'checkpointed / all':>22}")
    for m in info.fsdp:
        lines.append(
            f"  {m.gpus:>5}  {human_bytes(m.sharded):>10}  {human_bytes(m.gathered):>10}  "
            f"{human_bytes(m.activations) + ' / ' + human_bytes(m.activations_full):>22}  "
            f"{human_bytes(m.total) + ' / ' + human_bytes(m.total_full):>22}"
        )
    lines.append("(an estimate: plus the CUDA context and allocator slack, typically 1-3 GiB; see model/info.py)")
    return "\n".join(lines)
