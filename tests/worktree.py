"""Copying this repository's source into a temporary repo, without the outputs of a pipeline run.

After `make run` the workspace holds the run's outputs; DVC gitignores the cached ones, but not
`dvc.lock`, the uncached metrics/reports or the `.gitignore` files DVC writes beside them. A test
repo built from such a copy starts half-run (its first `dvc repro` fails with "output ... is already
tracked by SCM"), so every test that copies the tree copies through :func:`copy_worktree`.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What `dvc repro` (and the MLflow/DVC tools it drives) writes into the workspace, relative to the
# repository root: never source, whether git tracks it or not.
PIPELINE_OUTPUTS = (
    "data/prepared", "data/eval", "data/.gitignore", "models", "metrics", "plots", "reports", "exports",
    "features", "checkpoints", "dvc_plots", "dvc.lock", "mlflow.db", "mlruns", "mlartifacts",
    ".dvc/cache", ".dvc/tmp",
)


def source_files(root: Path = ROOT, skip: tuple[str, ...] = ()) -> list[str]:
    """Files git tracks plus untracked-but-not-ignored ones, minus pipeline outputs and ``skip``."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            capture_output=True, text=True, check=True).stdout.split("\0")
    left_out = (*PIPELINE_OUTPUTS, *skip)
    return [name for name in listed
            if name and not any(name == top or name.startswith(f"{top}/") for top in left_out)]


def copy_worktree(dest: Path, root: Path = ROOT, skip: tuple[str, ...] = ()) -> Path:
    """Copy :func:`source_files` of ``root`` into ``dest`` (files deleted in the workspace are left out)."""
    for name in source_files(root, skip):
        src = root / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest
