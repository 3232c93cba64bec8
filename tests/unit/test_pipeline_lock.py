"""The flow-level repository lock: a second reproducing flow fails at once, a dead holder frees it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.dvcstages import CommandFailed, pipeline_lock

HOLD = """
import sys
from pathlib import Path
from pipelines.dvcstages import pipeline_lock
with pipeline_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def _holder(repo: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(repo)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_holder_fails_naming_the_first_and_a_killed_holder_frees_the_lock(tmp_path: Path) -> None:
    holder = _holder(tmp_path)
    try:
        with pytest.raises(CommandFailed, match=rf"^pipeline busy: .*held by pid {holder.pid}\)"):
            with pipeline_lock(tmp_path):
                pytest.fail("the lock was taken twice")
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    with pipeline_lock(tmp_path):  # the kernel dropped the dead holder's lock
        assert (tmp_path / ".dvc/tmp/facekd-flow.lock").read_text() == f"pid {os.getpid()}\n"


def test_lock_is_released_on_error_and_not_reentrant(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with pipeline_lock(tmp_path):
            with pytest.raises(CommandFailed, match="pipeline busy"):
                with pipeline_lock(tmp_path):
                    pass
            raise RuntimeError("stage failed")
    with pipeline_lock(tmp_path):
        pass
