"""A temporary git + DVC copy of this repository with tiny parameters, for real `dvc repro` runs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.worktree import copy_worktree

BIN = Path(sys.executable).parent

# Small enough for CI (a few seconds of compute per stage); the stage count is the real cost.
TINY = {
    "data": {"synthetic": {"train_identities": 8, "images_per_identity": 4, "eval_identities": 6,
                           "eval_images_per_identity": 4, "pairs_per_set": 40, "workers": 1}},
    "teacher": {"backbone": {"arch": "iresnet_tiny", "embedding_size": 16, "width": 0.125},
                "optim": {"epochs": 1, "batch_size": 8}},
    "distill": {"student": {"arch": "mfn", "embedding_size": 16, "width": 0.125},
                "optim": {"epochs": 1, "batch_size": 8}, "qud": {"queue_size": 16},
                "shkd": {"teacher_epochs": 1}, "seeds": 2},  # a second seed costs seconds, not a stage
    # 32 training images: the INT8 calibration sample must fit in them.
    "export": {"exporter": "legacy", "int8": {"calibration_images": 16}},
    # 6 evaluation identities have too few impostor pairs for TAR@FAR=1e-4: gate on accuracy. One of
    # synth_lfw's 40 pairs is 2.5 points, beyond params.yaml's INT8 limit of 2: allow 4 pairs.
    "registry": {"gate_metric": "synth_lfw.accuracy", "max_int8_drop": 0.1},
}


def deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        base[key] = deep_update(base.get(key) or {}, value) if isinstance(value, dict) else value
    return base


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check)


def set_params(repo: Path, extra: dict) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(deep_update(params, extra), sort_keys=False))


def make_tiny_repo(repo: Path) -> Path:
    """The source files of this repo (no run outputs, see tests/worktree.py), committed, with tiny params."""
    copy_worktree(repo)
    set_params(repo, TINY)
    run(["git", "init", "-q"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], repo)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "tiny"], repo)
    return repo


@pytest.fixture
def tiny_repo(tmp_path: Path) -> Path:
    return make_tiny_repo(tmp_path / "repo")
