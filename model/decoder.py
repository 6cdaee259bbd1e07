"""The decoder: one compact module tree for every supported family.

Module names follow Hugging Face checkpoints (`model.layers.N.self_attn.q_proj`, ...), so a
checkpoint loads by name with no renaming table. The families differ only in switches on
`ModelConfig`: qkv bias, per-head or whole-projection QK norm, partial rotary, dense SwiGLU
or a mixture of experts routed by softmax (Mixtral) or by sigmoid scores plus a correction
bias used only for choosing (MiniMax-M2).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from demi.model.config import ModelConfig
from demi.model.rope import RotaryTable, apply_rotary


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # One fused kernel (it accumulates in fp32 for half types too); in fp32 it is exactly
        # Hugging Face's math, in bf16 it differs only in where the last rounding happens.
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


class KVCache:
    """Preallocated keys and values for every layer: [batch, kv_heads, max_len, head_dim]."""

    def __init__(
        self,
        cfg: ModelConfig,
        max_len: int,
        batch: int = 1,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (batch, cfg.num_key_value_heads, max_len, cfg.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(cfg.num_hidden_layers)]
        self.max_len = max_len
        self.length = 0  # tokens whose keys and values are valid

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        end = start + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


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
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        q_dim, kv_dim = self.n_heads * self.head_dim, self.n_kv * self.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, q_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(cfg.hidden_size, kv_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(q_dim, cfg.hidden_size, bias=cfg.o_bias)
        self.qk_norm = cfg.qk_norm
        if cfg.qk_norm == "head":
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps)
        elif cfg.qk_norm == "whole":
            self.q_norm = RMSNorm(q_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(kv_dim, cfg.rms_norm_eps)

    def forward(
        self, x: Tensor, cos: Tensor, sin: Tensor, start: int, mask: Tensor | None, cache: KVCache | None
    ) -> Tensor:
        b, t, _ = x.shape
        hq, hkv, d = self.n_heads, self.n_kv, self.head_dim
        if hasattr(self, "qkv_proj"):
            qkv = self.qkv_proj(x)
            if self.qk_norm == "none":  # one rotary pass over the adjacent q and k heads
                qk = apply_rotary(qkv[..., : (hq + hkv) * d].view(b, t, hq + hkv, d).transpose(1, 2), cos, sin)
                q, k = qk[:, :hq], qk[:, hq:]
                v = qkv[..., (hq + hkv) * d :].view(b, t, hkv, d).transpose(1, 2)
                return self._attend(q, k, v, b, t, start, mask, cache)
            q, k, v = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.qk_norm == "whole":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.view(b, t, hq, d), k.view(b, t, hkv, d)
        if self.qk_norm == "head":
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q.transpose(1, 2), cos, sin), apply_rotary(k.transpose(1, 2), cos, sin)
        v = v.view(b, t, hkv, d).transpose(1, 2)
        return self._attend(q, k, v, b, t, start, mask, cache)

    def _attend(
        self, q: Tensor, k: Tensor, v: Tensor, b: int, t: int, start: int, mask: Tensor | None, cache: KVCache | None
    ) -> Tensor:
        if cache is not None:
            k, v = cache.update(self.layer, start, k, v)
        causal = mask is None and t > 1
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=self.n_kv != self.n_heads
        )
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, hidden: int, inter: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=bias)
        self.up_proj = nn.Linear(hidden, inter, bias=bias)
        self.down_proj = nn.Linear(inter, hidden, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        if hasattr(self, "gate_up_proj"):
            gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
            return self.down_proj(F.silu(gate) * up)
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
        self.self_attn = Attention(cfg, layer)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        if cfg.is_moe:
            self.block_sparse_moe = MoE(cfg)
        else:
            self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias)

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        start: int,
        mask: Tensor | None,
        cache: KVCache | None,
        router_logits: list[Tensor] | None = None,
    ) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, start, mask, cache)
        h = self.post_attention_layernorm(x)
        if hasattr(self, "mlp"):
            return x + self.mlp(h)
        out, logits = self.block_sparse_moe(h)
        if router_logits is not None:
            router_logits.append(logits)
        return x + out


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


# Projections that read the same input are fused into one matmul for inference.
FUSIONS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}


def fuse_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Concatenate the rows of fused projections (weights, biases and any per-row scales)."""
    out = dict(state)
    for key in list(state):
        for fused, parts in FUSIONS.items():
            tag = f".{parts[0]}."
            if tag not in key:
                continue
            prefix, suffix = key.split(tag, 1)
            names = [f"{prefix}.{p}.{suffix}" for p in parts]
            if all(n in out for n in names):
                out[f"{prefix}.{fused}.{suffix}"] = torch.cat([out.pop(n) for n in names], dim=0)
    return out


def unfuse_state_dict(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """The Hugging Face names again: split fused rows back into q/k/v and gate/up."""
    sizes = {
        "qkv_proj": [cfg.num_attention_heads * cfg.head_dim] + [cfg.num_key_value_heads * cfg.head_dim] * 2,
        "gate_up_proj": [cfg.intermediate_size] * 2,
    }
    out = {}
    for key, value in state.items():
        fused = next((f for f in FUSIONS if f".{f}." in key), None)
        if fused is None:
            out[key] = value
            continue
        prefix, suffix = key.split(f".{fused}.", 1)
        for part, piece in zip(FUSIONS[fused], value.split(sizes[fused], dim=0)):
            out[f"{prefix}.{part}.{suffix}"] = piece
    return out


def fuse_modules(model: nn.Module) -> None:
    """Swap the separate projections for fused meta-device Linears (weights come from the state)."""
    for module in list(model.modules()):
        for fused, parts in FUSIONS.items():
            if all(isinstance(getattr(module, p, None), nn.Linear) for p in parts):
                linears = [getattr(module, p) for p in parts]
                out = sum(l.out_features for l in linears)
                setattr(
                    module,
                    fused,
                    nn.Linear(linears[0].in_features, out, bias=linears[0].bias is not None, device="meta"),
                )
                for p in parts:
                    delattr(module, p)


class Transformer(nn.Module):
    """Decoder-only LM. `forward(tokens, start, cache)` returns logits for every input position."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.rotary: RotaryTable | None = None

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
        self, tokens: Tensor, start: int = 0, cache: KVCache | None = None, router_logits: list[Tensor] | None = None
    ) -> Tensor:
        """Final-normed hidden states [B, T, H] for tokens at positions start..start+T-1."""
        t = tokens.shape[1]
        x = self.model.embed_tokens(tokens)
        cos, sin = self.rotary_table(x.device).lookup(start, t, x.device)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # once per forward, not per layer
        mask = attention_mask(start if cache is not None else 0, t, self.config.sliding_window, x.device)
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
