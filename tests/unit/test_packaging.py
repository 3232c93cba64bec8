"""The install path is one script shared by the README commands, CI and the Docker image."""
from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _read(name: str) -> str:
    return (ROOT / name).read_text()


def test_ci_runs_the_readme_test_command():
    assert "make test" in _read("README.md")
    assert "make run" in _read("README.md")
    assert re.search(r"^make test$", _read(".ci/run"), re.M)


def test_make_targets_bootstrap_first():
    makefile = _read("Makefile")
    assert re.search(r"^run: setup$", makefile, re.M) and re.search(r"^test: setup$", makefile, re.M)
    assert "bash scripts/bootstrap.sh" in makefile
    assert "dvc repro" in makefile


def test_docker_image_installs_like_the_readme():
    dockerfile = _read("Dockerfile")
    assert "scripts/bootstrap.sh" in dockerfile
    bootstrap = _read("scripts/bootstrap.sh")
    for needed in re.findall(r"(requirements\.\w+|pyproject\.toml)", bootstrap):
        assert needed in dockerfile, f"Dockerfile does not copy {needed}, which bootstrap.sh reads"
    assert 'ENTRYPOINT ["facekd"]' in dockerfile
    ignored = _read(".dockerignore").split()
    for heavy in (".venv", "checkpoints", "mlruns", "data/prepared", "models"):
        assert heavy in ignored


def test_required_pins():
    reqs = _read("requirements.txt")
    assert "torch==2.13.0" in reqs
    assert "fastapi<0.151" in reqs and "sqlalchemy<2.1" in reqs
    assert "torchvision" not in reqs


def test_empty_test_run_fails():
    script = _read("scripts/run_tests.sh")
    assert '"$rc" = 5' in script and "exit 1" in script
