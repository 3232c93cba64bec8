"""Python bytecode never makes a stage stale (issue 19.2).

The stages' deps are source folders; Python's default bytecode writing puts __pycache__/*.pyc into
them on every import. A real git+DVC copy of the project (its own .dvcignore) with one stage on
src/facekd: after `dvc repro`, importing the code with bytecode writing on must leave it clean.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.worktree import copy_worktree

pytestmark = pytest.mark.slow


def _run(cmd: list[str], repo: Path, **env: str) -> str:
    full = {**os.environ, "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1", **env}
    full.pop("PYTHONDONTWRITEBYTECODE", None)  # Python's default: write bytecode
    proc = subprocess.run(cmd, cwd=repo, env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_importing_stage_code_leaves_dvc_status_clean(tmp_path: Path) -> None:
    repo = copy_worktree(tmp_path / "repo", skip=("tests", "bench"))
    stage = {"cmd": f"{sys.executable} -c \"open('built.txt', 'w').write('ok')\"",
             "deps": ["src/facekd"], "outs": [{"built.txt": {"cache": False}}]}
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"build": stage}}))
    _run(["git", "init", "-q"], repo)
    _run([sys.executable, "-m", "dvc", "repro"], repo)
    assert json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], repo)) == {}

    # What any `facekd ...` command does to the source tree: import the package, bytecode on.
    _run([sys.executable, "-c", "import facekd.cli, facekd.config, facekd.models"], repo, PYTHONPATH="src")
    assert list((repo / "src/facekd/models").glob("__pycache__/*.pyc")), "no bytecode written: test is moot"

    assert json.loads(_run([sys.executable, "-m", "dvc", "status", "--json"], repo)) == {}
