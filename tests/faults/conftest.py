"""Fault injection helpers: real CLI / `dvc repro` subprocesses in temporary repositories.

Every fault test drives the product the way a user does (the `facekd` console script of this
venv, `python -m dvc`), then checks exit code, stderr and what was left on disk.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.worktree import copy_worktree

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FACEKD = str(BIN / "facekd")
# A logged error record ("10:39:25 ERROR facekd: ..."): the CLI prints exactly one per failure.
ERROR_RECORD = re.compile(r"^\d\d:\d\d:\d\d ERROR ", re.MULTILINE)

# Tiny but complete: every stage runs in seconds on one CPU core.
TINY: dict[str, Any] = {
    "data": {"synthetic": {"train_identities": 8, "images_per_identity": 4, "eval_identities": 6,
                           "eval_images_per_identity": 4, "pairs_per_set": 40, "workers": 1}},
    "teacher": {"backbone": {"arch": "iresnet_tiny", "embedding_size": 16, "width": 0.125},
                "head": {"scale": 16.0, "margin": 0.3},
                "optim": {"epochs": 3, "batch_size": 8, "lr": 0.05, "checkpoint_every": 1}},
    "distill": {"methods": ["none", "qud", "adadistill"], "seeds": 1,
                "student": {"arch": "mfn", "embedding_size": 16, "width": 0.125},
                "head": {"scale": 16.0},
                "optim": {"epochs": 3, "batch_size": 8, "lr": 0.05, "checkpoint_every": 1},
                "teacher_source": "cache", "cache_dtype": "float32",
                "qud": {"queue_size": 16, "tau": 0.1}, "adadistill": {"margin": 0.45}},
    "evaluate": {"models": ["teacher", "none", "qud", "adadistill"], "batch_size": 32},
    "export": {"models": ["none", "qud", "adadistill"], "latency_runs": 2, "exporter": "legacy",
               "int8": {"calibration_images": 16}},  # of the 32 training images
}


def deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        base[key] = deep_update(dict(base.get(key) or {}), value) if isinstance(value, dict) else value
    return base


def child_env(**extra: str) -> dict[str, str]:
    """This venv first on PATH (dvc.yaml's `facekd` commands), telemetry off, unbuffered output."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONUNBUFFERED": "1",
           "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
           # One thread per process: the tests run several at once on 2 cores, and oversubscribed
           # torch threads spin (a tiny step goes from 0.1 s to seconds). Results stay deterministic.
           "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("WORLD_SIZE", None)
    env.update(extra)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 300,
        preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def facekd(*args: str, cwd: Path, check: bool = False, **kw: Any) -> subprocess.CompletedProcess:
    return run([FACEKD, *args], cwd, check=check, **kw)


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], cwd, check=check)


def popen(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """Start ``cmd`` in its own process group (so the whole `dvc repro` tree can be killed)."""
    return subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=open(log, "wb"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def assert_clean_failure(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 2, no traceback, exactly one error record, naming every one of ``names``; returns it."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}, expected 2:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    records = ERROR_RECORD.findall(proc.stderr)
    assert len(records) == 1, f"expected one error record, got {len(records)}:\n{proc.stderr[-3000:]}"
    message = proc.stderr[ERROR_RECORD.search(proc.stderr).start():]
    for name in names:
        assert name in message, f"{name!r} not named in the error:\n{message}"
    return message


def write_params(repo: Path, extra: dict | None = None, base: dict | None = None) -> None:
    """params.yaml = the repository's params + TINY (+ ``extra``)."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text()) if base is None else base
    params = deep_update(deep_update(params, TINY), extra or {})
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def make_repo(repo: Path, extra: dict | None = None) -> Path:
    """A git + DVC copy of this repository's source files (no run outputs, no tests or benchmarks)
    with tiny params, committed."""
    copy_worktree(repo, skip=("tests", "bench"))
    write_params(repo, extra)
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    run(["git", "init", "-q"], repo)
    run([*git, "add", "-A"], repo)
    run([*git, "commit", "-qm", "tiny"], repo)
    return repo


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen | None = None,
             poll: float = 0.02) -> None:
    """Poll until ``predicate()``; fail naming ``what`` on timeout or when ``proc`` ended first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(poll)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 60) -> int:
    """Send ``sig`` to the process group of ``proc`` and wait until every member is gone."""
    os.killpg(proc.pid, sig)
    rc = proc.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return rc
        if time.monotonic() > deadline:
            raise AssertionError(f"process group {proc.pid} still alive {timeout} s after signal {sig}")
        time.sleep(0.02)


def mlflow_runs(db: Path, experiment: str = "facekd") -> list[Any]:
    """Every run of ``experiment`` in the SQLite store ``db``."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    found = client.get_experiment_by_name(experiment)
    return [] if found is None else client.search_runs([found.experiment_id], max_results=1000)


def clone(src: Path, dest: Path) -> Path:
    """A copy of a workspace (git, DVC cache, outputs, MLflow store): DVC sees it as up to date."""
    shutil.copytree(src, dest, symlinks=True)
    return dest


class Background:
    """A command started now in its own process group, output to a log file, awaited later."""

    def __init__(self, cmd: list[str], cwd: Path, log: Path) -> None:
        self.cmd, self.cwd, self.log = cmd, cwd, log
        self.proc = popen(cmd, cwd, log)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 600, check: bool = True) -> int:
        rc = self.proc.wait(timeout=timeout)
        if check and rc != 0:
            raise AssertionError(f"{' '.join(self.cmd)} failed ({rc}) in {self.cwd}:\n{self.output()[-4000:]}")
        return rc


@pytest.fixture(scope="session")
def validated_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny repo after `dvc repro validate`, with a migrated (empty) MLflow store.

    Creating the SQLite store takes seconds and several processes creating one at once fail, so
    it is made once here; every clone inherits it.
    """
    from mlflow.tracking import MlflowClient

    repo = make_repo(tmp_path_factory.mktemp("validated") / "repo")
    dvc("repro", "validate", cwd=repo)
    MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}").search_experiments()
    return repo


STUDENT_TARGETS = ("distill@qud", "distill@adadistill")
STEPS = 12  # TINY: 8 identities x 4 images / batch 8 = 4 steps per epoch, 3 epochs


@pytest.fixture(scope="session")
def reference_run(validated_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Background:
    """The uninterrupted reference: `dvc repro` of the teacher and two students, started in the
    background as soon as a test asks for it (callers `.wait()` when they need its results)."""
    repo = clone(validated_repo, tmp_path_factory.mktemp("reference") / "repo")
    return Background([sys.executable, "-m", "dvc", "repro", *STUDENT_TARGETS], repo, repo.parent / "repro.log")


def checkpoint_step(path: Path) -> int:
    """The step of a training checkpoint, -1 when it is absent or unreadable (mid-replace)."""
    import torch

    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return -1  # not there yet, or replaced while we opened it: look again


def load_tensors(path: Path) -> dict[str, Any]:
    """A weights file or checkpoint, loaded the safe way."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_tree(a: Any, b: Any, where: str) -> None:
    """Nested dicts/lists of tensors and numbers: equal bit for bit."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where}: tensors differ (max |diff| {(a.double() - b.double()).abs().max()})"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys differ: {set(a) ^ set(b)}"
        for key in a:
            assert_same_tree(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the kill/resume module first among the fault tests: it starts the reference pipeline,
    which then runs on the second core while the interrupted one is killed and resumed."""
    here = Path(__file__).parent
    slots = [i for i, item in enumerate(items) if here in Path(str(item.fspath)).parents]
    ordered = sorted((items[i] for i in slots), key=lambda item: "test_kill_resume" not in str(item.fspath))
    for i, item in zip(slots, ordered, strict=True):
        items[i] = item
