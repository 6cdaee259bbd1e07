"""The packed int8 layout (packed.c): the bytes round-trip, every runnable path computes the
matmul, and a row gives the same bits whichever rows share its call (what batches and speculative
checks rely on); Int8Linear holds one copy in the layout its kernels read."""

from __future__ import annotations

import pytest
import torch

from demi.model import native_kernels
from demi.model.kernel_plan import KernelPlan
from demi.model.quantize import Int8Linear, RescoredHead, layout_epoch, quantize_int8

PATHS = [p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None]
pytestmark = pytest.mark.skipif(not PATHS, reason="no native kernel path runs on this CPU")


def _weights(n: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return quantize_int8(torch.randn(n, k))


@pytest.mark.parametrize("n", [16, 37, 130])
def test_packed_bytes_round_trip_in_every_dtype(n):
    q, scale = _weights(n, 96)
    lib = native_kernels.library(PATHS[0])
    packed = native_kernels.pack_q8(lib, q)
    assert packed.numel() == -(-n // 16) * 16 * 96  # output rows padded to 16
    assert torch.equal(native_kernels.unpack_q8(lib, packed, scale, n, 96, torch.int8), q)
    assert torch.equal(native_kernels.unpack_q8(lib, packed, scale, n, 96, torch.bfloat16), q.to(torch.bfloat16))
    assert torch.equal(native_kernels.unpack_q8(lib, packed, scale, n, 96, torch.float32), q * scale[:, None])


@pytest.mark.parametrize("path", PATHS)
def test_every_path_multiplies_and_each_row_is_its_lone_call(path):
    n, k = 83, 192  # 6 groups of 16 (a band of 4 and a partial one), K of 6 blocks
    q, scale = _weights(n, k, seed=1)
    bias = torch.randn(n)
    lib = native_kernels.library(path)
    packed = native_kernels.pack_q8(lib, q)
    x = torch.randn(11, k)  # 11 rows: tiles of 4, 4 and 3
    y = native_kernels.linear_q8p(lib, x, packed, scale, bias, n)
    ref = x.double() @ (q.double() * scale.double()[:, None]).T + bias.double()
    assert ((y.double() - ref).norm(dim=-1) / ref.norm(dim=-1)).max() < 1e-2  # activations' int8 rounding
    for rows in (1, 2, 3, 5, 8):
        part = native_kernels.linear_q8p(lib, x[:rows], packed, scale, bias, n)
        assert torch.equal(part, y[:rows])
    for r in range(11):
        assert torch.equal(native_kernels.linear_q8p(lib, x[r : r + 1], packed, scale, bias, n), y[r : r + 1])
    # bf16 in and out: the sums of the same (bf16) inputs read as fp32, rounded once at the end
    xb = x.to(torch.bfloat16)
    yb = native_kernels.linear_q8p(lib, xb, packed, scale, bias, n)
    assert yb.dtype == torch.bfloat16
    assert torch.equal(yb, native_kernels.linear_q8p(lib, xb.float(), packed, scale, bias, n).to(torch.bfloat16))


def test_int8_linear_holds_one_layout_and_switches_with_its_plan():
    q, scale = _weights(48, 64, seed=2)
    x = torch.randn(3, 64)
    native = Int8Linear(q, scale, plan=KernelPlan("int8", "float32", PATHS[0], "fp32"))
    assert native.packed is not None and native.weight is None and torch.equal(native.rows(), q)
    before, epoch = native(x), layout_epoch()
    native.use_plan(KernelPlan("int8", "float32", "torch", "fp32"))  # torch's kernels read rows
    assert native.packed is None and torch.equal(native.weight, q) and layout_epoch() > epoch
    assert ((native(x) - before).norm() / before.norm()) < 1e-2
    native.use_plan(KernelPlan("int8", "float32", PATHS[0], "fp32"))
    assert native.packed is not None and torch.equal(native(x), before)


def test_the_rescored_heads_exact_rows_stay_row_major():
    q, scale = _weights(256, 64, seed=3)
    head = RescoredHead(q, scale, candidates=16, plan=KernelPlan("int8", "float32", PATHS[0], "fp32"))
    assert head.exact.packed is None and torch.equal(head.exact.weight, q)


@pytest.mark.parametrize("path", PATHS)
def test_packed_int4_matches_the_int4_layer_and_each_row_is_its_lone_call(path):
    from demi.model.quantize import Int4Linear, PackedInt4Linear, quantize_int4

    torch.manual_seed(4)
    n, k = 83, 256
    q4, s4, z4 = quantize_int4(torch.randn(n, k), 64)
    lib = native_kernels.library(path)
    packed = PackedInt4Linear(q4, s4, z4, lib)
    layer = Int4Linear(q4, s4, z4, plan=KernelPlan("int4", "float32", path, "fp32"))
    x = torch.randn(11, k)
    y = packed(x)
    ref = layer(x[:8])  # decode-sized: the row-major int4 kernel, the same sums in another order
    assert ((y[:8] - ref).norm(dim=-1) / ref.norm(dim=-1)).max() < 1e-5
    for r in range(11):
        assert torch.equal(packed(x[r : r + 1]), y[r : r + 1])
    assert torch.equal(packed(x[:5]), y[:5])


def test_the_rescored_heads_shadow_is_packed_and_a_batch_row_is_its_lone_row():
    from demi.model.batch import head_rows
    from demi.model.quantize import PackedInt4Linear

    q, scale = _weights(512, 128, seed=5)
    head = RescoredHead(q, scale, candidates=16, plan=KernelPlan("int8", "float32", PATHS[0], "fp32"))
    assert isinstance(head.shadow, PackedInt4Linear)
    hidden = torch.randn(6, 1, 128)
    batch = head_rows(head, hidden)
    for r in range(6):
        assert torch.equal(batch[r : r + 1], head(hidden[r : r + 1]).reshape(1, -1))
