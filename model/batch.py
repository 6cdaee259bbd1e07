"""Continuous batching, the engine's half: one decode step for several sequences at once.

Decoding on a CPU is bound by memory bandwidth: every token reads every weight. B sequences
decoded together read each weight once for all of them. `decode_batch` runs the linear layers
(qkv, o_proj, the MLP, the LM head) on the B rows in one call each, and attention per sequence,
each against its own KV cache at its own position with its own rotation and mask, so a row's
logits are what that sequence's own `generate.decode_one_token` gives.

A generation in batch mode (`generate.Run.batch`) does not run its decode steps itself: it yields
a `DecodeStep` and waits to be sent that step's logits. The scheduler (assistant/runner.py)
collects the steps its live runs are waiting on, has `LocalModel.decode_batch` run them together,
and sends each run its row. Everything else about a run (sampling, token healing, stop tokens and
strings, cancellation, deadlines, speculative verification) stays in its own generator.

Exactness: on a quantized CPU model the native kernels take up to `DECODE_ROWS` rows and work row
by row, so each row is bit for bit a one-row step; bigger batches are cut into groups of that many.
Where the one-call decode stack fits (decode_stack.py), the whole step for all rows is one native
call, still row by row inside.
The int8 head's int4 shadow (`RescoredHead`) is run on all rows at once and rescored row by row, as
its one-row path does. A mixture of experts runs per row (each row picks its own experts anyway), and
so does every row of a MiniMax hybrid stack (minimax.py, lightning.py: a plain step per row).
Float (fp32/bf16) matmuls may round a many-row product differently from a one-row one (a
different kernel blocking), so there greedy output matches a lone run except on near-ties: the
tests compare logits with a tolerance.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from demi.model import decode_ops
from demi.model.decoder import Attention, Block, KVCache, Transformer, attention_mask, decode_ops_ready
from demi.model.fusion import FusedAttention
from demi.model.quantize import DECODE_ROWS, RescoredHead
from demi.model.threads import GOVERNOR

__all__ = ["DecodeStep", "decode_batch", "decode_rows", "head_rows"]


@dataclass(eq=False)
class DecodeStep:
    """One sequence's next decode step, yielded by a generation in batch mode: `token` [1, 1] at
    position `pos`, its keys and values to be written into `cache`. Send the logits [1, V] back.
    `timed`: the generation prices speculative checks against lone steps, and this one may be timed
    if it runs alone (`check_cost`)."""

    token: Tensor
    pos: int
    cache: KVCache
    timed: bool = False


def decode_rows(model: Transformer) -> int | None:
    """The most rows one pass may hold so that each row is computed as a one-row decode step: a
    quantized CPU model's native kernels work row by row only up to DECODE_ROWS rows (more go
    through the prefill path, whose rounding differs); None: no limit."""
    if getattr(model, "quantization", "none") in ("int8", "int4") and model.device.type == "cpu":
        return DECODE_ROWS
    return None


@torch.inference_mode()
def decode_batch(model: Transformer, tokens: Tensor, positions: list[int], caches: list[KVCache]) -> Tensor:
    """Logits [B, V] (fp32) after each of `tokens` [B], sequence i's token at `positions[i]`, its
    keys and values written into `caches[i]` (whose length becomes positions[i] + 1)."""
    if not len(positions) == len(caches) == tokens.numel():
        raise ValueError("decode_batch needs one position and one cache per token")
    if len(set(map(id, caches))) != len(caches):
        raise ValueError("decode_batch needs a cache of its own for every sequence")
    GOVERNOR.tick()  # one row per sequence: decode-sized, as Transformer.hidden_states counts it (threads.py)
    limit = decode_rows(model) or len(positions)
    flat = tokens.reshape(-1)
    parts = [
        _decode(model, flat[lo : lo + limit], positions[lo : lo + limit], caches[lo : lo + limit])
        for lo in range(0, len(positions), limit)
    ]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _decode(model: Transformer, tokens: Tensor, positions: list[int], caches: list[KVCache]) -> Tensor:
    if len(positions) == 1:  # a batch of one is exactly the plain step
        return model(tokens.view(1, 1), start=positions[0], cache=caches[0])[:, -1].float()
    if model.config.postnorm or model.config.lightning_layers or not model.config.native_rotary:
        # MiniMax's post-norm blocks (minimax.py), lightning states and xPos (queries and keys scaled
        # apart, which the shared q/k pass below does not do): each row is its own plain step
        return torch.cat(
            [_decode(model, tokens[i : i + 1], positions[i : i + 1], caches[i : i + 1]) for i in range(len(positions))]
        )
    b = len(positions)
    x = model.model.embed_tokens(tokens.view(b, 1))
    table = model.rotary_table(x.device)
    rotations = [table.lookup(p, 1, x.device) for p in positions]
    stack = model.decode_stack
    if stack is not None and decode_ops_ready(x) and all(stack.usable(c) for c in caches):
        # every layer in one native call, each row bit for bit its lone step (decode_stack.py)
        cos, sin = torch.cat([c for c, _ in rotations]), torch.cat([s for _, s in rotations])
        hidden = stack.rows(x.view(b, -1), positions, caches, cos, sin).view(b, 1, -1)
        for pos, cache in zip(positions, caches):
            cache.length = pos + 1
        return head_rows(model.lm_head, model.model.norm(hidden))
    # [B, 1, 1, rot]: row i's rotation broadcast over its heads (apply_rotary takes x [B, heads, 1, D])
    cos = torch.stack([c for c, _ in rotations]).unsqueeze(1).to(x.dtype)
    sin = torch.stack([s for _, s in rotations]).unsqueeze(1).to(x.dtype)
    window = model.config.sliding_window
    masks = [attention_mask(p, 1, window, x.device) for p in positions]
    for layer in model.model.layers:
        assert isinstance(layer, Block) and isinstance(layer.self_attn, Attention)
        x = x + _attend(layer.self_attn, layer.input_layernorm(x), cos, sin, positions, caches, masks)
        h = layer.post_attention_layernorm(x)
        if layer.is_moe:  # each row routes to its own experts, as a one-row step does
            x = x + torch.cat([layer.block_sparse_moe(h[i : i + 1])[0] for i in range(b)])
        else:
            x = x + layer.mlp(h)
    for pos, cache in zip(positions, caches):
        cache.length = pos + 1
    return head_rows(model.lm_head, model.model.norm(x))


def _attend(
    attn: Attention,
    x: Tensor,
    cos: Tensor,
    sin: Tensor,
    positions: list[int],
    caches: list[KVCache],
    masks: list[Tensor | None],
) -> Tensor:
    """Attention's forward for B sequences of one token: q, k, v and the output projection for all
    rows in one matmul each, attention row by row against each sequence's own cache."""
    b = x.shape[0]
    if isinstance(attn, FusedAttention) and all(decode_ops.usable(attn, x, c) for c in caches):
        native = decode_ops.attend_rows(attn, attn.qkv_proj(x).view(b, -1), cos, sin, positions, caches)
        return attn.o_proj(native.view(b, 1, -1))
    q, k, v = attn.qkv(x, cos, sin)  # [B, heads, 1, D]
    gqa = attn.n_kv != attn.n_heads
    rows = []
    for i, (pos, cache, mask) in enumerate(zip(positions, caches, masks)):
        keys, values = cache.update(attn.layer, pos, k[i : i + 1], v[i : i + 1])
        rows.append(F.scaled_dot_product_attention(q[i : i + 1], keys, values, attn_mask=mask, enable_gqa=gqa))
    y = torch.cat(rows)
    return attn.o_proj(y.transpose(1, 2).reshape(b, 1, -1))


def head_rows(head: torch.nn.Module, hidden: Tensor) -> Tensor:
    """Logits [B, V] (fp32) for hidden [B, 1, H]. An int8 head with an int4 shadow (`RescoredHead`)
    runs the shadow once for every row, then rescores each row's candidates from the exact int8 rows
    as its one-row path does (its many-row path is exact int8 throughout, which a lone decode step
    never runs)."""
    if not isinstance(head, RescoredHead):
        return head(hidden)[:, -1].float()
    x2 = hidden.reshape(-1, head.in_features)
    return head.rescored(x2, head.shadow(x2))
