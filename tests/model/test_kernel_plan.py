"""The kernel plan: measured per machine and model shape, cached, forced by DEMI_KERNEL, and robust
to corrupt or foreign cache files, interrupted writes, failing self-checks and missing compilers."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest
import torch

from demi.model import kernel_plan, native_kernels
from demi.model.config import ModelConfig
from demi.model.kernel_plan import KernelPlan, calibrate, plan_for

CFG = ModelConfig(
    vocab_size=256,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Every test gets an empty user cache (plans and compiled kernels) and forgets loaded paths."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DEMI_KERNEL", raising=False)
    monkeypatch.delenv("DEMI_NATIVE", raising=False)
    # caching is tested whatever else runs on this machine (the busy case has its own test)
    monkeypatch.setattr(kernel_plan, "BUSY_SHARE", 1.01)
    native_kernels.library.cache_clear()
    native_kernels._problems.clear()
    kernel_plan.guess.cache_clear()
    yield
    native_kernels.library.cache_clear()
    native_kernels._problems.clear()
    kernel_plan.guess.cache_clear()


def test_calibration_times_every_candidate_and_picks_the_fastest():
    plan = calibrate(CFG, "int8")
    usable = [p for p in native_kernels.candidate_paths() if native_kernels.library(p) is not None]
    vector = [p for p in usable if p != "generic"] or usable
    # int8's native kernels read packed weights (packed.c): one layout, no one-row variant
    assert set(plan.times_ms["decode"]) == {"torch", *vector}
    int_mm = {"int8mm"} if kernel_plan.int_mm_runs() else set()
    assert set(plan.times_ms["prefill"]) == {"fp32", "bf16", *int_mm, *vector}
    assert all(t > 0 for phase in plan.times_ms.values() for t in phase.values())
    if len(vector) > 1:  # native decode paths to choose between: their check rows are timed too
        assert set(plan.times_ms["check"]) == set(vector)
    dec = plan.times_ms["decode"]
    lone = {p: min(t, dec.get(p + kernel_plan.ONE_ROW, t)) for p, t in dec.items() if kernel_plan.ONE_ROW not in p}
    fastest = min(lone, key=lone.get)
    if fastest == "torch":
        assert plan.decode == "torch"
    else:  # the fastest lone step, or a near tie with faster check rows
        assert lone[plan.decode] <= lone[fastest] * (1 + kernel_plan.CHECK_SLACK)
        assert plan.decode == fastest or plan.times_ms["check"][plan.decode] < plan.times_ms["check"][fastest]
    assert plan.rows_at_once == (1 if dec.get(plan.decode + kernel_plan.ONE_ROW, 1e9) < dec[plan.decode] else 4)
    assert plan.prefill == min(plan.times_ms["prefill"], key=plan.times_ms["prefill"].get)
    # a bf16 prefill matmul converts its rows alone: the activations stay fp32, so decode keeps the
    # one-call native stack and batched rows stay their lone steps on a CPU with bf16 units too
    assert plan.activations == "float32"
    assert plan.source == "measured" and plan.seconds > 0
    four = calibrate(CFG, "int4")
    assert four.mode == "int4" and "torch" in four.times_ms["decode"]
    if four.decode != "torch":
        assert four.prefill in (four.decode, "fp32", "bf16", "int8mm")
        assert int_mm <= set(four.times_ms["prefill"])


def test_a_near_tie_in_the_lone_step_goes_to_the_faster_check():
    """Decode paths within CHECK_SLACK of the fastest lone step are ranked by their check rows; a
    path clearly slower alone is never chosen for its check, nor without a check measured."""
    dec = {"avx2": 1.00, "avx512vnni": 1.03, "avx512": 1.30}
    check = {"avx2": 9.0, "avx512vnni": 7.0, "avx512": 5.0}
    assert kernel_plan._decode_path(dec, check, list(dec)) == "avx512vnni"
    assert kernel_plan._decode_path(dec, {"avx2": 9.0, "avx512vnni": 9.5}, list(dec)) == "avx2"
    assert kernel_plan._decode_path(dec, {}, list(dec)) == "avx2"
    assert kernel_plan._decode_path({"avx2": 1.0}, check, ["avx2"]) == "avx2"


def test_a_plan_is_cached_per_machine_and_shape(caplog):
    first = plan_for(CFG, "int8")
    path = kernel_plan.cache_file()
    data = json.loads(path.read_text())
    assert data["key"] == kernel_plan.cache_key() and data["key"]["torch"] == torch.__version__
    again = plan_for(CFG, "int8")
    assert again.source == "cache" and (again.decode, again.prefill) == (first.decode, first.prefill)
    other = ModelConfig(
        **{**CFG.__dict__, "hidden_size": 96, "num_attention_heads": 3, "num_key_value_heads": 1, "head_dim": 32}
    )
    assert plan_for(other, "int8").source == "measured"  # another shape is another entry
    assert len(json.loads(path.read_text())["entries"]) == 2


@pytest.mark.parametrize("content", ["{not json", json.dumps([1, 2]), json.dumps({"key": {}, "entries": "x"})])
def test_a_corrupt_cache_file_is_ignored_with_a_warning(content, caplog):
    path = kernel_plan.cache_file()
    path.parent.mkdir(parents=True)
    path.write_text(content)
    with caplog.at_level(logging.WARNING, logger="demi.model"):
        plan = plan_for(CFG, "int8")
    assert plan.source == "measured" and "unreadable" in caplog.text
    assert json.loads(path.read_text())["key"] == kernel_plan.cache_key()  # replaced by a good one


def test_a_foreign_cache_file_is_ignored_with_a_warning(caplog):
    plan_for(CFG, "int8")
    path = kernel_plan.cache_file()
    data = json.loads(path.read_text())
    data["key"]["cpu"] = "Some Other CPU"
    path.write_text(json.dumps(data))
    with caplog.at_level(logging.WARNING, logger="demi.model"):
        assert plan_for(CFG, "int8").source == "measured"
    assert "another machine" in caplog.text


def test_an_interrupted_write_leaves_the_old_cache_and_no_temporary_file(monkeypatch):
    plan_for(CFG, "int8")
    path = kernel_plan.cache_file()
    before = path.read_text()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(kernel_plan.json, "dump", interrupted)
    with pytest.raises(KeyboardInterrupt):
        plan_for(CFG, "int8", remeasure=True)
    assert path.read_text() == before
    assert [p.name for p in path.parent.iterdir()] == [path.name]


def test_demi_kernel_forces_one_family(monkeypatch, caplog):
    runnable = native_kernels.runnable_paths()
    slowest = runnable[-1] if runnable else None
    if slowest:
        monkeypatch.setenv("DEMI_KERNEL", slowest)
        assert native_kernels.candidate_paths() == [slowest]
        plan = plan_for(CFG, "int8")
        assert plan.decode == slowest and set(plan.times_ms["decode"]) == {slowest}
        assert kernel_plan.cache_key()["forced"] == slowest
    monkeypatch.setenv("DEMI_KERNEL", "torch")
    assert native_kernels.candidate_paths() == []
    assert plan_for(CFG, "int8").decode == "torch"
    monkeypatch.setenv("DEMI_KERNEL", "sse9000")
    with caplog.at_level(logging.WARNING, logger="demi.model"):
        assert native_kernels.forced() is None
    assert "not a kernel family" in caplog.text


def test_a_path_this_cpu_lacks_is_never_offered(monkeypatch, caplog):
    missing = next((p.name for p in native_kernels.PATHS if p.name not in native_kernels.runnable_paths()), None)
    if missing is None:
        pytest.skip("this CPU runs every path")
    monkeypatch.setenv("DEMI_KERNEL", missing)
    with caplog.at_level(logging.WARNING, logger="demi.model"):
        assert native_kernels.candidate_paths() == []
    assert "lacks the flags" in caplog.text


@pytest.mark.parametrize("exit_code, why", [(-4, "killed by signal 4"), (1, "wrong results")])
def test_a_failing_self_check_falls_back_to_torch_with_one_warning(monkeypatch, caplog, exit_code, why):
    """A CPU flag that lies (SIGILL) or a miscompiled path: the self-check runs in a child process,
    so the library is refused, the reason kept, and torch's kernel used."""
    path = (native_kernels.runnable_paths() or ["generic"])[0]
    if exit_code < 0:
        check = "import os, signal; os.kill(os.getpid(), signal.SIGILL)"
    else:
        check = f"import sys; sys.exit({exit_code})"
    monkeypatch.setattr(native_kernels, "_SELFTEST", check)
    monkeypatch.setattr(native_kernels, "runnable_paths", lambda: [path])
    with caplog.at_level(logging.WARNING, logger="demi.model"):
        assert native_kernels.library(path) is None
    assert why in native_kernels.problem(path) and why in caplog.text
    assert not list((native_kernels._cache_dir()).glob("*.ok"))  # a refused library is checked again next time
    assert kernel_plan.guess("int8").decode == "torch"
    from demi.model.quantize import Int8Linear, quantize_int8

    lin = Int8Linear(*quantize_int8(torch.randn(32, 64)))
    assert not lin.native and lin(torch.randn(1, 64)).shape == (1, 32)


def test_no_compiler_means_torch_kernels_and_a_note(monkeypatch):
    monkeypatch.setattr(native_kernels, "compiler", lambda: None)
    for path in native_kernels.runnable_paths():
        assert native_kernels.library(path) is None
        assert "no C compiler" in native_kernels.problem(path)
    plan = plan_for(CFG, "int8")
    assert plan.decode == "torch" and plan.prefill in kernel_plan.TORCH_PREFILLS
    from demi.assistant.catalog import _cpu_report

    report = _cpu_report(plan)  # the plan the model would load with
    assert report["native_usable"] == [] and "no C compiler" in report["note"]
    assert report["plan"]["decode"] == "torch"


def test_guess_without_measuring_matches_the_hardware():
    plan = kernel_plan.guess("int8")
    assert isinstance(plan, KernelPlan) and plan.source == "guess"
    assert plan.prefill == ("bf16" if kernel_plan.has_bf16_hardware() else "fp32")


def test_candidates_are_timed_in_turns_so_a_burst_of_load_lands_on_no_one_alone():
    """A stall in one candidate's timed call (another process taking the core) is skipped by best-of,
    as the candidates take turns rep by rep rather than running their reps one candidate after another."""
    calls: list[str] = []
    stalls = iter([0.08])  # the first timed call of "slow-once" is hit by a burst of load

    def candidate(name: str, stall: bool = False):
        def run() -> None:
            calls.append(name)
            time.sleep(next(stalls, 0.0) if stall else 0.0)
            time.sleep(0.002)

        return run

    warmed: list[str] = []
    fns = {"slow-once": candidate("slow-once", stall=True), "steady": candidate("steady")}
    got = kernel_plan._timed_together(fns, time.perf_counter() + 60, 3, {"slow-once": lambda: warmed.append("w")})
    assert warmed == ["w"] and calls[:1] == ["steady"]  # its own warm-up, the other's warm-up call
    assert calls[1:] == [
        "slow-once",
        "steady",
        "steady",
        "slow-once",
        "slow-once",
        "steady",
    ]  # turns, the order turning
    assert got["slow-once"] < 40 and got["steady"] < 40  # ms: the 80 ms burst is not what counts
    assert kernel_plan._timed_together({}, time.perf_counter() + 60, 3, {}) == {}  # a shape no candidate takes


def test_a_plan_measured_while_other_processes_load_the_cpu_is_used_but_not_cached(caplog, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setattr(kernel_plan, "BUSY_SHARE", 0.25)

    if kernel_plan._cpu_ticks() is None:
        pytest.skip("no /proc/stat here: the share of other processes is unknown")
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(1, os.cpu_count() or 1))]
    try:
        time.sleep(0.3)  # (started)
        with caplog.at_level(logging.INFO, logger="demi.model"):
            plan = plan_for(CFG, "int8")
    finally:
        for p in spin:
            p.kill()
            p.wait()
    assert plan.source == "busy" and plan.others_share is not None  # the default kernels, the same in every process
    assert plan.others_share > kernel_plan.BUSY_SHARE and plan.times_ms["decode"]
    native = kernel_plan.guess("int8").decode  # one kernel for every row count: exact prefix reuse
    assert (plan.decode, plan.prefill) == (native, native if native != "torch" else kernel_plan.guess("int8").prefill)
    assert "not caching it" in caplog.text and not kernel_plan.cache_file().exists()
    quiet_plan = plan_for(CFG, "int8")  # measured again, and cached once the machine is quiet
    if quiet_plan.others_share is not None and quiet_plan.others_share <= kernel_plan.BUSY_SHARE:
        assert plan_for(CFG, "int8").source == "cache"
