"""The whole pipeline through a real `dvc repro` in a temporary git+dvc copy (tiny params).

One cold run (every stage, every method), then: a second run does nothing, and a change to one
method's params reruns only that student and what depends on it.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from facekd.config import ALL_MODELS

from .conftest import dvc, make_tiny_repo, run, set_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory) -> Path:
    repo = make_tiny_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    dvc("repro", cwd=repo)
    return repo


def test_cold_repro_builds_every_artifact(reproduced):
    repo = reproduced
    assert json.loads((repo / "reports/validation.json").read_text())["success"] is True
    meta = json.loads((repo / "data/prepared/meta.json").read_text())
    assert (meta["num_classes"], meta["num_images"]) == (8, 32)
    for model in ALL_MODELS:
        assert (repo / "models" / model / "backbone.pt").is_file(), model
        metrics = json.loads((repo / "metrics/eval" / f"{model}.json").read_text())
        assert 0.0 <= metrics["synth_lfw"]["accuracy"] <= 1.0
        assert "tar@far=1e-1" in metrics["ijb"] and "tar@lowest_supported_far" in metrics["mfr"]
        assert json.loads((repo / "reports/export" / f"{model}.json").read_text())["checks"]["passed"] is True
    board = (repo / "reports/leaderboard.md").read_text()
    assert all(f"| {m}" in board for m in ALL_MODELS)
    registry = json.loads((repo / "reports/registry.json").read_text())
    assert registry["model"] in ALL_MODELS and registry["model"] != "teacher"
    shown = dvc("metrics", "show", "--json", cwd=repo).stdout
    assert "synth_cpfp" in shown and "tar@far=1e-1" in shown
    with sqlite3.connect(repo / "mlflow.db") as db:
        names = {r[0] for r in db.execute("select name from runs")}
    assert {"distill-qud", "distill-adadistill"} <= names


def test_second_repro_does_nothing_and_one_method_change_reruns_only_it(reproduced):
    repo = reproduced
    again = dvc("repro", cwd=repo)
    assert "Running stage" not in again.stdout
    set_params(repo, {"distill": {"qud": {"tau": 0.07}}})
    changed = set(json.loads(dvc("status", "--json", cwd=repo).stdout))
    assert "distill@qud" in changed
    assert not changed & {"distill@adadistill", "distill@none", "train_teacher", "teacher_features", "prepare"}
    run(["git", "checkout", "params.yaml"], repo)


def test_summary_prints_the_leaderboard(reproduced):
    out = run(["facekd", "summary"], reproduced).stdout
    assert "Leaderboard" in out and "gap closed" in out
