"""Forward+backward of every backbone on both oneDNN paths, in child processes (issue 13).

A faulty CPU kernel segfaults (no exception to catch), so a crash must become a named failing
test, never a dead test run: :mod:`tests.kernel_probe` runs the cases in children and names the
one that died. The two paths: oneDNN's default ISA for this CPU (AVX-512 where the CPU has it)
and ``ONEDNN_MAX_CPU_ISA=AVX2``, the path of the project's AVX2-only machines.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from facekd.models.registry import list_backbones
from tests.kernel_probe import probe, run_case

ROOT = Path(__file__).resolve().parents[2]
ISA_PATHS = {"default": None, "avx2": "AVX2"}


def _embedded_widths() -> list[float]:
    """The widths the embedded default trains (params.yaml), plus insightface's width 1.0."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    return sorted({params["teacher"]["backbone"]["width"], params["distill"]["student"]["width"], 1.0})


def _cases() -> list[str]:
    # width 1.0 at batch 2 (enough for BatchNorm's training statistics); narrow ones at batch 8
    return [f"{arch}:{width}:{layout}:{2 if width == 1.0 else 8}"
            for arch in list_backbones() for width in _embedded_widths() for layout in ("nchw", "cl")]


def _env(isa: str | None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "ONEDNN_MAX_CPU_ISA"}
    if isa:
        env["ONEDNN_MAX_CPU_ISA"] = isa
    return env


@pytest.mark.slow
def test_every_backbone_trains_on_both_onednn_paths():
    # one single-threaded child per path, side by side: the two paths take 2 cores, not twice the time
    with ThreadPoolExecutor(len(ISA_PATHS)) as pool:
        died = dict(zip(ISA_PATHS, pool.map(lambda isa: probe(_cases(), _env(isa)), ISA_PATHS.values())))
    report = [f"{path}: {d.case} ({d.how})" for path, cases in died.items() for d in cases]
    assert not report, "kernels died on oneDNN path " + "; ".join(report)


def test_probe_names_the_case_that_died():
    """A child that dies mid-list is named, and the cases after it still run."""
    cases = ["mfn:0.125:cl:2", "crash", "mfn:0.125:nchw:2"]
    died = probe(cases, {**_env(None), "FACEKD_PROBE_CRASH": "crash"})
    assert [d.case for d in died] == ["crash"]
    assert "SIGSEGV" in died[0].how


def test_case_runs_in_process():
    run_case("iresnet_tiny:0.25:cl:2")


def test_the_test_command_names_a_segfaulting_test_and_carries_on(tmp_path):
    """scripts/run_tests.sh (make test, CI): a segfault fails one named test; the next still runs."""
    (tmp_path / "test_crash.py").write_text(
        "import os, signal\n"
        "def test_dies():\n    os.kill(os.getpid(), signal.SIGSEGV)\n"
        "def test_after():\n    pass\n")
    proc = subprocess.run(["bash", str(ROOT / "scripts/run_tests.sh"), str(tmp_path), "-p", "no:cacheprovider",
                           f"--rootdir={tmp_path}"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "crashed while running 'test_crash.py::test_dies'" in proc.stdout
    assert "1 failed, 1 passed" in proc.stdout
