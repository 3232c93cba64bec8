"""Shared test set-up: telemetry off, headless plotting, CUDA-only tests skipped on CPU."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MPLBACKEND", "Agg")
# One intra-op thread in every test process and its children: `optim.threads: auto` then resolves
# to 1 (no 0.25 s idle-core sample per Trainer, no thread count that varies with the load between
# a run and its resume), and 2 spinning OpenMP threads on 2 shared cores run ~10x slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def run_in_tmp(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A training run's surroundings: the cwd is ``tmp_path`` (MLflow's default artifact root is
    relative to it), no tracking URI or WORLD_SIZE leaks in from the caller's shell, and torch
    runs one intra-op thread (restored after)."""
    import torch

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)
