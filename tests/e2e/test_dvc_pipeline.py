"""The whole pipeline through a real `dvc repro` in a temporary git+dvc copy (tiny params).

One cold run (every stage, every method), then: a second run does nothing, a change to one
method's params reruns only that student and what depends on it, and the exported teacher used
as an ONNX-only teacher gives the same feature cache and a leaderboard of its own.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml

from facekd.config import trained_models

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
    for model in trained_models():
        assert (repo / "models" / model / "backbone.pt").is_file(), model
        metrics = json.loads((repo / "metrics/eval" / f"{model}.json").read_text())
        assert 0.0 <= metrics["synth_lfw"]["accuracy"] <= 1.0
        assert "tar@far=1e-1" in metrics["ijb"] and "tar@lowest_supported_far" in metrics["mfr"]
        ijb = metrics["ijb"]  # rank-1's interval over probe identities (the evaluate stage's)
        assert ijb["rank1_ci_low"] <= ijb["rank1"] <= ijb["rank1_ci_high"], ijb
        assert json.loads((repo / "reports/export" / f"{model}.json").read_text())["checks"]["passed"] is True
        int8 = json.loads((repo / "metrics/eval" / f"{model}.int8.json").read_text())  # evaluate_int8@model
        assert int8["precision"] == "int8" and set(int8["synth_lfw"]) == set(metrics["synth_lfw"])
        assert 0.5 < int8["cosine_to_float"]["min"] <= int8["cosine_to_float"]["median"] <= 1.0 + 1e-6
        assert (repo / "metrics/scores" / f"{model}.int8.npz").is_file()
        if model != "teacher":  # TINY's distill.seeds: 2, trained in one stage, scored on the gate metric
            assert (repo / "models" / model / "seeds/1/backbone.pt").is_file(), model
            assert set(metrics["seeds"]) == {"0", "1"} and metrics["seeds"]["0"] == metrics["synth_lfw"]["accuracy"]
    board = (repo / "reports/leaderboard.md").read_text()
    assert all(f"| {m}" in board for m in trained_models()) and "INT8 - float" in board and "INT8 cos min" in board
    assert "over seeds" in board  # no `rank`: the accuracy gate has no bootstrap interval
    registry = json.loads((repo / "reports/registry.json").read_text())
    assert registry["model"] in trained_models() and registry["model"] != "teacher"
    assert registry["int8"]["max_drop"] == 0.1 and registry["int8"]["passes_gate"] in (True, False)
    shown = json.loads(dvc("metrics", "show", "--json", cwd=repo).stdout)  # the headline only (issue 19.4)
    files = {path for rev in shown.values() for path in rev["data"]}
    assert files == {"metrics/headline.json"}, files
    (workspace,) = shown.values()
    assert set(workspace["data"]["metrics/headline.json"]["data"]) == {"gate_metric", *trained_models()}
    with sqlite3.connect(repo / "mlflow.db") as db:
        names = {r[0] for r in db.execute("select name from runs")}
    assert {"distill-qud", "distill-adadistill", "evaluate-qud.int8"} <= names


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


def test_an_experiment_reads_on_one_screen_and_compares(reproduced, monkeypatch):
    """README 'Experiments': commit the run, `dvc exp run -S distill.qud.tau=0.07`, then read it."""
    repo = reproduced
    for var in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(var, "t@t")
    run(["bash", "-c", "git add dvc.lock '*.gitignore' metrics plots reports && git commit -m \"embedded run\""], repo)
    assert "dvc.lock" not in run(["git", "status", "--porcelain"], repo).stdout  # the README's commit took it
    dvc("exp", "run", "-S", "distill.qud.tau=0.07", "-n", "tau007", cwd=repo)
    shown = json.loads(dvc("exp", "show", "--json", cwd=repo).stdout)
    rows = [r for base in shown for r in (base, *(e["revs"][0] for e in base.get("experiments") or []))]
    assert {path for r in rows for path in r["data"]["metrics"]} == {"metrics/headline.json"}  # nothing else
    headline_columns = {f"{model}.{key}" for r in rows
                        for model, values in r["data"]["metrics"]["metrics/headline.json"]["data"].items()
                        if isinstance(values, dict) for key in values}
    header = dvc("exp", "show", "--only-changed", "--csv", cwd=repo).stdout.splitlines()[0].split(",")
    changed = [h for h in header if h in headline_columns]
    assert "distill.qud.tau" in header and all(h.startswith("qud.") for h in changed), header
    monkeypatch.setenv("COLUMNS", "160")  # a terminal: the headline numbers and the param come first, in full
    screen = dvc("exp", "show", "--only-changed", "--no-pager", cwd=repo).stdout.splitlines()
    assert "distill.qud.tau" in screen[1] and all(h in screen[1] for h in changed), "\n".join(screen[:3])
    table = run(["facekd", "compare", "HEAD", "tau007"], repo).stdout.splitlines()
    assert table[0].startswith("gate metric synth_lfw.accuracy") and any(r.split()[0] == "qud" for r in table[3:])
    run(["git", "reset", "-q", "--hard", "HEAD"], repo)  # back to the committed run for the tests after this
    dvc("checkout", "-f", "-q", cwd=repo)


# A method written by a user in a package of their own: one module, named by a ``facekd.methods``
# entry point of its distribution (here a bare dist-info on PYTHONPATH, as `pip install` leaves it).
# params.yaml is the only file of the project it touches.
NEW_METHOD = '''"""``throwaway``: cosine distance to the teacher embedding, with a weight (a test method)."""
from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from facekd.config import Section
from facekd.distill.base import DistillBatch, DistillMethod
from facekd.distill.registry import register


class ThrowawayParams(Section):
    weight: float = Field(1.0, gt=0.0)


@register("throwaway", params=ThrowawayParams)
class Throwaway(DistillMethod):
    needs_labels = False
    shares_teacher_space = True

    def compute(self, batch: DistillBatch) -> dict:
        s = self.in_teacher_space(batch.student)  # (B, d_t)
        t = F.normalize(batch.teacher.float(), dim=1)  # (B, d_t)
        distance = (1.0 - (s * t).sum(dim=1)).mean()
        return {"loss": self.params.weight * distance, "distance": distance.detach()}
'''


def test_a_new_method_is_one_module_plus_its_params_section(reproduced, monkeypatch, tmp_path):
    repo = reproduced
    plugins = tmp_path / "plugins"
    (plugins / "throwaway_kd-0.1.dist-info").mkdir(parents=True)
    (plugins / "throwaway_kd-0.1.dist-info/METADATA").write_text("Metadata-Version: 2.1\nName: throwaway-kd\nVersion: 0.1\n")
    (plugins / "throwaway_kd-0.1.dist-info/entry_points.txt").write_text("[facekd.methods]\nthrowaway = throwaway_kd\n")
    (plugins / "throwaway_kd.py").write_text(NEW_METHOD)
    monkeypatch.setenv("PYTHONPATH", str(plugins))
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["distill"]["methods"].append("throwaway")
    params["distill"]["throwaway"] = {"wieght": 0.5}  # a typo is refused before anything computes
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    wrong = dvc("repro", "distill@throwaway", cwd=repo, check=False)
    assert wrong.returncode != 0 and "distill.throwaway.wieght" in wrong.stderr + wrong.stdout
    params["distill"]["throwaway"] = {"weight": 0.5}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    dvc("repro", "distill@throwaway", cwd=repo)
    meta = json.loads((repo / "models/throwaway/meta.json").read_text())
    assert (meta["method"], meta["teacher"], meta["distill_params"]) == ("throwaway", "teacher", {"weight": 0.5})
    trained = json.loads((repo / "metrics/train/throwaway.json").read_text())
    assert np.isfinite(trained["loss.distance"])
    assert run(["git", "status", "--porcelain", "--", "dvc.yaml", "src", "pipelines"], repo).stdout == ""
    run(["git", "reset", "-q", "--hard", "HEAD"], repo)  # back to the committed run for the tests after this
    dvc("checkout", "-f", "-q", cwd=repo)


# The embedded teacher, exported by the project's exporter, used as a model-zoo ONNX teacher.
ONNX_TEACHER = {
    "teacher": {"source": "onnx", "onnx": {"path": "data/raw/teacher/embedded_teacher.onnx", "sanity_images": 16}},
    "distill": {"methods": ["none", "arcdistill"], "head_sharing": []},
    "evaluate": {"models": ["teacher", "none", "arcdistill"]},
    "export": {"models": ["none", "arcdistill"]},
}


def test_an_onnx_teacher_runs_the_pipeline_and_gives_the_same_cache(reproduced):
    """Runs last: it switches the module's repo to the ONNX teacher."""
    repo = reproduced
    pytorch_cache = np.load(repo / "features/teacher/embeddings.npy")  # (N, 2, d) of the PyTorch teacher
    shutil.copy(repo / "exports/teacher.onnx", repo / "data/raw/teacher/embedded_teacher.onnx")
    set_params(repo, ONNX_TEACHER)
    dvc("repro", cwd=repo)

    assert (repo / "models/teacher/model.onnx").is_file() and not (repo / "models/teacher/backbone.pt").exists()
    onnx_cache = np.load(repo / "features/teacher/embeddings.npy")
    a, b = pytorch_cache.reshape(-1, pytorch_cache.shape[-1]), onnx_cache.reshape(-1, onnx_cache.shape[-1])
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.9999, cosine.min()
    board = (repo / "reports/leaderboard.md").read_text()
    assert all(f"| {m}" in board for m in ONNX_TEACHER["evaluate"]["models"]) and "| shkd" not in board
    imported = json.loads((repo / "metrics/train/teacher.json").read_text())
    assert imported["imported"] == 1 and imported["sanity.warnings"] == 0
    assert json.loads((repo / "models/arcdistill/meta.json").read_text())["teacher"] == "teacher"
