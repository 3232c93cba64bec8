"""Small user-facing fixes of issue 19.11 through the real console script: the configured model
sizes in `facekd models`, the methods in `distill --help` and its unknown-method error."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

FACEKD = str(Path(sys.executable).parent / "facekd")
pytestmark = pytest.mark.slow  # real `facekd` subprocesses (torch import, every backbone measured)


def _facekd(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([FACEKD, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})


def _row(output: str, heading: str) -> list[str]:
    """The table row under ``heading`` (``name params GMACs``), split."""
    lines = output.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith(heading)) + 2].split()


def test_models_shows_the_configured_teacher_and_student(tmp_path: Path) -> None:
    import torch

    from facekd.models.complexity import count_params
    from facekd.models.registry import create_backbone

    teacher = {"arch": "iresnet_tiny", "embedding_size": 64, "width": 0.25}
    student = {"arch": "mfn", "embedding_size": 32, "width": 0.5}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"teacher": {"backbone": teacher},
                                                          "distill": {"student": student}}))
    proc = _facekd("models", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    for role, cfg in (("teacher", teacher), ("student", student)):
        row = _row(proc.stdout, role)
        with torch.device("meta"):
            expected = count_params(create_backbone(cfg["arch"], embedding_size=cfg["embedding_size"],
                                                    width=cfg["width"])) / 1e6
        assert row[0] == cfg["arch"] and float(row[1]) == round(expected, 2), proc.stdout
        assert f"width {cfg['width']}, {cfg['embedding_size']}-d" in proc.stdout
    full_width = _row(proc.stdout, "every backbone")
    assert full_width[0] == "iresnet_tiny" and float(full_width[1]) > float(_row(proc.stdout, "teacher")[1])


def test_distill_help_lists_every_registered_method_and_unknown_names_do_too(tmp_path: Path) -> None:
    from facekd.distill.registry import methods as registered

    METHODS = registered()

    shown = _facekd("distill", "--help", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    methods = shown.stdout.split("Methods:")[1].split("Options:")[0]
    assert [m.strip() for m in methods.split(",")] == sorted(METHODS)
    assert "shkd" in METHODS

    wrong = _facekd("distill", "nope", cwd=tmp_path)
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert f"valid methods: {', '.join(sorted(METHODS))}" in wrong.stderr

