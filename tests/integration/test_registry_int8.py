"""The INT8 copy in the registry: registered in its float parent's version (second MLflow model
``int8/``), gated by ``registry.max_int8_drop`` on promotion, loaded back (real MLflow SQLite store,
real export stage and onnxruntime)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from facekd.config import Params, parse_params
from facekd.evaluation.metrics import SortedScores
from facekd.evaluation.uncertainty import PairScores
from facekd.fsio import write_json
from tests.integration.test_quantize import _workspace

pytestmark = pytest.mark.slow
MODEL = "feature"  # what test_quantize's workspace trains
FAR = 1e-3


def params(name: str, max_drop: float | None, **extra) -> Params:
    return parse_params({
        "registry": {"model_name": name, "gate_metric": "ijb.tar@far=1e-3", "max_int8_drop": max_drop},
        "evaluate": {"models": [MODEL], "bootstrap": {"resamples": 200}},
        "export": {"models": [MODEL], "latency_runs": 2, "int8": {"enabled": True, "calibration_images": 32}},
        **extra,
    })


def _scores(root: Path, name: str, scores: np.ndarray, subjects: np.ndarray, labels: np.ndarray) -> float:
    arrays: dict = {}
    PairScores(subjects, labels, scores.astype(np.float32)).save(arrays, "ijb")
    (root / "metrics/scores").mkdir(parents=True, exist_ok=True)
    np.savez(root / "metrics/scores" / f"{name}.npz", **arrays)
    return SortedScores.from_scores(scores, labels).tar_at_far([FAR])[FAR]


def _evaluations(root: Path, int8_shift: float) -> tuple[float, float]:
    """metrics/eval + metrics/scores of the float model and its INT8 copy (genuine scores moved by
    ``int8_shift``), as the evaluate stages write them; returns (float, INT8) TAR@FAR=1e-3."""
    import hashlib

    rng = np.random.default_rng(0)
    genuine = np.stack([np.repeat(np.arange(100), 2)] * 2, axis=1)
    impostor = rng.integers(0, 100, (6000, 2))
    impostor = impostor[impostor[:, 0] != impostor[:, 1]]
    subjects = np.concatenate([genuine, impostor])
    labels = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))].astype(np.int8)
    base = labels * (2.5 + rng.normal(0, 0.7, 100)[subjects[:, 0]]) + rng.normal(size=len(labels))
    float_tar = _scores(root, MODEL, base, subjects, labels)
    int8_tar = _scores(root, f"{MODEL}.int8", base + int8_shift * labels, subjects, labels)
    common = {"model": MODEL, "params_m": 0.03, "gmacs": 0.005, "synth_lfw": {"accuracy": 0.9}}
    write_json(root / f"metrics/eval/{MODEL}.json", {**common, "ijb": {"tar@far=1e-3": float_tar}})
    sha = hashlib.sha256((root / f"exports/{MODEL}.int8.onnx").read_bytes()).hexdigest()
    write_json(root / f"metrics/eval/{MODEL}.int8.json", {
        **common, "precision": "int8", "onnx_sha256": sha, "ijb": {"tar@far=1e-3": int8_tar},
        "cosine_to_float": {"reference": f"exports/{MODEL}.onnx", "min": 0.991, "median": 0.9993, "images": 4800}})
    return float_tar, int8_tar


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from facekd.stages import export

    root = tmp_path_factory.mktemp("registry-int8")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        _workspace(root)
        export.run(params("x", None), MODEL, exporter="legacy")
        yield root


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def test_int8_copy_is_registered_in_its_float_version_and_loads_back(workspace):
    from facekd.export.onnx import to_input
    from facekd.mlops.champion import load_champion
    from facekd.mlops.model_registry import register_candidate
    from facekd.stages.promote import promote

    float_tar, int8_tar = _evaluations(workspace, -0.6)
    p = params("int8-reg", 1.0)
    result = register_candidate(p, MODEL)
    int8 = result["int8"]
    assert int8["drop"] == pytest.approx(float_tar - int8_tar) and int8["drop"] > 0
    assert int8["drop_low"] <= int8["drop"] <= int8["drop_high"] and int8["passes_gate"] is True
    assert json.loads(Path("reports/registry.json").read_text())["int8"] == int8
    version = _client().get_model_version("int8-reg", result["version"])
    assert version.tags["int8_onnx_sha256"] == int8["onnx_sha256"] and version.tags["int8_artifact"] == "int8"
    assert float(version.tags["int8.eval.ijb.tar_at_far_1e-3"]) == int8_tar
    assert float(version.tags["int8_cosine_min"]) == 0.991 and "int8.eval.cosine_to_float.min" not in version.tags
    files = {f.path for f in _client().list_artifacts(result["run_id"], "int8")}
    assert {"int8/MLmodel", "int8/model.onnx"} <= files
    card = Path("reports/model_card.md").read_text()
    assert "## INT8" in card
    assert f"| gate: ijb.tar@far=1e-3 (%) | {100 * float_tar:.2f} | {100 * int8_tar:.2f} |" in card
    assert "calibration: 32 training images of `data/prepared/train.rec`" in card
    assert "INT8 copy (artifact int8/" in version.description

    assert promote(p)["promoted"]
    images = np.random.default_rng(7).integers(0, 256, (4, 112, 112, 3), dtype=np.uint8)
    session = onnxruntime.InferenceSession(f"exports/{MODEL}.int8.onnx", providers=["CPUExecutionProvider"])
    expected = session.run(None, {"data": to_input(images)})[0]
    np.testing.assert_allclose(load_champion(p, int8=True)(images), expected, rtol=0, atol=1e-6)
    assert load_champion(p).tags["int8_onnx_sha256"] == int8["onnx_sha256"]


def test_promote_refuses_an_int8_drop_beyond_the_limit_and_records_why(workspace):
    from facekd.mlops.model_registry import register_candidate
    from facekd.stages.promote import promote

    float_tar, int8_tar = _evaluations(workspace, -0.6)
    drop = float_tar - int8_tar
    strict = params("int8-gate", round(drop / 2, 6))
    version = register_candidate(strict, MODEL)["version"]
    assert json.loads(Path("reports/registry.json").read_text())["int8"]["passes_gate"] is False
    refused = promote(strict)
    assert not refused["promoted"] and refused["champion"] is None and "refused" in refused["reason"]
    assert refused["int8_drop"] == pytest.approx(drop) and "registry.max_int8_drop" in refused["reason"]
    tags = _client().get_model_version("int8-gate", version).tags
    assert tags["int8_gate"].split(": ", 1)[1].startswith("refused") and "refused" in tags["last_gate_decision"]
    lenient = params("int8-gate", round(drop * 2, 6))
    assert promote(lenient)["promoted"]
    assert "passed" in _client().get_model_version("int8-gate", version).tags["int8_gate"]


def test_a_new_int8_file_is_a_new_version(workspace):
    from facekd.mlops.model_registry import register_candidate
    from facekd.stages import export

    _evaluations(workspace, 0.0)
    first = register_candidate(params("int8-new", None), MODEL)
    assert register_candidate(params("int8-new", None), MODEL)["reused"]
    other = params("x", None).export.int8.model_copy(update={"keep_float": ("first_conv", "embedding")})
    export.run(params("x", None).model_copy(update={"export": params("x", None).export.model_copy(
        update={"int8": other})}), MODEL, exporter="legacy")
    _evaluations(workspace, 0.0)
    second = register_candidate(params("int8-new", None), MODEL)
    assert not second["reused"] and second["version"] != first["version"]
    assert second["onnx_sha256"] == first["onnx_sha256"]  # same float file, another INT8 file
    assert second["int8"]["onnx_sha256"] != first["int8"]["onnx_sha256"]
