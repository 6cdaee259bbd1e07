"""Inference threads follow the cores other processes leave free (model/threads.py's ThreadGovernor):
one thread fewer while another process takes a core, back when it leaves, nothing while training or
when the user pinned the count, and a real competing process is seen through /proc/stat."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from demi.model import kernel_plan, threads
from demi.model.threads import ThreadGovernor


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def _ticks(governor: ThreadGovernor, monkeypatch, shares: list[float | None], cpus: int = 2) -> list[int]:
    """The thread count after each look, with other processes taking `shares` of all CPUs."""
    clock = [1000.0]
    readings = iter(shares)
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(threads.os, "cpu_count", lambda: cpus)
    monkeypatch.setattr(kernel_plan, "others_share", lambda before, steal=True: next(readings))
    monkeypatch.setattr(kernel_plan, "cpu_mark", lambda steal=True: (0, 0, 0.0))
    seen = []
    with torch.inference_mode():
        for _ in shares:
            clock[0] += threads.ADAPT_INTERVAL_S
            governor.tick()
            seen.append(torch.get_num_threads())
    return seen


def test_one_thread_fewer_while_another_process_takes_a_core(monkeypatch, restore_threads):
    torch.set_num_threads(2)
    governor = ThreadGovernor()
    governor.govern(2)
    # quiet, a competitor on one core (half the machine), a light one (a tenth), gone
    assert _ticks(governor, monkeypatch, [0.0, 0.5, 0.45, 0.05, 0.0]) == [2, 1, 1, 2, 2]
    assert governor.changes == 2


def test_a_quarter_of_a_core_counts_as_taken(monkeypatch, restore_threads):
    torch.set_num_threads(8)
    governor = ThreadGovernor()
    governor.govern(8)
    # 16 CPUs, 8 threads: others taking up to 8 cores leave 8 free; 8.3 take one more
    assert _ticks(governor, monkeypatch, [0.5, 8.3 / 16, 9.9 / 16, 15.9 / 16], cpus=16) == [8, 7, 6, 1]


def test_training_and_a_pinned_count_are_left_alone(monkeypatch, restore_threads):
    torch.set_num_threads(2)
    governor = ThreadGovernor()
    governor.govern(2)
    clock = [1000.0]
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(kernel_plan, "others_share", lambda before, steal=True: 0.9)
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    for _ in range(3):  # gradients wanted: a training step
        clock[0] += 1
        governor.tick()
    assert torch.get_num_threads() == 2
    monkeypatch.setenv("DEMI_THREADS", "2")
    assert threads.use_physical_cores() == 2 and threads.GOVERNOR.most == 0  # the user's count stands
    monkeypatch.delenv("DEMI_THREADS")
    monkeypatch.setenv("DEMI_ADAPT_THREADS", "0")
    threads.use_physical_cores()
    assert threads.GOVERNOR.most == 0


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux's /proc/stat")
def test_a_real_competitor_takes_a_thread_away(restore_threads):
    cpus = os.cpu_count() or 1
    if cpus < 2:
        pytest.skip("one CPU: nothing to give up")
    torch.set_num_threads(cpus)
    governor = ThreadGovernor()
    governor.govern(cpus)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        fewest = cpus
        deadline = time.monotonic() + 10
        with torch.inference_mode():
            while time.monotonic() < deadline and fewest == cpus:
                time.sleep(threads.ADAPT_INTERVAL_S)
                governor.tick()
                fewest = min(fewest, torch.get_num_threads())
    finally:
        busy.kill()
        busy.wait()
    assert fewest < cpus


def test_prompts_keep_every_thread(monkeypatch, restore_threads):
    """A prompt's torch matmuls may sum in another order with another thread count: prompt-sized
    passes run on all the cores chosen at load, so a loaded machine gives a quiet one's numbers."""
    from demi.model import quantize

    assert threads.DECODE_ROWS == quantize.DECODE_ROWS
    torch.set_num_threads(2)
    governor = ThreadGovernor()
    governor.govern(2)
    assert _ticks(governor, monkeypatch, [0.0, 0.5]) == [2, 1]
    with torch.inference_mode():
        governor.tick(rows=threads.DECODE_ROWS + 1)  # a prompt: every thread
        assert torch.get_num_threads() == 2
        governor.tick(rows=1)  # the next decode step: the governed count again
        assert torch.get_num_threads() == 1
