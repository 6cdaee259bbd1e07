"""The decoder: one compact module tree for every supported family.

Module names follow Hugging Face checkpoints (`model.layers.N.self_attn.q_proj`, ...), so a
checkpoint loads by name with no renaming table. The families differ only in switches on
`ModelConfig`: qkv bias, per-head or whole-projection QK norm, partial rotary, dense SwiGLU
or a mixture of experts routed by softmax (Mixtral) or by sigmoid scores plus a correction
bias used only for choosing (MiniMax-M2), RMSNorm or LayerNorm and a GELU MLP (StarCoder2,
starcoder2.py), lightning layers with a fixed-size state among the softmax ones and post-norm
blocks (MiniMax-Text-01, lightning.py and minimax.py).
"""

from __future__ import annotations

import ctypes
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from demi.model import prefill_attention
from demi.model.config import ModelConfig
from demi.model.lightning import LightningAttention, LightningState
from demi.model.rope import RotaryTable, apply_rotary
from demi.model.starcoder2 import GeluMLP, layer_norm
from demi.model.threads import GOVERNOR
from demi.model.xpos import layer_xpos


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.step_lib: ctypes.CDLL | None = None  # native RMSNorm for inference (decode_ops.py)

    def forward(self, x: Tensor) -> Tensor:
        if self.step_lib is not None and decode_ops_ready(x, self.weight):
            return native_rms_norm(self.step_lib, x, self.weight, self.eps)
        # One fused kernel (it accumulates in fp32 for half types too); in fp32 it is exactly
        # Hugging Face's math, in bf16 it differs only in where the last rounding happens.
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    """The family's norm: RMSNorm, or LayerNorm with a bias (StarCoder2, `cfg.norm == "layer"`)."""
    return layer_norm(cfg, dim) if cfg.norm == "layer" else RMSNorm(dim, cfg.rms_norm_eps)


def decode_ops_ready(*tensors: Tensor) -> bool:
    """Whether a native inference op may take `tensors`: fp32 on a CPU, and no gradient wanted."""
    grad = torch.is_grad_enabled()
    return all(t.dtype == torch.float32 and t.device.type == "cpu" and not (grad and t.requires_grad) for t in tensors)


def native_rms_norm(lib: ctypes.CDLL, x: Tensor, weight: Tensor, eps: float) -> Tensor:
    """RMSNorm through native/decode_ops.c: one pass per row instead of torch's composite."""
    x = x.contiguous()
    y = torch.empty_like(x)
    n = weight.shape[0]
    lib.demi_rms_norm(x.data_ptr(), weight.contiguous().data_ptr(), eps, y.data_ptr(), x.numel() // n, n)
    return y


class KVCache:
    """Preallocated keys and values for every softmax layer: [batch, kv_heads, max_len, head_dim];
    a lightning layer's fixed-size state instead (`states[layer]`, lightning.py; its k and v are empty)."""

    def __init__(
        self,
        cfg: ModelConfig,
        max_len: int,
        batch: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        lightning = set(cfg.lightning_layers)
        layers = range(cfg.num_hidden_layers)
        self.k = [torch.zeros(0 if i in lightning else shape, dtype=dtype, device=device) for i in layers]
        self.v = [torch.zeros(0 if i in lightning else shape, dtype=dtype, device=device) for i in layers]
        self.states = [
            LightningState(batch, cfg.num_attention_heads, cfg.head_dim, device) if i in lightning else None
            for i in layers
        ]
        self.max_len = max_len
        self.length = 0  # tokens whose keys and values are valid

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = start + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v) + sum(
            s.nbytes() for s in self.states if s is not None
        )

    @property
    def recurrent(self) -> bool:
        """Whether lightning states are part of it: they can be neither cut at any token nor moved."""
        return any(s is not None for s in self.states)

    def reusable(self, tokens: int) -> int:
        """How many of the first `tokens` cached tokens a pass can start after: all of them for keys
        and values, or 0 when a lightning state cannot go back to that token (lightning.py)."""
        return tokens if all(s is None or s.can_resume(tokens) for s in self.states) else 0


# An attention mask: None (causal or a single query), a boolean tensor, or one per query row (each
# query attended on its own, exactly as a one-token decode step does: `hidden_states(rowwise=True)`).
Mask = Tensor | list[Tensor | None] | None


def attention_mask(start: int, count: int, window: int | None, device: torch.device) -> Tensor | None:
    """Boolean mask [count, start+count] (True = attend), or None where SDPA needs none."""
    total = start + count
    if window is None or total <= window:
        if count == 1:
            return None
        if start == 0:
            return None  # the caller uses is_causal
    q_pos = torch.arange(start, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    mask = k_pos <= q_pos
    if window is not None:
        mask &= k_pos > q_pos - window
    return mask


class Attention(nn.Module):
    """Grouped-query attention with q, k and v projected separately, as checkpoints store them."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.window = cfg.sliding_window
        self.xpos = layer_xpos(cfg, layer)  # xPos's q and k scales on top of RoPE (xpos.py), else None
        self.step_lib = None  # native decode attention (decode_ops.py)
        self.prefill_lib: ctypes.CDLL | None = None  # native prompt attention (prefill_attention.py)
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.projections(cfg.hidden_size, q_dim, kv_dim, cfg.qkv_bias)
        self.o_proj = nn.Linear(q_dim, cfg.hidden_size, bias=cfg.o_bias)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm == "head":
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        elif cfg.qk_norm == "whole":
            self.q_norm = RMSNorm(q_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(kv_dim, cfg.rms_norm_eps)

    @property
    def step_lib(self) -> ctypes.CDLL | None:
        """The native library this layer decodes with (`decode_ops.attach` arms it). An xPos layer
        takes none: native/decode_ops.c gives q and k one rotation, xPos scales them apart."""
        return self._step_lib

    @step_lib.setter
    def step_lib(self, lib: ctypes.CDLL | None) -> None:
        self._step_lib = lib if self.xpos is None else None

    def projections(self, hidden: int, q_dim: int, kv_dim: int, bias: bool) -> None:
        self.q_proj = nn.Linear(hidden, q_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, kv_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, kv_dim, bias=bias)

    def qkv(self, x: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Queries, keys and values [B, heads, T, D], QK-normed and rotated."""
        return self.heads(self.q_proj(x), self.k_proj(x), self.v_proj(x), cos, sin)

    def heads(self, q: Tensor, k: Tensor, v: Tensor, cos: Tensor, sin: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        b, t, _ = q.shape
        if self.qk_norm == "whole":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.view(b, t, self.n_heads, self.head_dim), k.view(b, t, self.n_kv, self.head_dim)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q.transpose(1, 2), cos, sin), apply_rotary(k.transpose(1, 2), cos, sin)
        return q, k, v.view(b, t, self.n_kv, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start: int, mask: Mask, cache: KVCache | None) -> Tensor:
        q, k, v = self.qkv(x, cos, sin)
        if self.xpos is not None:  # keys enter the cache scaled at their own positions
            q, k = self.xpos(q, k, start)
        if cache is not None:
            k, v = cache.update(self.layer, start, k, v)
        return self.o_proj(self.attend(q, k, v, mask))

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask) -> Tensor:
        """Attention rows [B, T, heads * D] of queries q [B, heads, T, D] at the last T positions of
        k and v: natively for a prompt where the plan chose it (prefill_attention.py), else SDPA."""
        b, _, t, _ = q.shape
        if self.prefill_lib is not None and b == 1 and t > 1 and not isinstance(mask, list):
            # (a tensor mask here is the causal one from attention_mask: the kernel applies it itself)
            rows = prefill_attention.attend(self.prefill_lib, q, k, v, self.window)
            if rows is not None:
                return rows.unsqueeze(0)
        gqa = self.n_kv != self.n_heads
        if isinstance(mask, list):  # row by row, as decode steps would (see Transformer.hidden_states)
            end = k.shape[2] - t + 1
            y = torch.cat(
                [
                    F.scaled_dot_product_attention(
                        q[:, :, i : i + 1], k[:, :, : end + i], v[:, :, : end + i], attn_mask=m, enable_gqa=gqa
                    )
                    for i, m in enumerate(mask)
                ],
                dim=2,
            )
        else:
            causal = mask is None and t > 1
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=gqa)
        return y.transpose(1, 2).reshape(b, t, -1)


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, hidden: int, inter: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=bias)
        self.up_proj = nn.Linear(hidden, inter, bias=bias)
        self.down_proj = nn.Linear(inter, hidden, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Expert(nn.Module):
    """One SwiGLU expert, named as in Mixtral and MiniMax-M2 checkpoints (w1 gate, w3 up, w2 down)."""

    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.w1 = nn.Linear(hidden, inter, bias=False)
        self.w2 = nn.Linear(inter, hidden, bias=False)
        self.w3 = nn.Linear(hidden, inter, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class MoE(nn.Module):
    """Top-k mixture of experts; returns the output and the router logits (for training losses)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k, self.router = cfg.num_experts_per_tok, cfg.router
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(Expert(cfg.hidden_size, cfg.intermediate_size) for _ in range(cfg.num_experts))
        if cfg.routing_bias:
            self.register_buffer("e_score_correction_bias", torch.zeros(cfg.num_experts))
        else:
            self.e_score_correction_bias = None

    def route(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return (weights [N,k], expert ids [N,k], router logits [N,E]) for tokens x [N,H]."""
        logits = self.gate(x)
        if self.router == "sigmoid":
            scores = torch.sigmoid(logits.float())
            choice = scores if self.e_score_correction_bias is None else scores + self.e_score_correction_bias
            idx = torch.topk(choice, self.top_k, dim=-1, sorted=False).indices
            weights = scores.gather(1, idx)
        else:
            weights, idx = torch.topk(torch.softmax(logits.float(), dim=-1), self.top_k, dim=-1)
        return weights / weights.sum(-1, keepdim=True), idx, logits

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, idx, logits = self.route(flat)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(flat)
        if flat.shape[0] == 1:  # decode: run just the chosen experts
            for w, e in zip(weights[0], idx[0].tolist()):
                out += w * self.experts[e](flat)
        else:
            for e in idx.unique().tolist():
                tok, slot = torch.where(idx == e)
                out.index_add_(0, tok, self.experts[e](flat[tok]) * weights[tok, slot, None])
        return out.view(shape), logits


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.self_attn: Attention | LightningAttention = (
            LightningAttention(cfg, layer) if cfg.is_lightning(layer) else Attention(cfg, layer)
        )
        self.input_layernorm = make_norm(cfg, cfg.hidden_size)
        self.post_attention_layernorm = make_norm(cfg, cfg.hidden_size)
        self.is_moe = cfg.is_moe
        if cfg.is_moe:
            self.block_sparse_moe = MoE(cfg)
        elif cfg.mlp == "gelu":
            self.mlp: nn.Module = GeluMLP(cfg)  # StarCoder2
        else:
            self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)  # or fusion.FusedMLP

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        start: int,
        mask: Mask,
        cache: KVCache | None,
        router_logits: list[Tensor] | None = None,
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, start, mask, cache)
        h = self.post_attention_layernorm(x)
        if not self.is_moe:
            return x + self.mlp(h)
        out, logits = self.block_sparse_moe(h)
        if router_logits is not None:
            router_logits.append(logits)
        return x + out


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(block_class(cfg)(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = make_norm(cfg, cfg.hidden_size)


def block_class(cfg: ModelConfig) -> type[Block]:
    """Block, or MiniMax's post-norm block (minimax.py, which builds on this module)."""
    if not cfg.postnorm:
        return Block
    from demi.model.minimax import MiniMaxBlock

    return MiniMaxBlock


class Transformer(nn.Module):
    """Decoder-only LM. `forward(tokens, start, cache)` returns logits for every input position."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.rotary: RotaryTable | None = None
        self.decode_stack: Any = None  # decode_stack.DecodeStack: a lone decode step in one native call

    @property
    def device(self) -> torch.device:
        return self.model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.embed_tokens.weight.dtype

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def rotary_table(self, device: torch.device) -> RotaryTable:
        if self.rotary is None or self.rotary.cos.device != device:
            self.rotary = RotaryTable(self.config, min(self.config.max_position_embeddings, 4096), device)
        return self.rotary

    def hidden_states(
        self,
        tokens: Tensor,
        start: int = 0,
        cache: KVCache | None = None,
        router_logits: list[Tensor] | None = None,
        rowwise: bool = False,
    ) -> Tensor:
        """Final-normed hidden states [B, T, H] for tokens at positions start..start+T-1.

        With `rowwise` (and a cache), attention runs one query row at a time with the mask a
        one-token step at that position gets, so each row's result is bit for bit a decode step's
        (speculative decoding's check; the other layers work row by row already). Quantized kernels
        that round activations would otherwise turn SDPA's last-bit differences between one and
        many queries into different logits."""
        GOVERNOR.tick(tokens.shape[1])  # decode follows the cores other processes leave free (threads.py)
        t = tokens.shape[1]
        x = self.model.embed_tokens(tokens)
        cos, sin = self.rotary_table(x.device).lookup(start, t, x.device)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # once per forward, not per layer
        stack = self.decode_stack
        lone_rows = t == 1 or rowwise  # a decode step, or a speculative check: rows computed as lone steps
        if lone_rows and stack is not None and cache is not None and router_logits is None and tokens.shape[0] == 1:
            if decode_ops_ready(x) and stack.usable(cache):  # bit for bit the layers', in one native call
                if t > 1:  # each row's rotation as its own step looks it up (a dynamic table differs)
                    table = self.rotary_table(x.device)
                    rows = [table.lookup(start + i, 1, x.device) for i in range(t)]
                    cos, sin = torch.cat([c for c, _ in rows]), torch.cat([s for _, s in rows])
                x = stack.rows(x[0], list(range(start, start + t)), [cache] * t, cos, sin).unsqueeze(0)
                cache.length = start + t
                return self.model.norm(x)
        window = self.config.sliding_window
        mask: Mask
        if rowwise and cache is not None and t > 1:
            mask = [attention_mask(start + i, 1, window, x.device) for i in range(t)]
        else:
            mask = attention_mask(start if cache is not None else 0, t, window, x.device)
        for layer in self.model.layers:
            x = layer(x, cos, sin, start, mask, cache, router_logits)
        if cache is not None:
            cache.length = start + t
        return self.model.norm(x)

    def forward(
        self,
        tokens: Tensor,
        start: int = 0,
        cache: KVCache | None = None,
        router_logits: list[Tensor] | None = None,
        last_only: bool = False,
    ) -> Tensor:
        """Logits [B, T, V] (or [B, 1, V] with last_only); with a cache, keys before `start` are reused."""
        x = self.hidden_states(tokens, start, cache, router_logits)
        return self.lm_head(x[:, -1:] if last_only else x)
