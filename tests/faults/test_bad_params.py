"""Property 4: bad params are refused before any compute.

Each case writes one bad value into an otherwise valid params.yaml and runs the stage that would
compute the most with it. The command must exit 2 within seconds (no model built, no data read),
name the key and the valid choices, and leave the workspace exactly as it was.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.conftest import assert_clean_failure, clone, dvc, facekd, write_params

pytestmark = pytest.mark.slow

# Loading params and failing takes ~0.5 s; a stage that got as far as importing torch and reading
# data takes several. A generous bound that still catches "refused only after building the model".
FAST_S = 6.0

CASES = {
    "unknown-key": ({"distill": {"qud": {"tauu": 0.1}}}, ["train-teacher"],
                    ["distill.qud.tauu", "allowed keys here: margin, queue_size, tau"]),
    "wrong-type": ({"teacher": {"optim": {"lr": "fast"}}}, ["train-teacher"],
                   ["teacher.optim.lr", "valid number", "'fast'"]),
    "unknown-method": ({"distill": {"methods": ["qud", "fancykd"]}}, ["distill", "qud"],
                       ["fancykd", "distill.methods", "valid:", "adadistill"]),
    "unknown-backbone": ({"distill": {"student": {"arch": "resnet9000"}}}, ["distill", "qud"],
                         ["distill.student.arch", "resnet9000", "valid:", "mfn", "iresnet50"]),
    "qud-queue-vs-batch": ({"distill": {"qud": {"queue_size": 20}}}, ["distill", "qud"],
                           ["distill.qud.queue_size=20", "distill.optim.batch_size=8", "multiple"]),
    "unknown-eval-model": ({"evaluate": {"models": ["teacher", "qud", "resnet"]}}, ["evaluate", "resnet"],
                           ["evaluate.models", "resnet", "valid:", "adadistill"]),
    "eval-set-missing": ({"data": {"source": "rec", "path": "data/real/train.rec", "eval_path": "data/real/evalsets"}},
                         ["prepare"], ["data/real/evalsets", "data.eval_path"]),
    "rec-missing": ({"data": {"source": "rec", "path": "data/real/nothere.rec"}}, ["prepare"],
                    ["data/real/nothere.rec", "data.path"]),
}


def _snapshot(root: Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_refused_before_compute(tmp_path: Path, case: str) -> None:
    extra, command, expected = CASES[case]
    write_params(tmp_path, extra)
    real = tmp_path / "data/real"
    real.mkdir(parents=True)
    (real / "train.rec").write_bytes(b"")  # exists (for eval-set-missing); never read
    before = _snapshot(tmp_path)
    started = time.monotonic()
    proc = facekd(*command, cwd=tmp_path)
    elapsed = time.monotonic() - started
    assert_clean_failure(proc, *expected)
    assert elapsed < FAST_S, f"refusing took {elapsed:.1f} s: the stage computed before checking its params"
    assert _snapshot(tmp_path) == before, "a refused command changed the workspace"


def test_dvc_repro_refuses_unknown_key_before_any_stage_computes(validated_repo: Path, tmp_path: Path) -> None:
    repo = clone(validated_repo, tmp_path / "repo")
    write_params(repo, {"teacher": {"optim": {"lrr": 0.1}}})
    proc = dvc("repro", "train_teacher", cwd=repo, check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "teacher.optim.lrr" in output and "Traceback" not in output, output[-3000:]
    assert not (repo / "models").exists() and not (repo / "checkpoints").exists()
