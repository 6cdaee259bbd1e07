"""Lightning attention, MiniMax-Text-01's linear attention: a fixed-size state instead of a KV cache.

Per head, with q, k, v = SiLU of one projection (no RoPE, no softmax, no scaling) and a decay
lambda = exp(-s) < 1 per head, the layer keeps one [head_dim, head_dim] matrix

    S_t = lambda * S_(t-1) + k_t^T v_t          o_t = q_t S_t

so a decode step costs the same at token 10 and at token 1,000,000. The slopes s are ALiBi's
geometric ones, 2^(-8 h / heads) for head h = 1..heads, scaled down with depth to about zero at
the last layer (`slopes`). The output is RMS-normed over all heads (eps 1e-6), gated by
sigmoid(output_gate(x)) and projected back (`out_proj`).

A prompt is absorbed in blocks (`absorb_blocks`), which is the same sum written as matmuls: within
a block, (q k^T masked by lambda^(i-j)) v; from earlier blocks, (q * lambda^(i+1)) S; then S moves
on by the block's keys and values, each weighted by its remaining decay. A decode step, and each
row of a speculative check, uses the recurrence itself (`absorb_steps`), so a check's rows are
computed exactly as decode steps would compute them.

The state holds the tokens it has absorbed and cannot forget one. To go back a little (the drafts a
speculative check rejected, a prefill's padding rows), `LightningState` keeps the state before the
last pass's final REWIND_ROWS rows and those rows' keys and values: resuming anywhere in that tail
replays it; going back further is impossible, and `KVCache.reusable` (decoder.py) tells the prefix
cache so (a prompt is then prefilled from its start).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from demi.model.config import ModelConfig

if TYPE_CHECKING:  # decoder.py imports this module
    from demi.model.decoder import KVCache, Mask

REWIND_ROWS = 64  # covers a padded prefill's padding (< 64, generate.PAD_BUCKETS) and a speculative check (<= 17)
NORM_EPS = 1e-6  # the output norm's eps (transformers' MiniMaxRMSNorm default, not rms_norm_eps)


def slopes(heads: int, layer: int, layers: int) -> Tensor:
    """Decay rates s [heads] (fp32) of lightning layer `layer` of `layers`: lambda = exp(-s)."""
    base = 1 / (2 ** (8 / heads))
    depth = 1 - layer / (layers - 1 + 1e-5) + 1e-5
    return base ** (torch.arange(heads, device="cpu") + 1) * depth


def state_bytes(heads: int, head_dim: int, batch: int = 1) -> int:
    """What a `LightningState` holds at most, in bytes: the state and the one before the last pass's
    tail (fp32 [heads, D, D] each), and that tail's keys and values (REWIND_ROWS rows)."""
    return batch * heads * 4 * (2 * head_dim * head_dim + 2 * REWIND_ROWS * head_dim)


class LightningState:
    """One lightning layer's cache for `batch` sequences: `kv` [B, H, D, D] fp32 after `length` tokens,
    and the tail of the last pass (`tail_start`, the state `before` it, its `keys` and `values`
    [B, H, n, D], and whether it was absorbed step by step) to go back within it."""

    def __init__(self, batch: int, heads: int, head_dim: int, device: torch.device | str):
        self.kv = torch.zeros(batch, heads, head_dim, head_dim, dtype=torch.float32, device=device)
        self.length = 0
        self.reset()

    def reset(self) -> None:
        """No token absorbed."""
        self.kv = torch.zeros_like(self.kv)
        self.length = self.tail_start = 0
        self.before = self.kv
        b, h, d, _ = self.kv.shape
        self.keys = self.values = self.kv.new_zeros(b, h, 0, d)
        self.stepwise = True

    def can_resume(self, start: int) -> bool:
        """Whether a pass may start at token `start`: from nothing, or within the last pass's tail."""
        return start == 0 or self.tail_start <= start <= self.length

    def nbytes(self) -> int:
        tensors = {id(t): t for t in (self.kv, self.before, self.keys, self.values)}
        return sum(t.numel() * t.element_size() for t in tensors.values())


def block_decays(s: Tensor, rows: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """For a block of `rows` tokens and slopes s [H]: the queries' decay from the state before the
    block [H, rows, 1], the keys' decay to the block's end [H, rows, 1], the within-block decay
    lambda^(i-j) for j <= i, else 0 [H, rows, rows], and the whole block's decay [H, 1, 1]."""
    s = s[:, None, None]
    i = torch.arange(1, rows + 1, device=s.device)
    gap = i[:, None] - i[None, :]
    within = torch.exp(torch.where(gap >= 0, -s * gap, float("-inf")))
    return torch.exp(-s * i[:, None]), torch.exp(-s * (rows - i[:, None])), within, torch.exp(-s * rows)


def absorb_blocks(
    q: Tensor | None, k: Tensor, v: Tensor, kv: Tensor, s: Tensor, block: int
) -> tuple[Tensor | None, Tensor]:
    """Outputs [B, H, T, D] for q, k, v [B, H, T, D] after state `kv` (None without q), and the state
    after them, `block` tokens at a time (fp32 throughout)."""
    outs = []
    full = block_decays(s, block) if k.shape[2] >= block else None
    for lo in range(0, k.shape[2], block):
        kb, vb = k[:, :, lo : lo + block], v[:, :, lo : lo + block]
        rows = kb.shape[2]
        q_decay, k_decay, within, whole = full if full is not None and rows == block else block_decays(s, rows)
        if q is not None:
            qb = q[:, :, lo : lo + block]
            outs.append((qb * q_decay) @ kv + ((qb @ kb.transpose(-1, -2)) * within) @ vb)
        kv = kv * whole + (kb * k_decay).transpose(-1, -2) @ vb
    return (torch.cat(outs, dim=2) if q is not None else None), kv


def absorb_steps(q: Tensor | None, k: Tensor, v: Tensor, kv: Tensor, decay: Tensor) -> tuple[Tensor | None, Tensor]:
    """The recurrence token by token (a decode step's math) with `decay` = exp(-s) [H, 1, 1]:
    outputs [B, H, T, D] (None without q) and the state after the T tokens."""
    outs = []
    for t in range(k.shape[2]):
        kv = decay * kv + k[:, :, t : t + 1].transpose(-1, -2) @ v[:, :, t : t + 1]
        if q is not None:
            outs.append(q[:, :, t : t + 1] @ kv)
    if q is None:
        return None, kv
    return (outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)), kv


class LightningAttention(nn.Module):
    """A lightning layer with Hugging Face's names: `qkv_proj` (per head q, k, v side by side),
    `output_gate`, `norm`, `out_proj`. Takes the softmax layers' arguments and ignores the rotation
    and the mask (a list of masks means a speculative check: rows are absorbed step by step)."""

    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.layer, self.layers = layer, cfg.num_hidden_layers
        self.n_heads, self.head_dim, self.block = cfg.num_attention_heads, cfg.head_dim, cfg.lightning_block
        inner = self.n_heads * self.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, 3 * inner, bias=False)
        self.output_gate = nn.Linear(cfg.hidden_size, inner, bias=False)
        self.norm = nn.RMSNorm(inner, eps=NORM_EPS)
        self.out_proj = nn.Linear(inner, cfg.hidden_size, bias=False)
        self._slopes: tuple[Tensor, Tensor] | None = None

    def slopes(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """This layer's slopes s [H] and per-token decay exp(-s) [H, 1, 1] on `device` (made once)."""
        if self._slopes is None or self._slopes[0].device != device:
            s = slopes(self.n_heads, self.layer, self.layers).to(device)
            self._slopes = s, torch.exp(-s)[:, None, None]
        return self._slopes

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, start: int, mask: Mask, cache: KVCache | None) -> Tensor:
        b, t, _ = x.shape
        qkv = F.silu(self.qkv_proj(x)).view(b, t, self.n_heads, 3, self.head_dim).float()
        q, k, v = (qkv[:, :, :, i].transpose(1, 2) for i in range(3))  # [B, H, T, D]
        s, decay = self.slopes(x.device)
        state = None if cache is None else cache.states[self.layer]
        if state is None:  # no cache: the whole sequence from nothing
            out, _ = absorb_blocks(q, k, v, q.new_zeros(b, self.n_heads, self.head_dim, self.head_dim), s, self.block)
            assert out is not None
        else:
            out = self._pass(state, q, k, v, start, stepwise=t == 1 or isinstance(mask, list))
        y = self.norm(out.transpose(1, 2).reshape(b, t, -1).to(x.dtype))
        return self.out_proj(torch.sigmoid(self.output_gate(x)) * y)

    def _pass(self, state: LightningState, q: Tensor, k: Tensor, v: Tensor, start: int, stepwise: bool) -> Tensor:
        """Outputs for tokens at start.. with `state` brought to `start` first and left after them,
        keeping the last REWIND_ROWS rows as its tail."""
        self.resume(state, start)
        s, decay = self.slopes(q.device)
        t = q.shape[2]
        head = max(0, t - REWIND_ROWS)
        outs, kv = [], state.kv
        for lo, hi in ((0, head), (head, t)):
            if hi == lo:
                continue
            if hi == t:
                state.before, state.tail_start = kv, start + lo
            if stepwise:
                out, kv = absorb_steps(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], kv, decay)
            else:
                out, kv = absorb_blocks(q[:, :, lo:hi], k[:, :, lo:hi], v[:, :, lo:hi], kv, s, self.block)
            assert out is not None
            outs.append(out)
        state.kv, state.length, state.stepwise = kv, start + t, stepwise
        state.keys, state.values = k[:, :, head:], v[:, :, head:]
        if head:  # a copy: views would keep the whole pass's projections alive
            state.keys, state.values = state.keys.clone(), state.values.clone()
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def resume(self, state: LightningState, start: int) -> None:
        """Bring `state` to hold exactly `start` tokens (from nothing, or back within its tail)."""
        if start == state.length:
            return
        if start == 0:
            state.reset()
            return
        if not state.can_resume(start):
            raise ValueError(
                f"lightning layer {self.layer} holds {state.length} tokens and can go back only to token "
                f"{state.tail_start}; it cannot continue from token {start}"
            )
        n = start - state.tail_start
        keys, values = state.keys[:, :, :n], state.values[:, :, :n]
        s, decay = self.slopes(state.kv.device)
        if state.stepwise:
            _, state.kv = absorb_steps(None, keys, values, state.before, decay)
        else:
            _, state.kv = absorb_blocks(None, keys, values, state.before, s, self.block)
        state.keys, state.values, state.length = keys, values, start
