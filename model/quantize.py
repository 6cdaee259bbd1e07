"""Weight-only quantization: int8 per output channel and int4 in groups, on torch's own kernels.

Batch-1 decoding on a CPU is bound by how many weight bytes each token reads, so fewer
bytes per weight is the speed. Activations stay bf16; only Linear weights inside the
layers and the LM head are quantized (embeddings, norms, biases and MoE routers are not).

Storage (what `demi models quantize` writes) is portable and kernel-independent:
  int8: `<name>.weight` int8 [N, K] and `<name>.weight_scale` fp32 [N]; w = q * scale.
  int4: `<name>.weight` uint8 [N, K/2] (two 4-bit values per byte, low nibble first),
        `<name>.weight_scale` and `<name>.weight_zero` bf16 [N, K/group];
        w = (q - 8) * scale + zero.
Kernel layouts (the CPU int4 packing, bitsandbytes' formats on CUDA) are made on load.
"""

from __future__ import annotations

import ctypes
import logging
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from demi.model import kernel_plan, native_kernels
from demi.model.errors import CheckpointError, DemiUserError
from demi.model.kernel_plan import KernelPlan

log = logging.getLogger("demi.model")

QUANT_MODES = ("none", "int8", "int4", "nf4", "auto")
FORMAT_VERSION = 1
DEFAULT_GROUP = 64
# Up to this many rows of activations (decode, a short verify block) the native kernels read each
# weight once for all rows; more rows (prefill) go to the plan's prefill kernel.
_PREFILL_ROWS = 8
# Public: speculative decoding verifies at most this many tokens in one pass on a quantized CPU
# model, so every row runs the decode kernel (row by row the same rounding as one decode step).
DECODE_ROWS = _PREFILL_ROWS
# Prefill multiplies by a float copy of each weight (fp32 where bf16 is emulated, bf16 where it is
# not). Small models keep the converted copy instead of redoing it for every prompt chunk; this caps
# those copies per process, so a large model keeps its int8 memory saving (only its first layers
# get copies).
PREFILL_COPY_BUDGET = 96 * 2**20
_prefill_copy_bytes = 0
# Bumped whenever an Int8Linear changes the tensor holding its weight (packed <-> rows, a new plan):
# the one-call decode stack holds raw pointers and stands down once its epoch is not this one.
_layout_epoch = 0


def layout_epoch() -> int:
    return _layout_epoch


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric per-output-channel int8: (q int8 [N, K], scale fp32 [N])."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-8)
    q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q, scale


def quantize_int4(w: Tensor, group: int) -> tuple[Tensor, Tensor, Tensor]:
    """Asymmetric group-wise int4 along K: (q uint8 [N, K] in 0..15, scale, zero [N, K/group])."""
    n, k = w.shape
    wg = w.float().reshape(n, k // group, group)
    lo, hi = wg.amin(-1), wg.amax(-1)
    scale = ((hi - lo) / 15.0).clamp(min=1e-8)
    q = torch.round((wg - lo[..., None]) / scale[..., None]).clamp(0, 15).to(torch.uint8)
    zero = lo + 8.0 * scale
    return q.reshape(n, k), scale.to(torch.bfloat16), zero.to(torch.bfloat16)


def pack_nibbles(q: Tensor) -> Tensor:
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_nibbles(packed: Tensor) -> Tensor:
    out = torch.empty(packed.shape[0], packed.shape[1] * 2, dtype=torch.uint8, device=packed.device)
    out[:, 0::2] = packed & 0xF
    out[:, 1::2] = packed >> 4
    return out


def dequantize_int4(q: Tensor, scale: Tensor, zero: Tensor) -> Tensor:
    n, k = q.shape
    groups = scale.shape[1]
    wg = q.reshape(n, groups, k // groups).float() - 8.0
    return (wg * scale.float()[..., None] + zero.float()[..., None]).reshape(n, k)


def _release_prefill_copy(nbytes: int) -> None:
    global _prefill_copy_bytes
    _prefill_copy_bytes -= nbytes


def _claim_copy(owner: nn.Module, nbytes: int) -> bool:
    """Whether `owner` may keep a converted weight of `nbytes` (released when the module goes)."""
    global _prefill_copy_bytes
    if _prefill_copy_bytes + nbytes > PREFILL_COPY_BUDGET:
        return False
    _prefill_copy_bytes += nbytes
    weakref.finalize(owner, _release_prefill_copy, nbytes)  # a reloaded model gets it back
    return True


def _int8_plan(plan: KernelPlan | None) -> KernelPlan | None:
    """`plan` for an int8 layer: an int4 plan's int8 fallbacks (shapes no group fits) and a RescoredHead's
    exact rows take the int8 guess instead."""
    return plan if plan is None or plan.mode == "int8" else None


def _native_lib(path: str, k: int) -> ctypes.CDLL | None:
    """The native library for plan entry `path` if it names one and takes K, else None."""
    if path in kernel_plan.TORCH_PREFILLS or path == "torch" or k % native_kernels.QBLOCK:
        return None
    return native_kernels.library(path)


class Int8Linear(nn.Module):
    """y = x @ (q * scale).T + b with the kernels a KernelPlan chose for this CPU: a native or
    torch GEMV for decode-sized inputs, an fp32/bf16 matmul (scaling the outputs) or a native
    kernel for prefill.

    Where a native kernel runs, the weight is held packed (`packed`, packed.c's layout: 16 output
    rows interleaved, so several activation rows share each weight load and a batch or a speculative
    check costs little more than one row), else row-major (`weight`); `rows()` gives the row-major
    int8 either way. `packable=False` keeps rows (RescoredHead's exact rows, read one by one)."""

    weight: Tensor | None  # buffers (register_buffer): weight (rows) or packed, and the scale
    packed: Tensor | None
    weight_scale: Tensor

    def __init__(
        self,
        q: Tensor,
        scale: Tensor,
        bias: Tensor | None = None,
        plan: KernelPlan | None = None,
        packable: bool = True,
    ):
        super().__init__()
        self.in_features, self.out_features = q.shape[1], q.shape[0]
        self.packable = packable
        self.register_buffer("weight", q.contiguous())
        self.register_buffer("packed", None)
        self.register_buffer("weight_scale", scale.float().contiguous())
        self._scale_bf16 = scale.to(torch.bfloat16)
        self.bias = None if bias is None else nn.Parameter(bias.to(torch.bfloat16), requires_grad=False)
        self._bias_f32 = None if bias is None else bias.float().contiguous()
        self._w_copy: Tensor | None = None
        self.use_plan(plan or kernel_plan.guess("int8"))

    def use_plan(self, plan: KernelPlan) -> None:
        """Take the decode and prefill kernels from `plan` (torch's where a native one cannot run),
        and hold the weight in the layout they read."""
        cpu = self.weight_scale.device.type == "cpu"
        self.decode_lib = _native_lib(plan.decode, self.in_features) if cpu else None
        self.one_row = plan.rows_at_once == 1  # how the native kernels read the weight (speed only)
        self.prefill_lib = _native_lib(plan.prefill, self.in_features) if cpu else None
        self.prefill_dtype = torch.bfloat16 if plan.prefill == "bf16" or not cpu else torch.float32
        # torch's int8 GEMM, its glue from any native library this CPU loaded (torch's ops without one)
        self.int_mm = cpu and plan.prefill == "int8mm"
        self.glue_lib = (self.decode_lib or kernel_plan.any_native_library()) if self.int_mm else None
        self.float_prefill_rows = plan.float_prefill_rows if self.decode_lib is not None else 0
        if self._w_copy is not None and self._w_copy.dtype != self.prefill_dtype:
            self._w_copy = None
        self._copy_tried = False
        self._relayout(self.packable and self.decode_lib is not None)

    def _relayout(self, pack: bool) -> None:
        """Hold the weight packed or in rows (one copy at a time)."""
        global _layout_epoch
        if pack and self.packed is None and self.weight is not None:
            self.packed = native_kernels.pack_q8(self._packing_lib(), self.weight)
            self.weight = None
            _layout_epoch += 1
        elif not pack and self.packed is not None:
            self.weight = self.rows()
            self.packed = None
            _layout_epoch += 1

    def rows(self) -> Tensor:
        """The int8 weight [N, K], row-major (unpacked when held packed: a new tensor)."""
        if self.packed is None:
            assert self.weight is not None
            return self.weight
        return native_kernels.unpack_q8(self._packing_lib(), self.packed, self.weight_scale, *self._shape(), torch.int8)

    def _packing_lib(self) -> ctypes.CDLL:
        """A native library to pack or unpack with (the bytes are the same on every path)."""
        lib = self.decode_lib or kernel_plan.any_native_library()
        assert lib is not None, "a packed weight implies a native library that loaded"
        return lib

    def _shape(self) -> tuple[int, int]:
        return self.out_features, self.in_features

    @property
    def native(self) -> bool:
        return self.decode_lib is not None

    def _prefill_weight(self) -> Tensor:
        """The weight in the prefill dtype, kept while PREFILL_COPY_BUDGET allows. In fp32 it is the
        dequantized weight (int8 times fp32 scale is one op, no slower than the plain conversion, and
        spares a multiply over every output); in bf16 it holds the exact int8 values and the outputs
        are scaled."""
        if self._w_copy is not None:
            return self._w_copy
        if self.packed is not None:  # one native pass from the packed bytes
            w = native_kernels.unpack_q8(
                self._packing_lib(), self.packed, self.weight_scale, *self._shape(), self.prefill_dtype
            )
        elif self.prefill_dtype == torch.float32:
            w = self.rows() * self.weight_scale[:, None]
        else:
            w = self.rows().to(self.prefill_dtype)
        if not self._copy_tried and self.weight_scale.device.type == "cpu":
            self._copy_tried = True
            if _claim_copy(self, w.numel() * w.element_size()):
                self._w_copy = w
        return w

    def forward(self, x: Tensor) -> Tensor:
        rows = x.numel() // self.in_features
        lib = self.decode_lib if rows <= _PREFILL_ROWS else self.prefill_lib
        if lib is None and rows < self.float_prefill_rows:
            # too few rows to pay for converting the weight; decided by the rows alone (not by whether
            # a kept copy exists yet), so the same prompt always takes the same kernel: same answers
            lib = self.decode_lib
        if lib is not None:
            if self.packed is not None:
                return native_kernels.linear_q8p(
                    lib, x, self.packed, self.weight_scale, self._bias_f32, self.out_features
                )
            return native_kernels.linear_q8(lib, x, self.rows(), self.weight_scale, self._bias_f32, self.one_row)
        if self.int_mm and rows > _PREFILL_ROWS:
            return native_kernels.linear_int_mm(self.glue_lib, x, self.rows(), self.weight_scale, self._bias_f32)
        shape, dtype = x.shape, x.dtype
        x2 = x.reshape(-1, self.in_features)
        if rows > _PREFILL_ROWS or x2.device.type != "cpu":
            w = self._prefill_weight()
            y = F.linear(x2.to(w.dtype), w)
            if w.dtype != torch.float32:
                y = y * self._scale_bf16  # scale the outputs, not K*N weights
        else:
            y = torch.ops.aten._weight_int8pack_mm(x2.to(torch.bfloat16), self.rows(), self._scale_bf16)
        if self.bias is not None and self._bias_f32 is not None:  # (both or neither)
            y = y + (self._bias_f32 if y.dtype == torch.float32 else self.bias)
        return y.reshape(*shape[:-1], self.out_features).to(dtype)


class Int4Linear(nn.Module):
    """Group-wise int4: torch's int4 kernels (`_weight_int4pack_mm_for_cpu`, CUDA's tinygemm), or
    the native int4 kernel with an fp32 or native prefill, as the KernelPlan chose."""

    # buffers (register_buffer): packed, scale and zero for the native kernels; packed and
    # scales_and_zeros for torch's
    packed: Tensor
    scale: Tensor
    zero: Tensor
    scales_and_zeros: Tensor

    def __init__(
        self, q: Tensor, scale: Tensor, zero: Tensor, bias: Tensor | None = None, plan: KernelPlan | None = None
    ):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.group = self.in_features // scale.shape[1]
        device = q.device
        plan = plan or kernel_plan.guess("int4")
        self.decode_lib = _native_lib(plan.decode, self.in_features) if device.type == "cpu" else None
        self.one_row = plan.rows_at_once == 1  # how the native kernels read the weight (speed only)
        self.bias = None if bias is None else nn.Parameter(bias.to(torch.bfloat16), requires_grad=False)
        self._bias_f32 = None if bias is None else bias.float().contiguous()
        self.padded = 0
        self.float_prefill_rows = plan.float_prefill_rows
        if self.decode_lib is not None and self.group % native_kernels.QBLOCK == 0:
            self.prefill_lib = _native_lib(plan.prefill, self.in_features)
            self.prefill_dtype = torch.bfloat16 if plan.prefill == "bf16" else torch.float32
            self.int_mm = plan.prefill == "int8mm"
            self._int8: tuple[Tensor, Tensor] | None = None
            self._int8_tried = False
            self.register_buffer("packed", native_kernels.pack_q4(q))
            self.register_buffer("scale", native_kernels.half(scale))  # (as the kernels read it)
            self.register_buffer("zero", native_kernels.int4_offset(scale, zero))  # W = q * scale + this
            return
        self.decode_lib = self.prefill_lib = None
        pad = -self.out_features % 16  # the kernels take N in multiples of 16: pad with zero rows
        if pad:
            log.info("int4: padding %d output rows to %d for the kernel", self.out_features, self.out_features + pad)
            q = F.pad(q, (0, 0, 0, pad), value=8)
            scale, zero = F.pad(scale, (0, 0, 0, pad)), F.pad(zero, (0, 0, 0, pad))
        self.padded = pad
        if device.type == "cpu":
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 2)
        else:  # the CUDA kernel's input packs the even column into the high nibble
            packed = torch.ops.aten._convert_weight_to_int4pack(((q[:, 0::2] << 4) | q[:, 1::2]).contiguous(), 8)
        self.register_buffer("packed", packed)
        self.register_buffer(
            "scales_and_zeros", torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
        )  # [K/group, N, 2]

    @property
    def native(self) -> bool:
        return self.decode_lib is not None

    def _int8_weight(self) -> tuple[Tensor, Tensor]:
        """The int4 weight requantized to int8 per output row, for torch's int8 GEMM (int4's steps are
        a coarse grid, so rounding them to 255 levels per row adds little), kept while
        PREFILL_COPY_BUDGET allows, else redone per call."""
        if self._int8 is not None:
            return self._int8
        q8 = quantize_int8(
            native_kernels.dequantize_q4(self.packed, self.scale, self.zero, self.group, self.decode_lib)
        )
        if not self._int8_tried:
            self._int8_tried = True
            if _claim_copy(self, q8[0].numel() + 4 * q8[1].numel()):
                self._int8 = q8
        return q8

    def forward(self, x: Tensor) -> Tensor:
        shape, dtype = x.shape, x.dtype
        rows = x.numel() // self.in_features
        if self.decode_lib is not None:
            lib = self.decode_lib if rows <= _PREFILL_ROWS else self.prefill_lib
            if lib is None and rows < self.float_prefill_rows:
                lib = self.decode_lib  # too few rows to pay for dequantizing the weight
            if lib is not None:
                return native_kernels.linear_q4(
                    lib, x, self.packed, self.scale, self.zero, self.group, self._bias_f32, self.one_row
                )
            if self.int_mm:
                q8, s8 = self._int8_weight()
                return native_kernels.linear_int_mm(self.decode_lib, x, q8, s8, self._bias_f32)
            # the weight in the prefill's dtype, in C; bf16 (where the CPU has bf16 units) for this matmul alone
            w = native_kernels.dequantize_q4(
                self.packed, self.scale, self.zero, self.group, self.decode_lib, self.prefill_dtype
            )
            x2 = x.reshape(-1, self.in_features)
            if w.dtype == torch.bfloat16:
                y = F.linear(x2.to(torch.bfloat16), w).float()
                y = y if self._bias_f32 is None else y + self._bias_f32
            else:
                y = F.linear(x2.float(), w, self._bias_f32)
            return y.reshape(*shape[:-1], self.out_features).to(dtype)
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16)
        if x2.device.type == "cpu":
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.packed, self.group, self.scales_and_zeros)
        else:
            y = torch.ops.aten._weight_int4pack_mm(x2, self.packed, self.group, self.scales_and_zeros)
        if self.padded:
            y = y[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*shape[:-1], self.out_features).to(dtype)


class PackedInt4Linear(nn.Module):
    """Group-wise int4 on the packed layout (packed.c): what RescoredHead's shadow runs, one row or a
    batch's (each row the same bits as alone, a weight load serving up to four rows). Decode-sized
    inputs only: a prompt's logits come from the exact int8 head."""

    packed: Tensor  # buffers: the nibbles, then the scales and offsets in half
    packed_scale: Tensor
    packed_offset: Tensor

    def __init__(self, q: Tensor, scale: Tensor, zero: Tensor, lib: ctypes.CDLL):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.group = self.in_features // scale.shape[1]
        self.lib = lib
        packed, ps, po = native_kernels.pack_q4p(lib, q, scale, native_kernels.int4_offset(scale, zero), self.group)
        self.register_buffer("packed", packed)
        self.register_buffer("packed_scale", ps)
        self.register_buffer("packed_offset", po)

    def forward(self, x: Tensor) -> Tensor:
        weights = (self.packed, self.packed_scale, self.packed_offset)
        return native_kernels.linear_q4p(self.lib, x, weights, self.group, None, self.out_features)


class RescoredHead(nn.Module):
    """int8 LM head that decodes through an int4 shadow: the int4 logits pick `candidates`
    tokens, which are rescored exactly from the int8 rows.

    The head is a fifth of a small code model's weights and the int8 GEMV is compute-bound
    on CPUs, so this cuts decode time by ~15% while greedy and top-k results stay the int8
    model's own (a true top token outside the int4 top-64 would need an int4 error larger
    than the gap to the 64th logit). Prefill and scoring (more than one row) use int8 only.
    """

    def __init__(self, q: Tensor, scale: Tensor, candidates: int = 64, plan: KernelPlan | None = None):
        super().__init__()
        self.exact = Int8Linear(q, scale, plan=plan, packable=False)  # rows read one by one: kept in rows
        w = q.float() * scale.float()[:, None]
        group = next(g for g in (64, 128, 32) if w.shape[1] % g == 0)
        q4, s4, z4 = quantize_int4(w, group)
        lib = self.exact.decode_lib
        # the packed int4 kernel where the int8 head has a native one (a batch's rows at little more than
        # one row's cost), else the int4 layer's own kernels
        self.shadow: nn.Module = (
            PackedInt4Linear(q4, s4, z4, lib)
            if lib is not None
            else Int4Linear(q4, s4, z4, plan=kernel_plan.guess("int4"))
        )
        self.candidates = min(candidates, q.shape[0])
        self.in_features, self.out_features = q.shape[1], q.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features)
        if x2.shape[0] > 1:
            return self.exact(x)
        return self.rescored(x2, self.shadow(x2)).reshape(*shape[:-1], self.out_features)

    def rescored(self, x: Tensor, shadow: Tensor) -> Tensor:
        """fp32 logits [R, V] for rows x [R, K], each row as its own one-row step gives it: its shadow
        logits with its top `candidates` rescored exactly (fp32, so the rescored winners keep their
        order). Native where the int8 kernels are (one call for every row, the rows side by side on
        the threads), else torch's ops row by row."""
        lib = self.exact.decode_lib
        if lib is not None and shadow.dtype == torch.float32 and shadow.is_contiguous():
            rows = x.float().contiguous()
            w, scale = self.exact.rows(), self.exact.weight_scale
            lib.demi_rescore_rows(
                rows.data_ptr(), rows.shape[0], w.data_ptr(), scale.data_ptr(), self.in_features, shadow.data_ptr(),
                self.out_features, self.candidates,
            )  # fmt: skip
            return shadow
        return torch.cat([self._rescored_row(x[i : i + 1], shadow[i : i + 1]) for i in range(x.shape[0])])

    def _rescored_row(self, x: Tensor, shadow: Tensor) -> Tensor:
        top = shadow.topk(self.candidates, dim=-1).indices[0]
        rows = self.exact.rows().index_select(0, top).float()  # fp32: no rounding of the winners
        exact = (x.float() @ rows.T) * self.exact.weight_scale.index_select(0, top)
        return shadow.float().index_copy_(1, top, exact)


def quantizable(name: str) -> bool:
    """Linear layers whose weights are quantized: projections, experts, the LM head (not routers)."""
    leaf = name.rsplit(".", 1)[-1]
    return name == "lm_head" or leaf.endswith("_proj") or (".experts." in name and leaf in ("w1", "w2", "w3"))


def check_mode(mode: str, device: torch.device) -> str:
    if mode not in QUANT_MODES:
        raise DemiUserError(f"unknown quantization {mode!r}; choose one of {', '.join(QUANT_MODES)}")
    if mode == "nf4" and device.type != "cuda":
        raise DemiUserError("nf4 needs CUDA (bitsandbytes); on CPU use --quant int4 (group-wise, torch's own kernel)")
    return mode


def _bnb_linear(linear: nn.Linear, mode: str) -> nn.Module:
    """bitsandbytes LLM.int8 or nf4 on CUDA (the design's choice there)."""
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise DemiUserError(f"--quant {mode} on CUDA needs bitsandbytes: pip install bitsandbytes") from exc
    bias = linear.bias is not None
    if mode == "int8":
        new = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, bias=bias, has_fp16_weights=False, threshold=6.0
        )
        new.weight = bnb.nn.Int8Params(linear.weight.data.to("cpu", torch.float16), requires_grad=False)
    else:
        new = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, bias=bias, compute_dtype=torch.bfloat16, quant_type="nf4"
        )
        new.weight = bnb.nn.Params4bit(
            linear.weight.data.to("cpu", torch.float16), requires_grad=False, quant_type="nf4"
        )
    if bias:
        new.bias = nn.Parameter(linear.bias.data.to(torch.float16), requires_grad=False)
    return new.to(linear.weight.device)


def quantize_linear(
    linear: nn.Linear, mode: str, group: int = DEFAULT_GROUP, name: str = "", plan: KernelPlan | None = None
) -> nn.Module:
    """The quantized replacement of one Linear (or the Linear itself where no kernel fits)."""
    w = linear.weight.data
    bias = None if linear.bias is None else linear.bias.data
    if w.device.type == "cuda" and mode in ("int8", "nf4"):
        return _bnb_linear(linear, mode)
    if mode == "int4":
        g = next((g for g in (group, 128, 64, 32) if w.shape[1] % g == 0), None)
        if g is None:
            log.info("%s: in_features %d is not a multiple of 32; kept in int8", name, w.shape[1])
            mode = "int8"
        else:
            if g != group:
                log.info("%s: in_features %d not divisible by group %d; using group %d", name, w.shape[1], group, g)
            return Int4Linear(*quantize_int4(w, g), bias=bias, plan=plan)
    q, scale = quantize_int8(w)
    return Int8Linear(q, scale, bias=bias, plan=_int8_plan(plan))


# --- portable quantized checkpoints ---------------------------------------------------------


def quantized_tensors(name: str, w: Tensor, mode: str, group: int) -> dict[str, Tensor]:
    """The stored tensors for weight `name` (ending in .weight) under `mode`."""
    base = name[: -len(".weight")]
    if mode == "int4":
        g = next((g for g in (group, 128, 64, 32) if w.shape[1] % g == 0), None)
        if g is not None:
            q, scale, zero = quantize_int4(w, g)
            return {f"{base}.weight": pack_nibbles(q), f"{base}.weight_scale": scale, f"{base}.weight_zero": zero}
    q, scale = quantize_int8(w)
    return {f"{base}.weight": q, f"{base}.weight_scale": scale}


def quantization_config(mode: str, group: int) -> dict:
    return {"quant_method": "demi", "format_version": FORMAT_VERSION, "mode": mode, "group_size": group}


def check_quantization_config(qc: dict) -> str:
    """The mode of a Demi-quantized checkpoint; a CheckpointError for other versions."""
    version = qc.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"quantized checkpoint format version {version!r} is not the one this Demi "
            f"reads ({FORMAT_VERSION}); quantize the original model again"
        )
    mode = qc.get("mode")
    if mode not in ("int8", "int4"):
        raise CheckpointError(f"quantized checkpoint has unknown mode {mode!r}")
    return mode


def module_from_stored(
    stored: dict[str, Tensor],
    bias: Tensor | None,
    device: torch.device,
    head: bool = False,
    plan: KernelPlan | None = None,
) -> nn.Module:
    """Build the module for the stored tensors of one weight (keys: weight, weight_scale[, weight_zero])."""
    q, scale = stored["weight"].to(device), stored["weight_scale"].to(device)
    if head and "weight_zero" not in stored and device.type == "cpu" and bias is None and q.shape[0] >= 4096:
        return RescoredHead(q, scale, plan=_int8_plan(plan))
    if "weight_zero" in stored:
        return Int4Linear(unpack_nibbles(q), scale, stored["weight_zero"].to(device), bias, plan=plan)
    if device.type == "cuda":  # bitsandbytes wants the float weight; dequantize once at load
        linear = nn.Linear(q.shape[1], q.shape[0], bias=bias is not None, device=device, dtype=torch.float16)
        linear.weight.data = (q.float() * scale.float()[:, None]).to(device, torch.float16)
        if bias is not None:
            linear.bias.data = bias.to(device, torch.float16)
        return _bnb_linear(linear, "int8")
    return Int8Linear(q, scale, bias, plan=_int8_plan(plan))
