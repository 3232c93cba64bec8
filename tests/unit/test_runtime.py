"""CPU runtime choices: intra-op threads (usable or idle cores), channels_last by measurement (issue 13)."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from facekd.models.registry import create_backbone
from facekd.training import runtime


@pytest.mark.parametrize(("idle", "usable", "expected"), [
    (2.0, 2, 2), (1.6, 2, 2), (1.0, 2, 1), (0.9, 2, 1), (0.0, 2, 1), (None, 2, 2), (7.8, 4, 4), (3.1, 16, 3),
])
def test_one_thread_per_idle_core(idle, usable, expected):
    assert runtime.threads_for(idle, usable) == expected


def test_param_and_environment_win_over_measurement(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert runtime.choose_threads(3) == 3
    assert runtime.choose_threads("auto") == 1 and runtime.choose_threads("idle") == 1


def test_auto_ignores_the_load_and_idle_follows_it(monkeypatch):
    """auto: the usable cores whatever else runs (the count changes the trained model); idle: per idle core."""
    import os

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(runtime, "idle_cores", lambda *a: 0.6)  # one core busy with other work
    assert runtime.choose_threads("auto") == 2
    assert runtime.choose_threads("idle") == 1


def test_a_busy_process_takes_a_core_off_the_idle_count():
    quiet = runtime.idle_cores(0.5)
    if quiet is not None and quiet < 1.0:
        pytest.skip(f"other processes keep the machine busy ({quiet:.2f} idle cores): nothing to take away")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        loaded = runtime.idle_cores(0.5)
    finally:
        busy.kill()
        busy.wait()
    assert quiet is not None and loaded is not None
    assert loaded <= quiet - 0.5, (quiet, loaded)


def test_layout_param_then_device_then_table(monkeypatch):
    model = create_backbone("mfn", embedding_size=8, width=0.125)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert runtime.use_channels_last(False, model, cuda) is False
    assert runtime.use_channels_last(True, model, cpu) is True
    monkeypatch.setattr(runtime, "CPU_NCHW_FASTER", {("mfn", 0.125): frozenset({2})})
    assert runtime.use_channels_last("auto", model, cpu, threads=2) is False
    assert runtime.use_channels_last("auto", model, cpu, threads=1) is True  # measured per thread count
    assert runtime.use_channels_last("auto", model, cuda, threads=2) is True
    monkeypatch.setattr(runtime, "CPU_NCHW_FASTER", {})
    assert runtime.use_channels_last("auto", model, cpu, threads=2) is True


def test_the_embedded_teacher_trains_in_nchw_on_two_threads_only():
    teacher = create_backbone("iresnet_tiny", embedding_size=8, width=0.25)
    assert not runtime.use_channels_last("auto", teacher, torch.device("cpu"), threads=2)
    assert runtime.use_channels_last("auto", teacher, torch.device("cpu"), threads=1)
