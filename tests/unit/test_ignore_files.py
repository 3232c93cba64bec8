"""What git leaves out of the repository (issue 19.11)."""
from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dvc_plots_output_is_gitignored() -> None:
    """`dvc plots show` writes dvc_plots/ in the workspace: a rendered page, not source."""
    assert subprocess.run(["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=ROOT).returncode == 0
