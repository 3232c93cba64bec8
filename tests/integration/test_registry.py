"""Registration, gated promotion and rollback against a real MLflow SQLite store.

One store for the module (its first use migrates the schema, 4-8 s); each test uses its own
registered-model name so the tests do not depend on each other's state.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from facekd.config import Params, parse_params
from facekd.errors import RegistryError
from facekd.fsio import write_json

# (model name, seed, gate metric ijb.tar@far=1e-4, params_m, export checks pass?)
STUDENTS = [("none", 0, 0.50, 0.02, True), ("feature", 1, 0.70, 0.02, True), ("logit", 2, 0.90, 0.02, False)]


def params(model_name: str, **registry) -> Params:
    return parse_params({
        "registry": {"model_name": model_name, **registry},
        "distill": {"methods": ["none", "feature", "logit"]},
        "evaluate": {"models": ["teacher", "none", "feature"]},
        "export": {"models": ["none", "feature"], "latency_runs": 2},
    })


def _student(root: Path, name: str, seed: int, gate: float, params_m: float, passes: bool) -> None:
    """What the distill, export and evaluate stages leave behind for one student."""
    from facekd.export.checks import run_checks
    from facekd.export.onnx import export_onnx
    from facekd.models.registry import create_backbone
    from facekd.models.store import save_model_dir

    torch.manual_seed(seed)
    model = create_backbone("iresnet_tiny", embedding_size=32, width=0.125).eval()
    save_model_dir(root / "models" / name, model, {"method": name, "teacher": "iresnet_tiny", "data_hash": "d1"})
    onnx_file = root / "exports" / f"{name}.onnx"
    info = export_onnx(model, onnx_file, opset=18, metadata={"arch": "iresnet_tiny", "method": name}, exporter="legacy")
    images = np.random.default_rng(seed).integers(0, 256, (8, 112, 112, 3), dtype=np.uint8)
    # A student that fails its checks: a 32-d output against a 16-d limit.
    export_params = params("x").export.model_copy(update={"max_output_dim": 32 if passes else 16})
    checks = run_checks(onnx_file, model, images, export_params)
    assert checks["passed"] is passes
    write_json(root / "reports/export" / f"{name}.json", {"model": name, "export": info, "checks": checks})
    write_json(root / "metrics/eval" / f"{name}.json", {
        "model": name, "params_m": params_m, "gmacs": 0.01,
        "synth_lfw": {"accuracy": 0.8}, "ijb": {"tar@far=1e-4": gate, "tar@far=1e-3": gate + 0.05},
    })


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        for student in STUDENTS:
            _student(root, *student)
        yield root


def client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def alias_version(name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def test_select_best_by_gate_metric_then_fewer_params(workspace):
    from facekd.mlops.evidence import select_best

    write_json("metrics/eval/adadistill.json", {"params_m": 0.01, "ijb": {"tar@far=1e-4": 0.70}})
    write_json("metrics/eval/teacher.json", {"params_m": 2.0, "ijb": {"tar@far=1e-4": 0.99}})
    assert select_best(["teacher", "none", "feature"], "ijb.tar@far=1e-4") == "feature"
    assert select_best(["teacher", "none", "feature", "adadistill"], "ijb.tar@far=1e-4") == "adadistill"
    assert select_best(["none", "feature"], "synth_lfw.accuracy") == "none"  # tie: same params, stable order
    with pytest.raises(RegistryError, match=r"metrics/eval/qud.json.*facekd evaluate qud"):
        select_best(["none", "qud"], "ijb.tar@far=1e-4")
    with pytest.raises(RegistryError, match="no student"):
        select_best(["teacher"], "ijb.tar@far=1e-4")


def test_register_twice_is_one_version(workspace):
    from facekd.mlops.model_registry import register_candidate
    from facekd.stages import register as register_stage

    p = params("reg-idem")
    first = register_stage.run(p)  # the best exported and evaluated student: feature
    again = register_candidate(p, "feature")
    assert first["model"] == "feature" and not first["reused"]
    assert again["reused"] and again["version"] == first["version"]
    assert len(client().search_model_versions("name='reg-idem'")) == 1
    assert alias_version("reg-idem", "candidate") == first["version"]
    assert json.loads(Path("reports/registry.json").read_text()) == {k: v for k, v in again.items() if k != "reused"}
    assert first["selection"]["model"] == "feature" and "highest ijb.tar@far=1e-4" in first["selection"]["reason"]
    sha = hashlib.sha256(Path("exports/feature.onnx").read_bytes()).hexdigest()
    version = client().get_model_version("reg-idem", first["version"])
    assert version.tags["onnx_sha256"] == sha == first["onnx_sha256"]
    assert version.tags["export_checks_passed"] == "true" and float(version.tags["gate_value"]) == 0.70
    run_files = {f.path for f in client().list_artifacts(first["run_id"])}
    assert {"model", "model_card", "pytorch", "export"} <= run_files
    card_files = {f.path for f in client().list_artifacts(first["run_id"], "model_card")}
    assert card_files == {"model_card/model_card.json", "model_card/model_card.md"}
    assert client().get_run(first["run_id"]).info.status == "FINISHED"


def test_gate_promotes_better_keeps_worse_and_rolls_back(workspace):
    from facekd.mlops.model_registry import register_candidate
    from facekd.stages.promote import promote, rollback

    p = params("reg-gate")
    v_none = register_candidate(p, "none")["version"]
    first = promote(p)
    assert first["promoted"] and first["champion"] == v_none and "no champion yet" in first["reason"]

    v_feature = register_candidate(p, "feature")["version"]
    better = promote(p)
    assert better["promoted"] and alias_version("reg-gate", "champion") == v_feature
    tags = client().get_model_version("reg-gate", v_feature).tags
    assert tags["previous_champion"] == v_none and abs(float(tags["metric_delta"]) - 0.20) < 1e-9
    assert tags["promoted_at"]

    assert register_candidate(p, "none")["version"] == v_none  # the worse model is the candidate again
    worse = promote(p)
    assert not worse["promoted"] and "does not beat" in worse["reason"]
    assert alias_version("reg-gate", "champion") == v_feature

    back = rollback(p)
    assert back["champion_before"] == v_feature and back["champion"] == v_none
    assert alias_version("reg-gate", "champion") == v_none
    with pytest.raises(RegistryError, match="first champion"):
        rollback(p)
    assert alias_version("reg-gate", "champion") == v_none

    register_candidate(p, "feature")  # same file again: the rolled-back version is not re-promoted
    blocked = promote(p)
    assert not blocked["promoted"] and "rolled back" in blocked["reason"]
    history = json.loads(client().get_registered_model("reg-gate").tags["champion_history"])
    assert [e["action"] for e in history] == ["promote", "promote", "rollback"]


def test_min_improvement_is_a_strict_margin(workspace):
    from facekd.mlops.model_registry import register_candidate
    from facekd.stages.promote import promote

    p = params("reg-margin", min_improvement=0.3)
    v_none = register_candidate(p, "none")["version"]
    assert promote(p)["promoted"]
    register_candidate(p, "feature")
    kept = promote(p)  # +0.20 is not > 0.3
    assert not kept["promoted"] and "needs > 0.3" in kept["reason"] and kept["champion"] == v_none


def test_failed_export_checks_are_never_promoted(workspace):
    from facekd.mlops.model_registry import register_candidate
    from facekd.stages.promote import promote

    p = params("reg-bad")
    v_none = register_candidate(p, "none")["version"]
    promote(p)
    bad = register_candidate(p, "logit")  # best metric (0.90) but its checks failed
    assert not bad["export_checks_passed"]
    with pytest.raises(RegistryError, match=r"failed its export checks \(mfr rule output_dim.*champion was not changed"):
        promote(p)
    assert alias_version("reg-bad", "champion") == v_none


def test_missing_metrics_and_unknown_model_are_clear_errors(workspace):
    from facekd.mlops.model_registry import promote, register_candidate

    for suffix in (".onnx",):
        shutil.copy(f"exports/none{suffix}", f"exports/ghost{suffix}")
    shutil.copy("reports/export/none.json", "reports/export/ghost.json")
    shutil.copytree("models/none", "models/ghost", dirs_exist_ok=True)
    with pytest.raises(RegistryError, match=r"metrics/eval/ghost.json: no evaluation metrics for model 'ghost'"):
        register_candidate(params("reg-missing"), "ghost")
    write_json("metrics/eval/ghost.json", {"synth_lfw": {"accuracy": 0.8}, "ijb": {"tar@far=1e-3": None}})
    with pytest.raises(RegistryError, match=r"metrics/eval/ghost.json: gate metric 'ijb.tar@far=1e-4' of model 'ghost' is missing"):
        register_candidate(params("reg-missing"), "ghost")
    with pytest.raises(RegistryError, match="is null"):
        register_candidate(params("reg-missing", gate_metric="ijb.tar@far=1e-3"), "ghost")
    with pytest.raises(RegistryError, match=r"exports/qud.onnx.*facekd export qud"):
        register_candidate(params("reg-missing"), "qud")
    with pytest.raises(RegistryError, match="registered model 'no-such-model' not found"):
        promote(params("no-such-model"))


def test_unreachable_mlflow_fails_fast_and_clearly(workspace, monkeypatch):
    import os

    from facekd.mlops.model_registry import promote, register_candidate

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    start = time.perf_counter()
    with pytest.raises(RegistryError, match=r"cannot reach MLflow at http://127.0.0.1:9 .*champion was not changed"):
        promote(params("reg-gate"))
    with pytest.raises(RegistryError, match="cannot reach MLflow"):
        register_candidate(params("reg-gate"), "none")
    assert time.perf_counter() - start < 15
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ  # our fast-fail setting is not left behind


def test_champion_loads_back_with_the_exported_embeddings(workspace):
    from facekd.mlops.champion import load_champion
    from facekd.mlops.model_registry import register_candidate
    from facekd.stages.promote import promote

    p = params("reg-load")
    version = register_candidate(p, "feature")["version"]
    promote(p)
    champion = load_champion(p)
    assert champion.version == version
    images = np.random.default_rng(7).integers(0, 256, (5, 112, 112, 3), dtype=np.uint8)
    session = onnxruntime.InferenceSession("exports/feature.onnx", providers=["CPUExecutionProvider"])
    from facekd.export.onnx import to_input

    expected = session.run(None, {"data": to_input(images)})[0]
    np.testing.assert_allclose(champion(images), expected, rtol=0, atol=1e-6)
