"""`facekd evaluate MODEL --int8`: the INT8 ONNX copy scored on every benchmark like the model itself
(real onnxruntime, real benchmarks of the synthetic generator, real MLflow SQLite store)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from bench.int8_latency import fitted_backbone
from facekd.config import Int8Params, parse_params
from facekd.errors import DataError
from tests.faults.conftest import TINY

pytestmark = pytest.mark.slow
MODEL = "none"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data/eval (two .bin sets, IJB, MFR at TINY size), models/none, exports/none{,.int8}.onnx."""
    from facekd.config import SyntheticData
    from facekd.data.dataset import open_training_data
    from facekd.data.synthetic import generate
    from facekd.export.onnx import export_onnx
    from facekd.export.quantize import calibration_sample, quantize_int8
    from facekd.models.store import save_model_dir

    root = tmp_path_factory.mktemp("int8eval")
    generate(SyntheticData(**TINY["data"]["synthetic"]), root / "data/prepared", root / "data/eval", progress=False)
    # As the pipeline does it: BatchNorm statistics and the calibration sample from the training crops.
    train = open_training_data(root / "data/prepared", "rec", augment=False)
    model = fitted_backbone("iresnet_tiny", 32, 0.125, calibration_sample(train, 32))
    save_model_dir(root / "models" / MODEL, model, {"method": MODEL})
    export_onnx(model, root / f"exports/{MODEL}.onnx", opset=18, metadata={"arch": "iresnet_tiny"}, exporter="legacy")
    quantize_int8(root / f"exports/{MODEL}.onnx", root / f"exports/{MODEL}.int8.onnx", calibration_sample(train, 16),
                  Int8Params(enabled=True, calibration_images=16))
    return root


def _params(root: Path):
    return parse_params({"tracking": {"uri": f"sqlite:///{root / 'mlflow.db'}"}, "evaluate": {"batch_size": 32}})


@pytest.fixture(scope="module")
def evaluated(workspace: Path) -> tuple[dict, dict]:
    from facekd.stages import evaluate

    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workspace)
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        int8 = evaluate.run(_params(workspace), MODEL, int8=True)
        float_ = evaluate.run(_params(workspace), MODEL)
    return float_, int8


def _benchmarks(metrics: dict) -> set[str]:
    return {k for k, v in metrics.items() if isinstance(v, dict) and k != "cosine_to_float"}


def test_int8_copy_is_scored_on_every_benchmark_beside_the_model(workspace, evaluated):
    float_, int8 = evaluated
    written = json.loads((workspace / f"metrics/eval/{MODEL}.int8.json").read_text())
    assert written["precision"] == "int8" and written["model"] == MODEL and written["arch"] == "iresnet_tiny"
    sha = hashlib.sha256((workspace / f"exports/{MODEL}.int8.onnx").read_bytes()).hexdigest()
    assert written["onnx_sha256"] == sha and written["onnx"] == f"exports/{MODEL}.int8.onnx"
    assert _benchmarks(written) == _benchmarks(float_) == {"synth_lfw", "synth_cpfp", "ijb", "mfr"}
    for bench in ("synth_lfw", "synth_cpfp"):
        assert set(written[bench]) == set(float_[bench]) and 0.0 <= written[bench]["accuracy"] <= 1.0
    # the report bootstraps the INT8 copy on the model's own pairs
    scores = workspace / "metrics/scores"
    with np.load(scores / f"{MODEL}.npz") as a, np.load(scores / f"{MODEL}.int8.npz") as b:
        assert set(a) == set(b) and np.array_equal(a["ijb.labels"], b["ijb.labels"])
        assert np.array_equal(a["ijb.subjects"], b["ijb.subjects"])
    assert (workspace / f"plots/roc/{MODEL}.int8.json").is_file()
    assert (workspace / f"reports/roc/{MODEL}.int8.png").is_file()


def test_cosine_to_float_covers_every_evaluated_image(workspace, evaluated):
    _, int8 = evaluated
    cos = int8["cosine_to_float"]
    per = cos["per_benchmark"]
    assert set(per) == {"synth_lfw", "synth_cpfp", "ijb-ijbs", "mfr-probes", "mfr-gallery"}
    assert cos["images"] == sum(p["images"] for p in per.values())
    assert cos["min"] == min(p["min"] for p in per.values()) and cos["reference"] == f"exports/{MODEL}.onnx"
    # each image once (the mirrors are scored, not compared): a .bin of P pairs holds 2P images
    from facekd.data.bins import decode_bin

    images, _ = decode_bin(workspace / "data/eval/synth_lfw.bin")
    assert per["synth_lfw"]["images"] == len(images)
    # Random weights, BatchNorm fitted to the training crops: measured min 0.960, median 0.991 over
    # these inputs with their mirrors (trained embedded students: min >= 0.979, median >= 0.999).
    assert 0.93 < cos["min"] <= cos["median"] and 0.98 < cos["median"] <= 1.0 + 1e-6, cos


def test_int8_features_are_cached_apart_from_the_model(workspace, evaluated):
    float_dir, int8_dir = workspace / f"features/eval/{MODEL}", workspace / f"features/eval/{MODEL}.int8"
    # INT8 and float ONNX features of 5 embedded sets; the PyTorch model's in its own folder
    assert len(list(int8_dir.glob("*.npy"))) == 10 and len(list(float_dir.glob("*.npy"))) == 5


def test_runs_nested_under_training_and_tagged_int8(workspace, evaluated):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    exp = client.get_experiment_by_name("facekd")
    (run,) = client.search_runs([exp.experiment_id], filter_string="tags.`facekd.precision` = 'int8'")
    assert run.info.run_name == f"evaluate-{MODEL}.int8" and run.data.tags["dvc.stage"] == f"evaluate_int8@{MODEL}"
    assert 0.9 < run.data.metrics["eval.cosine_to_float.min"] <= 1.0 + 1e-6


def test_a_missing_int8_copy_names_the_file_and_the_fix(workspace, tmp_path, monkeypatch):
    from facekd.stages import evaluate

    for sub in ("data", "models"):
        (tmp_path / sub).symlink_to(workspace / sub)
    (tmp_path / "exports").mkdir()
    (tmp_path / f"exports/{MODEL}.onnx").symlink_to(workspace / f"exports/{MODEL}.onnx")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=rf"exports/{MODEL}.int8.onnx: missing; run `dvc repro export@{MODEL}`"):
        evaluate.run(_params(tmp_path), MODEL, int8=True)
