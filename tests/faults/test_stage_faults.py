"""Properties 2, 5 and 8 on the real `facekd train-teacher` stage of a tiny validated repo:
SIGTERM, a numerical fault, and a full / read-only disk under the checkpoints and metrics.

Disk full is a real ENOSPC: a tmpfs mounted over `checkpoints/teacher` (needs root; skipped
otherwise). Read-only is `chattr +i` on the folder (root ignores chmod) or chmod 0o555 when not
root. Each scenario ends by resuming to the end and comparing the teacher with the
uninterrupted reference run, so a fault that corrupted the saved state would show up there.
"""
from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.conftest import (FACEKD, STEPS, Background, assert_clean_failure, assert_same_tree, checkpoint_step,
                                   clone, dvc, facekd, load_tensors, mlflow_runs, wait_for, write_params)

pytestmark = pytest.mark.slow


def _teacher_run(ws: Path):
    runs = [r for r in mlflow_runs(ws / "mlflow.db") if r.info.run_name == "teacher"]
    assert len(runs) == 1, f"expected one MLflow run for the teacher, got {[r.info.status for r in runs]}"
    return runs[0]


def _same_teacher_as_reference(ws: Path, reference: Path) -> None:
    for name in ("backbone.pt", "head.pt"):
        assert_same_tree(load_tensors(ws / "models/teacher" / name), load_tensors(reference / "models/teacher" / name),
                          f"models/teacher/{name}")


@pytest.fixture
def ws(validated_repo: Path, tmp_path: Path) -> Path:
    return clone(validated_repo, tmp_path / "repo")


# ---- property 2: SIGTERM ------------------------------------------------------------------------


def test_sigterm_saves_checkpoint_ends_run_killed_and_resumes(ws: Path, reference_run: Background) -> None:
    seed = int(os.environ.get("FACEKD_FAULT_SEED", time.time_ns() % 10**6))
    at = random.Random(seed).randint(2, STEPS - 3)
    log = ws.parent / "sigterm.log"
    bg = Background([FACEKD, "train-teacher"], ws, log)
    wait_for(lambda: checkpoint_step(ws / "checkpoints/teacher/last.pt") >= at, 300,
             f"step {at} (FACEKD_FAULT_SEED={seed})", bg.proc, poll=0.01)
    os.kill(bg.proc.pid, signal.SIGTERM)
    rc = bg.wait(check=False)
    out = bg.output()
    assert rc == 128 + signal.SIGTERM, out[-3000:]
    assert "received SIGTERM" in out and "Traceback" not in out, out[-3000:]
    state = load_tensors(ws / "checkpoints/teacher/last.pt")
    assert at <= state["step"] < STEPS, f"checkpoint at step {state['step']} (SIGTERM after step {at})"
    run = _teacher_run(ws)
    assert run.info.status == "KILLED" and run.info.run_id == state["mlflow_run_id"]

    resumed = dvc("repro", "train_teacher", cwd=ws)
    assert f"resumed checkpoints/teacher from step {state['step']} of {STEPS}" in resumed.stdout + resumed.stderr
    run = _teacher_run(ws)
    assert run.info.status == "FINISHED" and run.info.run_id == state["mlflow_run_id"]
    reference_run.wait()
    _same_teacher_as_reference(ws, reference_run.cwd)


# ---- property 5: numerical fault ----------------------------------------------------------------


def test_injected_nan_stops_naming_step_and_part(ws: Path) -> None:
    write_params(ws, {"teacher": {"optim": {"lr": 1.0e6}}})
    message = assert_clean_failure(facekd("train-teacher", cwd=ws), "teacher", "non-finite")
    # "non-finite loss at step 7 (epoch 2): arcface=nan" or "non-finite gradient norm at step 3 (grad_norm=nan)"
    found = re.search(r"non-finite (loss|gradient norm) at step (\d+).*?(\w+)=(nan|inf|-inf)", message)
    assert found, message
    step = int(found.group(2))
    last = load_tensors(ws / "checkpoints/teacher/last.pt")
    assert last["step"] == step - 1, f"fault at step {step}, but a checkpoint of step {last['step']} exists"
    for value in last["model"].values():
        assert value.isfinite().all(), "a checkpoint holds non-finite weights"
    assert _teacher_run(ws).info.status == "FAILED"
    assert not (ws / "models/teacher").exists() and not (ws / "metrics/train/teacher.json").exists()


# ---- property 8: full disk, read-only folders ---------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[None]:
    """A real filesystem of ``size`` bytes mounted at ``path`` (root only)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill up here ({mounted.stderr.strip()})")
    try:
        yield
    finally:
        subprocess.run(["umount", str(path)], check=True)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """``path`` (a folder) made unwritable even for root: immutable as root, mode 0o555 otherwise."""
    root = os.geteuid() == 0
    cmd = ["chattr", "+i", str(path)] if root else ["chmod", "0555", str(path)]
    if subprocess.run(cmd, capture_output=True, check=False).returncode != 0:
        pytest.skip(f"cannot make {path} read-only here ({' '.join(cmd)} failed)")
    try:
        probe = path / ".probe"
        with contextlib.suppress(OSError):
            probe.touch()
            probe.unlink()
            pytest.skip(f"{path} is still writable after {' '.join(cmd)}")
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)] if root else ["chmod", "0755", str(path)], check=True)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_full_disk_and_read_only_folder_keep_previous_files(ws: Path, reference_run: Background) -> None:
    ckpt_dir = ws / "checkpoints/teacher"
    wait_for(lambda: (reference_run.cwd / "checkpoints/teacher/last.pt").exists(), 300, "the reference checkpoint")
    size = (reference_run.cwd / "checkpoints/teacher/last.pt").stat().st_size
    saved = ws.parent / "saved"

    # 1. Room for two checkpoints and half a third: the save after step 2 hits ENOSPC.
    with tmpfs(ckpt_dir, int(2.5 * size)):
        message = assert_clean_failure(facekd("train-teacher", cwd=ws), "checkpoints/teacher/last.pt")
        assert "write failed" in message and "is it full?" in message, message
        assert checkpoint_step(ckpt_dir / "last.pt") == 2 and checkpoint_step(ckpt_dir / "prev.pt") == 1
        assert _leftovers(ckpt_dir) == [], "a half-written temporary file was left behind"
        shutil.copytree(ckpt_dir, saved)
    assert _teacher_run(ws).info.status == "FAILED"
    shutil.copytree(saved, ckpt_dir, dirs_exist_ok=True)

    # 2. Metrics folder read-only (the same atomic write guards checkpoints): training completes, the metrics write fails, the old file stays.
    metrics = ws / "metrics/train"
    metrics.mkdir(parents=True)
    (metrics / "teacher.json").write_text('{"old": true}\n')
    with read_only(metrics):
        assert_clean_failure(facekd("train-teacher", cwd=ws), "metrics/train/teacher.json")
    assert json.loads((metrics / "teacher.json").read_text()) == {"old": True}
    assert _leftovers(metrics) == []

    # Through all of it the saved state stayed sound: the teacher equals the uninterrupted one.
    reference_run.wait()
    _same_teacher_as_reference(ws, reference_run.cwd)
