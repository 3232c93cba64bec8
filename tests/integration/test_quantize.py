"""INT8 copies of exported (tiny) models, made and run with real onnxruntime."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest

from bench.common import face_like_images as faces
from bench.int8_latency import fitted_backbone
from facekd import layout
from facekd.config import Int8Params, parse_params
from facekd.errors import DataError, ExportError
from facekd.export.onnx import export_onnx
from facekd.export.quantize import calibration_sample, embedding_cosines, op_counts, quantize_int8
from tests.integration.test_export import tiny_model

CALIBRATION = 32
INT8 = Int8Params(enabled=True, calibration_images=CALIBRATION)
# INT8 vs float embedding cosine over 24 face-like images, for tiny iresnet with BatchNorm fitted to
# such images (random weights: discriminative features, cosine between different images ~0.04).
# Measured (onnxruntime 1.31, AVX2), model seeds 0 / 1 / 2: min 0.9925 / 0.9886 / 0.9896, median
# 0.9956 / 0.9952 / 0.9952. Calibrated on uniform noise instead, the same models get median
# 0.949 / 0.965 / 0.968 (min 0.91-0.95), so the limits catch calibration on data unlike the
# model's input. Trained models do better: the embedded mfn student 0.993 min / 0.9994 median,
# the embedded iresnet teacher 0.9996 / 0.9999 on 64 synthetic eval faces.
MIN_COSINE, MEDIAN_COSINE = 0.98, 0.99


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("int8") / "mfn.onnx"
    export_onnx(tiny_model("mfn"), path, opset=18, metadata={"arch": "mfn"}, exporter="legacy")
    return path


@pytest.fixture(scope="module")
def quantized(exported) -> tuple[Path, dict]:
    out = exported.with_name("mfn.int8.onnx")
    return out, quantize_int8(exported, out, faces(CALIBRATION, seed=1), INT8)


def _weight_from_dequantize(model: onnx.ModelProto, node_name: str) -> bool:
    producers = {out: n.op_type for n in model.graph.node for out in n.output}
    node = next(n for n in model.graph.node if n.name == node_name)
    return producers.get(node.input[1]) == "DequantizeLinear"


def test_int8_graph_runs_quantized_convolutions(quantized, tmp_path):
    path, info = quantized
    model = onnx.load(str(path))
    assert info["file_bytes"] == path.stat().st_size and info["ops"] == op_counts(model)
    ops = info["ops"]
    assert ops["conv_int8"] >= 10 and ops["conv_float"] == 1 and ops["matmul_int8"] == 1  # first conv kept
    assert ops["quantize_linear"] > 0 and ops["dequantize_linear"] > ops["quantize_linear"]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["arch"] == "mfn" and meta["calibration_images"] == str(CALIBRATION)
    assert "QDQ QUInt8/QInt8 per-channel" in meta["quantization"]
    assert [i.name for i in model.graph.input] == ["data"] and [o.name for o in model.graph.output] == ["embedding"]
    # onnxruntime really runs int8 kernels: its optimised graph fuses the QDQ convs to QLinearConv.
    options = onnxruntime.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimised.onnx")
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = [n for n in onnx.load(options.optimized_model_filepath).graph.node if n.op_type == "QLinearConv"]
    assert len(fused) >= 10


def test_int8_file_is_deterministic(exported, quantized, tmp_path):
    """Same float file and calibration images, same bytes (DVC and the registry go by hashes)."""
    again = quantize_int8(exported, tmp_path / "again.onnx", faces(CALIBRATION, seed=1), INT8)
    assert again["sha256"] == quantized[1]["sha256"]


def test_int8_embeddings_stay_close_to_float(tmp_path):
    # tiny_model's made-up BatchNorm statistics map every image to nearly the same embedding.
    model = fitted_backbone("iresnet_tiny", 32, 0.125, faces(64, seed=5))
    export_onnx(model, tmp_path / "r.onnx", opset=18, exporter="legacy")
    quantize_int8(tmp_path / "r.onnx", tmp_path / "r.int8.onnx", faces(CALIBRATION, seed=1), INT8)
    cos = embedding_cosines(tmp_path / "r.onnx", tmp_path / "r.int8.onnx", faces(24, seed=2))  # unseen images
    assert cos["images"] == 24 and cos["min"] >= MIN_COSINE and cos["median"] >= MEDIAN_COSINE, cos
    noise = np.random.default_rng(0).integers(0, 256, (CALIBRATION, 112, 112, 3), dtype=np.uint8)
    quantize_int8(tmp_path / "r.onnx", tmp_path / "noise.int8.onnx", noise, INT8)
    badly = embedding_cosines(tmp_path / "r.onnx", tmp_path / "noise.int8.onnx", faces(24, seed=2))
    assert badly["median"] < MEDIAN_COSINE, badly  # the limits see a calibration on the wrong data


def test_keep_float_nodes_stay_float(exported, tmp_path):
    images = faces(CALIBRATION, seed=1)
    info = quantize_int8(exported, tmp_path / "kept.onnx", images,
                         INT8.model_copy(update={"keep_float": ("first_conv", "embedding")}))
    kept, model = info["kept_float"], onnx.load(str(tmp_path / "kept.onnx"))
    linear = [n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm")]
    assert kept[0].endswith("conv1/conv/Conv") and linear[-1] in kept
    for name in (kept[0], linear[-1]):
        assert not _weight_from_dequantize(model, name), name
    assert info["ops"]["conv_float"] == 1 and info["ops"]["matmul_float"] == 1
    nothing_kept = quantize_int8(exported, tmp_path / "all.onnx", images, INT8.model_copy(update={"keep_float": ()}))
    assert nothing_kept["kept_float"] == [] and nothing_kept["ops"]["conv_float"] == 0
    assert _weight_from_dequantize(onnx.load(str(tmp_path / "all.onnx")), kept[0])


@pytest.mark.parametrize(
    ("images", "found"),
    [
        (faces(CALIBRATION - 1, seed=1),
         f"has {CALIBRATION - 1} images, export.int8.calibration_images asks for {CALIBRATION}"),
        (np.zeros((CALIBRATION, 3, 112, 112), np.float32), f"got float32 ({CALIBRATION}, 3, 112, 112)"),
        (np.zeros((CALIBRATION, 96, 112, 3), np.uint8), f"got uint8 ({CALIBRATION}, 96, 112, 3)"),
        (np.zeros((112, 112, 3), np.uint8), "got uint8 (112, 112, 3)"),
    ],
    ids=["too-few", "normalised-nchw", "wrong-size", "one-image"],
)
def test_a_wrong_calibration_sample_is_refused(exported, tmp_path, images, found):
    with pytest.raises(ExportError, match=re.escape(found)):
        quantize_int8(exported, tmp_path / "never.onnx", images, INT8)
    assert not (tmp_path / "never.onnx").exists()


def _workspace(root: Path) -> None:
    """models/feature, data/prepared/train.rec (8 identities x 6) and data/eval/synth_lfw.bin."""
    from facekd.data.bins import write_bin
    from facekd.data.images import encode_jpeg
    from facekd.data.face_rec import write_face_rec
    from facekd.models.store import save_model_dir

    save_model_dir(root / "models/feature", tiny_model("mfn"), {"method": "feature", "arch": "mfn"})
    train = faces(48, seed=3)
    (root / "data/prepared").mkdir(parents=True)
    write_face_rec(root / "data/prepared/train.rec", root / "data/prepared/train.idx",
                   ((i // 6, encode_jpeg(img)) for i, img in enumerate(train)))
    write_bin(root / "data/eval/synth_lfw.bin", [encode_jpeg(img) for img in faces(16, seed=4)], [True, False] * 4)


def test_stage_writes_the_int8_file_and_its_report(tmp_path, monkeypatch):
    from facekd.stages import export as stage

    monkeypatch.chdir(tmp_path)
    _workspace(tmp_path)
    raw = {"export": {"latency_runs": 2, "int8": {"enabled": True, "calibration_images": CALIBRATION}}}
    stage.run(parse_params(raw), "feature", exporter="legacy")
    int8 = json.loads(layout.export_report("feature").read_text())["int8"]
    assert int8["path"] == "exports/feature.int8.onnx" and Path(int8["path"]).stat().st_size == int8["file_bytes"]
    assert int8["ops"]["conv_int8"] > 0 and int8["calibration_images"] == CALIBRATION
    assert int8["calibration_data"] == "data/prepared/train.rec" and int8["kept_float"]
    assert int8["cosine_to_float"]["images"] == 16 and 0 < int8["cosine_to_float"]["min"] <= 1.0 + 1e-6
    with pytest.raises(DataError, match=r"train.rec: 48 training images, fewer than export.int8.calibration_images=64"):
        stage.run(parse_params({"export": {"int8": {"enabled": True, "calibration_images": 64}}}), "feature",
                  exporter="legacy")


def test_calibration_sample_spans_the_training_set(tmp_path, monkeypatch):
    from facekd.data.dataset import open_training_data

    monkeypatch.chdir(tmp_path)
    _workspace(tmp_path)
    dataset = open_training_data("data/prepared", "rec", augment=False)
    sample = calibration_sample(dataset, 8)
    assert sample.shape == (8, 112, 112, 3) and sample.dtype == np.uint8
    assert np.array_equal(sample[0], dataset.load(0)) and np.array_equal(sample[-1], dataset.load(47))
