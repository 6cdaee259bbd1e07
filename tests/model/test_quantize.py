"""Quantization: kernels against their dequantized reference, quality on a trained model,
quantized checkpoints, the rescored int8 head, and the bad inputs."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from hf_models import FAMILIES, save_family
from trained_tiny import train_tiny

from demi.model import native_kernels
from demi.model.engine import LocalModel
from demi.model.errors import CheckpointError, DemiUserError
from demi.model.kernel_plan import KernelPlan
from demi.model.loading import load_model
from demi.model.plan import auto_quant, plan_for
from demi.model.presets import get_preset
from demi.model.quantize import (
    Int4Linear,
    Int8Linear,
    RescoredHead,
    dequantize_int4,
    pack_nibbles,
    quantize_int4,
    quantize_int8,
    quantize_linear,
    unpack_nibbles,
)
from demi.model.quantized_checkpoint import quantize_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return train_tiny(tmp_path_factory.mktemp("trained"))


def test_int8_and_int4_round_trip_error():
    w = torch.randn(96, 256)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (96,)
    assert (q.float() * scale[:, None] - w).abs().max() <= scale.max() / 2 + 1e-6
    q4, s4, z4 = quantize_int4(w, 64)
    assert int(q4.max()) <= 15 and s4.shape == (96, 4)
    err = (dequantize_int4(q4, s4, z4) - w).abs()
    assert err.max() <= (s4.float().max() / 2) * 1.05 + 0.02  # half a step (+ bf16 scale rounding)
    assert torch.equal(unpack_nibbles(pack_nibbles(q4)), q4)


@pytest.mark.parametrize("rows", [1, 3, 40])
def test_kernels_match_dequantized_reference(rows):
    torch.manual_seed(0)
    w, b, x = torch.randn(80, 128), torch.randn(80), torch.randn(rows, 128)
    q, scale = quantize_int8(w)
    ref8 = x @ (q.float() * scale[:, None]).T + b
    got8 = Int8Linear(q, scale, b)(x.bfloat16()).float()
    assert torch.allclose(got8, ref8, rtol=0.02, atol=0.1 * ref8.abs().mean().item())
    q4, s4, z4 = quantize_int4(w, 32)
    ref4 = x @ dequantize_int4(q4, s4, z4).T + b
    got4 = Int4Linear(q4, s4, z4, b)(x.bfloat16()).float()  # 80 rows: padded to 96 for the kernel
    assert got4.shape == (rows, 80)
    assert torch.allclose(got4, ref4, rtol=0.02, atol=0.1 * ref4.abs().mean().item())


def test_int4_falls_back_where_no_group_fits(caplog):
    lin = torch.nn.Linear(100, 32)  # 100 is not a multiple of 32
    with caplog.at_level(logging.INFO, logger="demi.model"):
        out = quantize_linear(lin, "int4", 64, "layer.x_proj")
    assert isinstance(out, Int8Linear)
    assert "kept in int8" in caplog.text


def test_rescored_head_picks_the_exact_int8_winner():
    torch.manual_seed(1)
    w = torch.randn(8192, 64)
    q, scale = quantize_int8(w)
    head = RescoredHead(q, scale)
    exact_w = q.float() * scale[:, None]
    xs = torch.randn(200, 64)
    for x in xs:
        x = x[None].bfloat16()
        assert head(x).argmax().item() == (x.float() @ exact_w.T).argmax().item()
    many = head(xs[:5].bfloat16()).float()  # more than one row: the plain int8 path
    want = xs[:5] @ exact_w.T
    # the native kernels quantize activations to int8 blocks: an error below the weights' own
    assert ((many - want).norm() / want.norm()) < 0.01


def test_quality_on_a_trained_model(trained):
    """Held-out perplexity: int8 within 1% of fp32, int4 within 5%."""
    text = (trained / "heldout.txt").read_text()
    ppl = {
        q: LocalModel.load(str(trained), quant=q, context=512).perplexity([text])["perplexity"]
        for q in ("none", "int8", "int4")
    }
    assert ppl["none"] < 400  # it did learn something (the vocabulary is 1024)
    assert abs(ppl["int8"] / ppl["none"] - 1) < 0.01, ppl
    assert abs(ppl["int4"] / ppl["none"] - 1) < 0.05, ppl


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_loads_quantized(family, tmp_path):
    save_family(family, tmp_path)
    ids = torch.randint(0, 512, (1, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = load_model(tmp_path)(ids).flatten()
        for mode, floor in (("int8", 0.98), ("int4", 0.8)):
            model = load_model(tmp_path, quant=mode)
            # the rest of the model runs in the dtype the kernel plan measured fastest here
            assert model.dtype == model.kernel_plan.activation_dtype and model.quantization == mode
            cos = torch.nn.functional.cosine_similarity(ref, model(ids).float().flatten(), dim=0)
            assert cos > floor, (mode, cos)


def test_quantized_checkpoint_round_trip(trained, tmp_path):
    for mode in ("int8", "int4"):
        dst = quantize_checkpoint(trained, tmp_path / mode, mode)
        cfg = json.loads((dst / "config.json").read_text())
        assert cfg["quantization_config"]["quant_method"] == "demi"
        assert (dst / "tokenizer.json").is_file() and (dst / "tokenizer_config.json").is_file()
        size = sum(f.stat().st_size for f in dst.glob("*.safetensors"))
        assert size < sum(f.stat().st_size for f in trained.glob("*.safetensors")) / 2
        ids = torch.randint(0, 1000, (1, 30), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            direct = load_model(trained, quant=mode)(ids)
            stored = load_model(dst)(ids)  # no --quant: the checkpoint says what it is
        # the stored checkpoint keeps embeddings and norms in bf16; loading with --quant keeps them
        # in the activation dtype (fp32 where bf16 is emulated): that rounding is the difference
        err = ((direct.float() - stored.float()).norm() / stored.float().norm()).item()
        assert err < (1e-2 if mode == "int8" else 2e-2), (mode, err)
        assert (direct.argmax(-1) == stored.argmax(-1)).float().mean() >= 0.9, mode


def test_quantized_checkpoint_errors(trained, tmp_path):
    dst = quantize_checkpoint(trained, tmp_path / "q", "int8")
    with pytest.raises(DemiUserError, match="already quantized"):
        quantize_checkpoint(dst, tmp_path / "again", "int8")
    with pytest.raises(DemiUserError, match="not empty"):
        quantize_checkpoint(trained, dst, "int8")
    cfg_path = dst / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["quantization_config"]["format_version"] = 99
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format version 99"):
        load_model(dst)
    cfg["quantization_config"]["format_version"] = 1
    cfg_path.write_text(json.dumps(cfg))
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(dst / "model.safetensors"))
    name = next(k for k in tensors if k.endswith("q_proj.weight_scale"))
    del tensors[name]
    save_file(tensors, str(dst / "model.safetensors"))
    with pytest.raises(CheckpointError, match="weight_scale"):
        load_model(dst)


def test_nf4_without_cuda_suggests_int4(trained):
    with pytest.raises(DemiUserError, match="int4"):
        load_model(trained, quant="nf4")
    with pytest.raises(DemiUserError, match="unknown quantization"):
        load_model(trained, quant="int3")


def test_auto_and_target_plans():
    cfg = get_preset("sheikh-2.5-coder")
    cpu = torch.device("cpu")
    assert auto_quant(cfg, cpu, free=32 * 2**30) == "int8"
    assert auto_quant(cfg, cpu, free=3 * 2**30) == "int4"
    assert auto_quant(cfg, torch.device("cuda"), free=40 * 2**30) == "none"
    assert auto_quant(cfg, torch.device("cuda"), free=5 * 2**30) == "int8"
    assert auto_quant(cfg, torch.device("cuda"), free=3 * 2**30) == "nf4"
    mobile, edge = plan_for(cfg, "mobile"), plan_for(cfg, "edge")
    assert mobile["precision"] == "int4" and mobile["context"] < edge["context"]
    assert edge["precision"] == "int8" and plan_for(cfg, "server")["precision"] == "fp32"
    with pytest.raises(DemiUserError):
        plan_for(cfg, "toaster")


@pytest.mark.parametrize("path", native_kernels.PATH_NAMES)
@pytest.mark.parametrize("rows", [1, 3, 40])
def test_native_kernels_match_the_dequantized_reference(path, rows):
    """Every native path this CPU runs gives x @ W.T within the error of int8 activations, below
    the weights' own quantization error, for int8 and int4 weights, fp32 and bf16 rows, with a
    bias; a path this CPU cannot run is never offered (ARM paths: test_native_arm.py, under qemu)."""
    if path not in native_kernels.runnable_paths():
        assert path not in native_kernels.candidate_paths()
        pytest.skip(f"this CPU cannot run {path}")
    lib = native_kernels.library(path)
    assert lib is not None, native_kernels.problem(path)
    assert lib.demi_path().decode() == path
    torch.manual_seed(3)
    w, b, x = torch.randn(300, 896), torch.randn(300), torch.randn(rows, 896)
    q, scale = quantize_int8(w)
    ref8 = x @ (q.float() * scale[:, None]).T + b
    weight_err = ((x @ w.T + b - ref8).norm() / ref8.norm()).item()
    q4, s4, z4 = quantize_int4(w, 64)
    ref4 = x @ dequantize_int4(q4, s4, z4).T + b
    weight_err4 = ((x @ w.T + b - ref4).norm() / ref4.norm()).item()
    packed, offset = native_kernels.pack_q4(q4), native_kernels.int4_offset(s4, z4)
    # the kernels read scale and offset in half precision: the offset rounds by half an ulp at most
    half_ulp = offset.float().abs().max().item() * 2**-11 + 1e-6
    assert torch.allclose(
        native_kernels.dequantize_q4(packed, s4.float(), offset, 64), dequantize_int4(q4, s4, z4), atol=half_ulp
    )
    for dtype in (torch.float32, torch.bfloat16):
        got8 = native_kernels.linear_q8(lib, x.to(dtype), q, scale, b.float())
        got4 = native_kernels.linear_q4(lib, x.to(dtype), packed, s4.float().contiguous(), offset, 64, b.float())
        assert got8.dtype == got4.dtype == dtype and got8.shape == got4.shape == (rows, 300)
        err8 = ((got8.float() - ref8).norm() / ref8.norm()).item()
        err4 = ((got4.float() - ref4).norm() / ref4.norm()).item()
        assert err8 < min(0.01, weight_err), (dtype, err8, weight_err)
        # int4 multiplies the unsigned nibbles (0..15) by the int8 activations, which makes the
        # activations' rounding count more than for int8, still far below int4's own error
        assert err4 < min(0.02, weight_err4 / 4), (dtype, err4, weight_err4)
    # an odd number of 32-blocks (the wide paths' tail, and int4's blocks after its 128-weight
    # chunks) with groups of 32 (two groups in each 64-weight run), and groups of 128
    for k, group in ((160, 32), (96, 32), (384, 128)):
        w, x = torch.randn(9, k), torch.randn(rows, k)
        q, scale = quantize_int8(w)
        q4, s4, z4 = quantize_int4(w, group)
        ref8, ref4 = x @ (q.float() * scale[:, None]).T, x @ dequantize_int4(q4, s4, z4).T
        packed, offset = native_kernels.pack_q4(q4), native_kernels.int4_offset(s4, z4)
        half_ulp = offset.float().abs().max().item() * 2**-11 + 1e-6
        assert torch.allclose(
            native_kernels.dequantize_q4(packed, s4.float(), offset, group), dequantize_int4(q4, s4, z4), atol=half_ulp
        )
        got8 = native_kernels.linear_q8(lib, x, q, scale, None)
        got4 = native_kernels.linear_q4(lib, x, packed, s4.float().contiguous(), offset, group, None)
        assert ((got8 - ref8).norm() / ref8.norm()) < 0.01 and ((got4 - ref4).norm() / ref4.norm()) < 0.03, (k, group)


@pytest.mark.parametrize("path", native_kernels.PATH_NAMES)
def test_each_row_of_a_native_call_is_that_row_alone_bit_for_bit(path):
    """A speculative check and a batch put many rows through one call: each row must be what it
    gives alone (so greedy output never depends on how rows were grouped), for every tile shape the
    kernels use (pairs of rows and an odd one, four weight rows and a ragged band, K with a half
    step at its end; on AVX2 the prefill's tiles of 3 weight by 3 activation rows, their ragged
    edges, and more rows than one chunk of 48), int8 and int4, with an activation outlier of the
    kind real models have."""
    if path not in native_kernels.runnable_paths():
        pytest.skip(f"this CPU cannot run {path}")
    lib = native_kernels.library(path)
    assert lib is not None, native_kernels.problem(path)
    torch.manual_seed(5)
    for n, k in ((37, 992), (16, 96), (5, 160)):
        w = torch.randn(n, k)
        q, scale = quantize_int8(w)
        q4, s4, z4 = quantize_int4(w, 32)
        packed, offset = native_kernels.pack_q4(q4), native_kernels.int4_offset(s4, z4)
        more = torch.randn(36, k, generator=torch.Generator().manual_seed(k))  # past one chunk of rows
        b = torch.randn(n, generator=torch.Generator().manual_seed(n))
        x = torch.cat([torch.randn(17, k), more])
        x[:, 7] *= 30.0
        for many, bias in ((2, None), (5, b), (17, None), (53, b)):  # with a bias: one rounding, not two
            got8 = native_kernels.linear_q8(lib, x[:many], q, scale, bias)
            got4 = native_kernels.linear_q4(lib, x[:many], packed, s4.float().contiguous(), offset, 32, bias)
            for r in range(many):
                alone8 = native_kernels.linear_q8(lib, x[r : r + 1], q, scale, bias)
                assert torch.equal(got8[r], alone8[0]), (n, k, r)
                alone4 = native_kernels.linear_q4(lib, x[r : r + 1], packed, s4.float().contiguous(), offset, 32, bias)
                assert torch.equal(got4[r], alone4[0]), (n, k, r)
        # a float prefill's weight, dequantized in C (fp32 and bf16) as torch's ops give it
        ref_w = native_kernels.dequantize_q4(packed, s4.float().contiguous(), offset, 32)
        for dtype in (torch.float32, torch.bfloat16):
            got_w = native_kernels.dequantize_q4(packed, s4.float().contiguous(), offset, 32, lib, dtype)
            tol = 1e-6 if dtype == torch.float32 else 1e-2  # (bf16: one rounding step either side)
            assert got_w.dtype == dtype and torch.allclose(got_w.float(), ref_w.to(dtype).float(), rtol=tol, atol=1e-6)
        # one weight row at a time (the plan's rows_at_once 1) is a speed choice: the same numbers
        want8 = native_kernels.linear_q8(lib, x, q, scale, None)
        want4 = native_kernels.linear_q4(lib, x, packed, s4.float().contiguous(), offset, 32, None)
        assert torch.equal(native_kernels.linear_q8(lib, x, q, scale, None, one_row=True), want8)
        got4 = native_kernels.linear_q4(lib, x, packed, s4.float().contiguous(), offset, 32, None, one_row=True)
        assert torch.equal(got4, want4)
        # the outlier costs the block of 32 that holds it (one scale each) about 1%
        ref = x[:17] @ (q.float() * scale[:, None]).T
        err = ((native_kernels.linear_q8(lib, x[:17], q, scale, None) - ref).norm() / ref.norm()).item()
        assert err < 0.02, (n, k, err)


def test_modules_follow_the_plan_and_step_aside_where_a_kernel_cannot_run():
    """Int8Linear/Int4Linear take the plan's kernels; K not a multiple of 32 falls back to torch."""
    paths = [p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None]
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    x = torch.randn(1, 128)
    for decode in ["torch", *paths[:1]]:
        for prefill in ["fp32", "bf16", *paths[:1]]:
            lin = Int8Linear(*quantize_int8(w), plan=KernelPlan("int8", "float32", decode, prefill))
            assert lin.native == (decode != "torch")
            for rows in (x, torch.randn(20, 128)):
                want = rows @ w.T
                assert ((lin(rows) - want).norm() / want.norm()) < 0.02
        for prefill in ("fp32", "bf16"):  # a prefill of 20 rows: the dequantized weight in fp32 or bf16
            lin4 = Int4Linear(*quantize_int4(w, 64), plan=KernelPlan("int4", "float32", decode, prefill))
            assert lin4.native == (decode != "torch")
            for rows in (x, torch.randn(20, 128)):
                want = rows @ w.T
                got = lin4(rows)
                assert got.dtype == torch.float32 and ((got - want).norm() / want.norm()) < 0.15
    plan = KernelPlan("int8", "float32", (paths or ["avx2"])[0], "fp32")
    ragged = Int8Linear(*quantize_int8(torch.randn(64, 100)), plan=plan)
    assert not ragged.native and ragged(torch.randn(1, 100)).shape == (1, 64)


def test_native_and_torch_int8_decode_agree(trained):
    """Greedy tokens through the native kernel equal the ones through torch's int8 kernel."""
    from demi.model.generate import GenerationRequest, generate

    paths = [p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None]
    if not paths:
        pytest.skip("no native path runs on this CPU")
    model = load_model(trained, quant="int8")
    lins = [m for m in model.modules() if isinstance(m, Int8Linear)]
    prompt = list(range(20, 80))
    with torch.inference_mode():
        for lin in lins:
            lin.use_plan(KernelPlan("int8", "float32", "torch", "fp32"))
        plain = list(generate(model, GenerationRequest(prompt, 24)))
        for lin in lins:
            lin.use_plan(KernelPlan("int8", "float32", paths[0], paths[0]))
        native = list(generate(model, GenerationRequest(prompt, 24)))
    assert sum(a == b for a, b in zip(plain, native)) >= 22  # near-ties may flip


def test_prefill_keeps_a_float_copy_within_the_budget(monkeypatch):
    """The cached prefill weight gives the same output as converting each time, and the
    per-process budget decides which layers keep one."""
    import gc

    from demi.model import quantize as q

    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48)
    x = torch.randn(2, 20, 64)
    gc.collect()  # earlier tests' modules, freed now rather than during the count below
    for prefill, size in (("fp32", 4), ("bf16", 2)):
        plan = KernelPlan("int8", "float32", "torch", prefill)
        monkeypatch.setattr(q, "PREFILL_COPY_BUDGET", 0)
        uncached = q.quantize_linear(lin, "int8", plan=plan)
        want = uncached(x)
        assert uncached._w_copy is None
        monkeypatch.setattr(q, "PREFILL_COPY_BUDGET", 10**9)
        cached = q.quantize_linear(lin, "int8", plan=plan)
        first, second = cached(x), cached(x)
        assert cached._w_copy is not None and cached._w_copy.element_size() == size
        assert torch.equal(first, want) and torch.equal(second, want)
        used = q._prefill_copy_bytes
        del cached, first, second
        gc.collect()
        assert q._prefill_copy_bytes == used - size * 64 * 48  # freed with its module


def test_short_prefills_skip_the_weight_conversion(monkeypatch):
    """Below the plan's crossover a float prefill would spend more converting the weight than it
    saves, so a layer without a kept copy runs those rows through the native kernel."""
    from demi.model import quantize as q

    paths = [p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None]
    if not paths:
        pytest.skip("no native path runs on this CPU")
    monkeypatch.setattr(q, "PREFILL_COPY_BUDGET", 0)
    calls = []
    real = native_kernels.linear_q8p  # (the weight is held packed where a native kernel runs)
    monkeypatch.setattr(native_kernels, "linear_q8p", lambda *a: calls.append(a[1].shape[0]) or real(*a))
    lin = Int8Linear(*quantize_int8(torch.randn(48, 64)), plan=KernelPlan("int8", "float32", paths[0], "fp32", 100))
    lin(torch.randn(20, 64))
    assert calls == [20]
    lin(torch.randn(150, 64))  # past the crossover: the float matmul
    assert calls == [20]


def test_a_prompt_takes_the_same_int8_kernel_before_and_after_a_long_prefill_keeps_a_float_copy():
    """Below the plan's float-prefill rows the native kernel runs whether or not a longer prefill has
    kept an fp32 copy of the weight meanwhile: the same prompt gets the same numbers, first or later."""
    paths = [p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None]
    torch.manual_seed(5)
    lin = Int8Linear(*quantize_int8(torch.randn(48, 64)), plan=KernelPlan("int8", "float32", paths[0], "fp32", 40))
    mid = torch.randn(20, 64)  # more than a decode step's rows, fewer than the float-prefill rows
    first = lin(mid)
    lin(torch.randn(60, 64))  # a long prefill: fp32, keeps a copy of the weight
    assert lin._w_copy is not None
    assert torch.equal(lin(mid), first)
