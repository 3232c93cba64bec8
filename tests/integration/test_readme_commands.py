"""Every command in the README's ```bash blocks, run exactly as written from a fresh shell.

A user's clone is a temp copy of the source (tests/e2e's tiny repo: tests/worktree.py's copy,
committed) with the virtualenv `make run` creates linked in; the blocks run top to bottom in one
bash session with no virtualenv on PATH, as a reader types them into a new terminal. Commands that
are too slow here or need a finished run are in SKIPPED, each with its reason and the test that
covers it; in their place the session checks that their program resolves on the PATH the README
has set up by then and, for those that run DVC stages, that the stages' own `facekd` does too
(`dvc exp run` runs stage commands with the caller's PATH: the exit-127 failure of issue 19).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import make_tiny_repo
from tests.worktree import ROOT

NEEDS_RUN = "needs a finished `make run` (its data/eval and a promoted champion)"
SKIPPED = {
    "make run": "the whole pipeline, minutes; tests/e2e runs dvc repro on a tiny copy",
    "make test": "this test suite itself",
    "make run-onnx-teacher": "the whole pipeline twice over, minutes; tests/e2e/test_dvc_pipeline.py runs the ONNX-teacher "
                             "pipeline on a tiny copy",
    "git checkout params.yaml": "follows make run-onnx-teacher (skipped); params.yaml is unchanged here",
    "dvc exp run -S distill.qud.tau=0.07": "retrains a student and all after it, minutes; tests/e2e/test_dvc_pipeline.py "
                                           "checks that this change stales only distill@qud's branch",
    "git add dvc.lock '*.gitignore' metrics plots reports && git commit -m \"embedded run\"":
        f"{NEEDS_RUN}; tests/e2e/test_dvc_pipeline.py commits the tiny run with this command",
    "facekd compare HEAD": f"{NEEDS_RUN}; tests/integration/test_experiments_compare.py, tests/e2e",
    "facekd plots": f"{NEEDS_RUN}; tests/integration/test_dvc_plots.py",
    "facekd promote": f"{NEEDS_RUN}; tests/integration/test_registry.py",
    "facekd rollback": f"{NEEDS_RUN}; tests/integration/test_registry.py",
    "facekd verify data/eval/mfr/gallery/00000/0.jpg data/eval/mfr/gallery/00000/1.jpg":
        f"{NEEDS_RUN}; tests/integration/test_use_model.py",
    "facekd embed data/eval/mfr/gallery/00000/*.jpg --out gallery.npy":
        f"{NEEDS_RUN}; tests/integration/test_use_model.py",
    "python -m pipelines.reproduce": "the whole pipeline under Prefect; tests/integration/test_pipelines.py",
    "python -m pipelines.retrain": "the whole pipeline under Prefect; tests/integration/test_retrain_real.py",
    "python -m pipelines.promote": f"{NEEDS_RUN}; tests/integration/test_pipelines.py",
    "prefect server start --host 127.0.0.1 &": "a server that runs until stopped; tests/integration/test_pipelines_servers.py",
    "python -m pipelines.serve": "serves the schedule until stopped; tests/integration/test_pipelines_servers.py",
}
# Commands whose DVC stages run `facekd` from the caller's PATH.
RUNS_STAGES = ("dvc repro", "dvc exp run")


def readme_commands(text: str) -> list[str]:
    """The command lines of every ```bash block, in order (comment-only and blank lines dropped)."""
    blocks = re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)
    lines = [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def without_comment(command: str) -> str:
    return command.split(" #", 1)[0].strip()


def stand_in(command: str) -> str:
    """What a skipped command checks instead: its program, and `facekd` where it runs stages."""
    key = without_comment(command)
    programs = [shlex.split(key)[0]] + (["facekd"] if key.startswith(RUNS_STAGES) else [])
    return "; ".join(f"command -v {p} >/dev/null || {{ echo {shlex.quote(f'{key}: {p}: command not found')} >&2; "
                     "exit 127; }" for p in programs)


def session_script(commands: list[str]) -> str:
    """One bash session: each command (or its stand-in), stopping at the first failure, named."""
    lines = []
    for command in commands:
        skipped = without_comment(command) in SKIPPED
        lines.append(stand_in(command) if skipped else command)
        lines.append(f"rc=$?; [ $rc -eq 0 ] || {{ echo {shlex.quote(f'README command failed: {command}')} "
                     "\"(exit $rc)\" >&2; exit $rc; }")
    return "\n".join(lines) + "\n"


def fresh_shell_env() -> dict[str, str]:
    """This environment as a new terminal has it: no virtualenv active, none on PATH."""
    path = [p for p in os.environ["PATH"].split(os.pathsep) if p and not (Path(p) / "activate").is_file()]
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    return {**env, "PATH": os.pathsep.join(path), "DVC_NO_ANALYTICS": "1"}


def test_allow_list_names_only_readme_commands_and_says_why():
    commands = {without_comment(c) for c in readme_commands((ROOT / "README.md").read_text())}
    assert set(SKIPPED) <= commands, f"SKIPPED lists commands the README no longer has: {set(SKIPPED) - commands}"
    assert all(reason.strip() for reason in SKIPPED.values())
    ran = commands - set(SKIPPED)
    assert {"source .venv/bin/activate", "facekd --help", "dvc dag"} <= ran
    assert any(c.startswith("dvc exp show --only-changed") for c in ran)


def test_readme_is_consistent_about_the_virtualenv():
    commands = readme_commands((ROOT / "README.md").read_text())
    mixed = [c for c in commands if ".venv/bin/" in c and c != "source .venv/bin/activate"]
    assert not mixed, f"after `source .venv/bin/activate`, write tools without .venv/bin/: {mixed}"


@pytest.mark.slow  # a temp clone, dvc and facekd subprocesses
def test_readme_commands_run_as_written_from_a_fresh_shell(tmp_path):
    repo = make_tiny_repo(tmp_path / "clone")
    (repo / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)  # what `make run` created
    script = session_script(readme_commands((ROOT / "README.md").read_text()))
    done = subprocess.run(["bash", "--noprofile", "--norc", "-c", script], cwd=repo, env=fresh_shell_env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{done.stderr[-3000:]}\n--- stdout ---\n{done.stdout[-2000:]}"
    assert "prepare" in done.stdout and "register" in done.stdout  # dvc dag drew the pipeline
