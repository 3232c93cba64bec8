"""ONNX export of real (tiny) backbones, checked with real onnxruntime against PyTorch."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

from facekd.config import ExportParams, parse_params
from facekd.errors import ExportError
from facekd.export.checks import run_checks
from facekd.export.onnx import export_onnx, to_input
from facekd.models.registry import create_backbone

FAST = ExportParams(latency_runs=3)


def tiny_model(arch: str = "iresnet_tiny", seed: int = 0) -> torch.nn.Module:
    """A narrow backbone with non-trivial BatchNorm statistics (so folding mistakes would show)."""
    torch.manual_seed(seed)
    model = create_backbone(arch, embedding_size=32, width=0.125)
    for module in model.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (12, 112, 112, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[torch.nn.Module, Path, dict]:
    path = tmp_path_factory.mktemp("export") / "m.onnx"
    model = tiny_model()
    info = export_onnx(model, path, opset=18, metadata={"arch": "iresnet_tiny", "method": "feature"}, exporter="legacy")
    return model, path, info


def test_export_is_one_file_with_the_submission_layout(exported):
    _, path, info = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.onnx"]  # no m.onnx.data, no temp file
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["data"] and [o.name for o in proto.graph.output] == ["embedding"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["opset"] == "18" and meta["arch"] == "iresnet_tiny" and meta["method"] == "feature"
    assert meta["exporter"] == info["exporter"] == "legacy"
    assert meta["prelu_rewritten"] == str(info["prelu_rewritten"]) == "5"  # every PReLU, by default
    assert "PRelu" not in {n.op_type for n in proto.graph.node}
    assert info["file_bytes"] == path.stat().st_size and info["embedding_size"] == 32
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # the batch dimension is dynamic
        assert session.run(None, {"data": np.zeros((batch, 3, 112, 112), np.float32)})[0].shape == (batch, 32)


def test_export_is_deterministic(exported, tmp_path):
    """Same weights, same bytes: the registry identifies a version by this file's sha256."""
    model, _, info = exported
    again = export_onnx(model, tmp_path / "again.onnx", opset=18, metadata={"arch": "iresnet_tiny", "method": "feature"}, exporter="legacy")
    assert again["sha256"] == info["sha256"]


def test_checks_pass_with_parity_at_batch_1_and_8(exported, images):
    model, path, _ = exported
    report = run_checks(path, model, images, FAST)
    assert report["passed"], report["failures"]
    assert report["parity"]["batch1"]["images"] == 4 and report["parity"]["batchN"]["batch"] == 8
    for key in ("batch1", "batchN"):
        assert report["parity"][key]["min_cosine"] >= 0.9999
        assert report["parity"][key]["max_abs_diff"] < 1e-3
    assert all(rule["ok"] for rule in report["mfr_rules"].values())
    assert report["mfr_rules"]["finite_outputs"]["value"] == 0
    assert report["latency_ms"]["onnxruntime_b1"] > 0 and report["latency_ms"]["torch_b1"] > 0
    assert report["opset"] == 18 and report["file_bytes"] == path.stat().st_size
    json.dumps(report)  # the stage writes it as JSON


def test_a_graph_that_disagrees_with_pytorch_fails_parity(exported, images):
    _, path, _ = exported
    report = run_checks(path, tiny_model(seed=1), images, FAST)
    assert not report["passed"]
    assert any(f.startswith("parity batch1") for f in report["failures"])
    assert report["parity"]["batchN"]["min_cosine"] < 0.9999


def test_unreadable_file_is_a_clear_error(tmp_path, images):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(ExportError, match="bad.onnx: not a readable ONNX file"):
        run_checks(bad, tiny_model(), images, FAST)
    with pytest.raises(ExportError, match="missing.onnx: ONNX file not found"):
        run_checks(tmp_path / "missing.onnx", tiny_model(), images, FAST)


@pytest.mark.slow
def test_default_exporter_handles_mobilefacenet(tmp_path, images):
    """The default (dynamo) exporter on MobileFaceNet: PReLU, grouped convs, BatchNorm1d."""
    model = tiny_model("mfn")
    info = export_onnx(model, tmp_path / "mfn.onnx", opset=18)
    assert info["exporter"] == "dynamo"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mfn.onnx"]
    report = run_checks(tmp_path / "mfn.onnx", model, images, FAST)
    assert report["passed"], report["failures"]


@pytest.mark.parametrize(
    ("arch", "exporter"),
    [("mfn", "legacy"), ("iresnet_tiny", "legacy"),
     pytest.param("mfn", "dynamo", marks=pytest.mark.slow), pytest.param("iresnet_tiny", "dynamo", marks=pytest.mark.slow)],
)
def test_prelu_rewrite_matches_the_plain_graph(arch, exporter, tmp_path, images):
    """The exporter's own PRelu layouts (legacy: (C,1,1), some behind Identity; dynamo: (1,C,1,1),
    shared), rewritten: no PRelu left, valid ONNX, the plain graph's outputs."""
    model = tiny_model(arch)
    plain_info = export_onnx(model, tmp_path / "plain.onnx", opset=18, exporter=exporter, rewrite_prelu=False)
    info = export_onnx(model, tmp_path / "rewritten.onnx", opset=18, exporter=exporter)
    plain, rewritten = onnx.load(str(tmp_path / "plain.onnx")), onnx.load(str(tmp_path / "rewritten.onnx"))
    prelus = sum(n.op_type == "PRelu" for n in plain.graph.node)
    assert prelus > 0 and plain_info["prelu_rewritten"] == 0 and info["prelu_rewritten"] == prelus
    assert "PRelu" not in {n.op_type for n in rewritten.graph.node}
    onnx.checker.check_model(rewritten, full_check=True)
    x = to_input(images)
    outs = [onnxruntime.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
            .run(None, {"data": x})[0] for name in ("plain.onnx", "rewritten.onnx")]
    assert np.abs(outs[0] - outs[1]).max() < 1e-6
    assert run_checks(tmp_path / "rewritten.onnx", model, images, FAST)["passed"]


def _workspace(root: Path, images: np.ndarray) -> None:
    """models/students/feature + data/eval/synth_lfw.bin, as the earlier stages leave them."""
    from facekd.data.bins import write_bin
    from facekd.data.images import encode_jpeg
    from facekd.models.store import save_model_dir

    save_model_dir(root / "models/feature", tiny_model(), {"method": "feature", "teacher": "iresnet_tiny", "data_hash": "abc123"})
    write_bin(root / "data/eval/synth_lfw.bin", [encode_jpeg(img) for img in images], [True] * (len(images) // 2))


def test_stage_writes_onnx_and_report_and_fails_loudly(tmp_path, monkeypatch, images):
    from facekd.stages import export as stage

    monkeypatch.chdir(tmp_path)
    _workspace(tmp_path, images)
    stage.run(parse_params({"export": {"latency_runs": 3}}), "feature", exporter="legacy")
    report = json.loads(Path("reports/export/feature.json").read_text())
    assert report["checks"]["passed"] and report["meta"]["method"] == "feature"
    assert report["export"]["sha256"] and Path("exports/feature.onnx").is_file()
    with pytest.raises(ExportError, match=r"output_dim.*reports/export/feature.json"):
        stage.run(parse_params({"export": {"latency_runs": 3, "max_output_dim": 16}}), "feature", exporter="legacy")
    failed = json.loads(Path("reports/export/feature.json").read_text())
    assert not failed["checks"]["passed"] and failed["checks"]["mfr_rules"]["output_dim"]["value"] == 32


def test_stage_names_a_missing_model_or_eval_data(tmp_path, monkeypatch):
    from facekd.errors import DataError
    from facekd.stages import export as stage

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ExportError, match="models/qud.*facekd distill qud"):
        stage.run(parse_params({}), "qud")
    with pytest.raises(DataError, match="data/eval: no verification .bin"):
        stage.parity_bin(Path("data/eval"))
    for name in ("agedb_30.bin", "lfw.bin", "cfp_fp.bin"):
        (tmp_path / name).touch()
    assert stage.parity_bin(tmp_path).name == "lfw.bin"


def test_to_input_normalises_rgb_nchw():
    img = np.zeros((1, 112, 112, 3), np.uint8)
    img[..., 0] = 255  # red channel
    x = to_input(img)
    assert x.shape == (1, 3, 112, 112) and x.dtype == np.float32
    assert x[0, 0].min() == 1.0 and x[0, 1].max() == -1.0
