"""The tree copy behind every temp-repo test leaves a pipeline run's outputs behind (issue 19.3)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from tests.worktree import copy_worktree, source_files

# What `make run` leaves in a workspace that git does not ignore (DVC writes the .gitignore files
# for its cached outputs only) and what it does ignore, in the layout of dvc.yaml.
RUN_OUTPUTS = {
    "dvc.lock": "schema: '2.0'\n",
    "data/.gitignore": "/prepared\n/eval\n",
    "data/prepared/train.rec": "rec",
    "data/eval/synth_lfw.bin": "bin",
    "models/.gitignore": "/teacher\n",
    "models/teacher/backbone.pt": "weights",
    "metrics/train/teacher.json": "{}",
    "metrics/eval/none.json": "{}",
    "reports/validation.md": "# Data validation\n",
    "reports/leaderboard.md": "| model |\n",
    "exports/none.onnx": "onnx",
    "features/teacher/emb.npy": "npy",
    "checkpoints/teacher/last.pt": "ckpt",
    "dvc_plots/index.html": "<html>",
    "mlflow.db": "sqlite",
    ".dvc/tmp/lock": "",
}


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True)


def test_copy_keeps_sources_and_new_files_and_drops_run_outputs(tmp_path: Path) -> None:
    workspace = copy_worktree(tmp_path / "workspace")
    _git("init", "-q", cwd=workspace)
    _git("add", "-A", cwd=workspace)
    _git("commit", "-qm", "source", cwd=workspace)
    tracked = set(source_files(workspace))
    for name, text in RUN_OUTPUTS.items():
        (workspace / name).parent.mkdir(parents=True, exist_ok=True)
        (workspace / name).write_text(text)
    (workspace / "src/facekd/brand_new.py").write_text('"""Not committed yet: still source."""\n')

    copy = copy_worktree(tmp_path / "copy", root=workspace)

    copied = {str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()}
    assert copied == tracked | {"src/facekd/brand_new.py"}
    assert {"dvc.yaml", "params.yaml", ".dvcignore", "src/facekd/cli.py"} <= copied
    assert not {name for name in copied if name.split("/")[0] in {"models", "metrics", "reports"}}
    assert not set(RUN_OUTPUTS) & copied


def test_skip_leaves_out_whole_folders(tmp_path: Path) -> None:
    copy = copy_worktree(tmp_path / "copy", skip=("tests", "bench"))
    assert (copy / "dvc.yaml").is_file() and (copy / "src/facekd/cli.py").is_file()
    assert not (copy / "tests").exists() and not (copy / "bench").exists()

