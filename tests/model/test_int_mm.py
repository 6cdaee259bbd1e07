"""int8mm, the prefill through torch's int8 GEMM: each activation row as two int8 terms (about 15
bits), the K sums in int32, scaled once per output; native glue and torch's glue both match the
exact product, and Int8Linear / Int4Linear route prefill-sized inputs to it (decode-sized ones keep
the decode kernel) when the plan says so."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from demi.model import kernel_plan, native_kernels
from demi.model.kernel_plan import KernelPlan
from demi.model.quantize import DECODE_ROWS, Int4Linear, Int8Linear, quantize_int4, quantize_int8

pytestmark = pytest.mark.skipif(not kernel_plan.int_mm_runs(), reason="this torch has no CPU int8 GEMM")


def native_paths() -> list[str]:
    return [p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None]


def reference(x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The exact product in float64 (int8mm rounds the activations to ~15 bits: within 1e-4 of it)."""
    y = x.double() @ (q.double() * scale.double()[:, None]).T
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("glue", ["native", "torch"])
@pytest.mark.parametrize("rows, k, n", [(40, 64, 48), (9, 96, 33), (129, 128, 16)])
def test_int8mm_is_the_row_rounded_product(glue, rows, k, n):
    lib = next(iter(native_paths()), None) if glue == "native" else None
    if glue == "native" and lib is None:
        pytest.skip("no native kernel library on this machine")
    torch.manual_seed(rows)
    x = torch.randn(rows, k) * torch.linspace(0.1, 3, k)
    x[3] = 0.0  # a zero row has a zero scale and gives the bias
    q, scale = quantize_int8(torch.randn(n, k))
    bias = torch.randn(n)
    got = native_kernels.linear_int_mm(native_kernels.library(lib) if lib else None, x, q, scale, bias)
    assert got.dtype == torch.float32 and got.shape == (rows, n)
    want = reference(x, q, scale, bias)
    assert ((got.double() - want).norm(dim=-1) / want.norm(dim=-1)).max() < 2e-4
    assert torch.equal(got[3], bias)
    wide = native_kernels.linear_int_mm(None, x.view(1, rows, k).bfloat16(), q, scale, None)
    assert wide.dtype == torch.bfloat16 and wide.shape == (1, rows, n)


def test_native_and_torch_glue_agree():
    paths = native_paths()
    if not paths:
        pytest.skip("no native kernel library on this machine")
    x = torch.randn(300, 256) * 4
    q, scale = quantize_int8(torch.randn(96, 256))
    a = native_kernels.linear_int_mm(native_kernels.library(paths[0]), x, q, scale, None)
    b = native_kernels.linear_int_mm(None, x, q, scale, None)
    # the same two-term rounding, but for a second term the compiler's fused multiply-add rounds once
    # differently: at most a step of the second term apart
    assert ((a - b).norm(dim=-1) / a.norm(dim=-1)).max() < 1e-4


def test_int8_linear_prefills_through_int8mm_and_decodes_through_its_decode_kernel():
    paths = native_paths()
    torch.manual_seed(0)
    w, bias = torch.randn(64, 128), torch.randn(64)
    q, scale = quantize_int8(w)
    plan = KernelPlan("int8", "float32", paths[0] if paths else "torch", "int8mm")
    layer = Int8Linear(q, scale, bias, plan)
    x = torch.randn(1, 50, 128)
    with torch.inference_mode():
        y = layer(x)
        step = layer(x[:, :DECODE_ROWS])
    lib = native_kernels.library(paths[0]) if paths else None
    assert torch.equal(y, native_kernels.linear_int_mm(lib, x, q, scale, layer._bias_f32))
    rel = (y - F.linear(x, q * scale[:, None], bias)).norm() / y.norm()
    assert rel < 1e-3  # the weights' own rounding is all that is left
    if paths:  # decode-sized inputs keep the per-32-block decode kernel, on the packed weight
        assert layer.packed is not None and torch.equal(layer.rows(), q)
        want = native_kernels.linear_q8p(lib, x[:, :DECODE_ROWS], layer.packed, scale, layer._bias_f32, 64)
        assert torch.equal(step, want)


def test_int4_linear_prefills_through_an_int8_copy_of_its_weight():
    paths = native_paths()
    if not paths:
        pytest.skip("int4's int8mm prefill comes with the native int4 layout")
    torch.manual_seed(1)
    w = torch.randn(48, 128)
    q4, s4, z4 = quantize_int4(w, 64)
    plan = KernelPlan("int4", "float32", paths[0], "int8mm")
    layer = Int4Linear(q4, s4, z4, None, plan)
    x = torch.randn(1, 40, 128)
    with torch.inference_mode():
        y = layer(x)
    dequantized = native_kernels.dequantize_q4(layer.packed, layer.scale, layer.zero, layer.group)
    q8, s8 = quantize_int8(dequantized)
    assert layer._int8 is not None and torch.equal(layer._int8[0], q8)  # kept (small enough for the budget)
    lib = native_kernels.library(paths[0])
    assert torch.equal(y, native_kernels.linear_int_mm(lib, x, q8, s8, None))
    assert (y - F.linear(x, dequantized)).norm() / y.norm() < 0.01  # int8 of an int4 grid
