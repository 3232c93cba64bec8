"""ONNX-only teachers: checked before any work, fed in their own input convention, and equal to the
PyTorch model they were exported from; W_t from class means against a trained head."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from bench.common import face_like_images
from bench.int8_latency import fitted_backbone
from facekd.config import OnnxTeacherParams
from facekd.distill.teacher_cache import class_mean_centres
from facekd.errors import ConfigError, DataError
from facekd.export.onnx import export_onnx, to_input
from facekd.models.heads import MarginHead
from facekd.models.onnx_backbone import InputConvention, OnnxBackbone, inspect_onnx
from facekd.models.onnx_teacher import import_onnx_teacher, resolve_onnx_path, sanity_check
from facekd.models.store import load_backbone
from tests.integration.test_export import tiny_model

IDS, PER_ID = 8, 6


def _identities(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(IDS * PER_ID, 112, 112, 3) uint8: a face-like image per identity plus per-image noise, and labels."""
    rng = np.random.default_rng(seed)
    base = face_like_images(IDS, seed).astype(np.float32)
    images = np.clip(base[:, None] + rng.normal(0, 14, (IDS, PER_ID, 112, 112, 3)), 0, 255).astype(np.uint8)
    return images.reshape(-1, 112, 112, 3), np.repeat(np.arange(IDS), PER_ID)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    model = tiny_model("iresnet_tiny")
    path = tmp_path_factory.mktemp("onnx_teacher") / "teacher.onnx"
    export_onnx(model, path, opset=18, metadata={"arch": "iresnet_tiny"}, exporter="legacy")
    return path, model


def _torch_embed(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(to_input(images))).numpy()


def _onnx_embed(path: Path, images: np.ndarray, convention: InputConvention = InputConvention()) -> np.ndarray:
    with torch.inference_mode():
        return OnnxBackbone(path, convention)(torch.from_numpy(to_input(images))).numpy()


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def _prepend(path: Path, out: Path, nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray]) -> Path:
    """A copy of ``path`` whose input first goes through ``nodes`` ("pixels" -> ... -> old input name)."""
    model = onnx.load(str(path))
    graph = model.graph
    old = graph.input[0]
    new_input = helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["N", 3, 112, 112])
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in constants.items())
    for i, node in enumerate(nodes):
        graph.node.insert(i, node)
    graph.input.remove(old)
    graph.input.insert(0, new_input)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


def _bgr_variant(path: Path, out: Path) -> Path:
    """Takes BGR (x - 127.5) / 127.5: swaps the channels back before the RGB graph."""
    swap = helper.make_node("Gather", ["pixels", "bgr_order"], ["data"], axis=1, name="to_rgb")
    return _prepend(path, out, [swap], {"bgr_order": np.array([2, 1, 0], dtype=np.int64)})


def _normalizing_variant(path: Path, out: Path) -> Path:
    """Takes raw 0..255 RGB and normalises inside, as Sub then Mul (insightface's own packs do)."""
    nodes = [helper.make_node("Sub", ["pixels", "mean"], ["centred"], name="Sub_0"),
             helper.make_node("Mul", ["centred", "scale"], ["data"], name="Mul_1")]
    return _prepend(path, out, nodes, {"mean": np.array(127.5, dtype=np.float32),
                                       "scale": np.array(1 / 127.5, dtype=np.float32)})


def test_onnx_backbone_equals_the_pytorch_model(exported) -> None:
    path, model = exported
    images = face_like_images(12, seed=3)
    cos = _cosines(_onnx_embed(path, images), _torch_embed(model, images))
    assert cos.min() >= 0.9999, cos.min()
    info = inspect_onnx(path)
    assert (info.batch, info.dim, info.normalizes_inside) == (None, 32, False)


def test_facekd_input_is_fed_as_it_is_and_matches_the_pixel_round_trip(exported) -> None:
    """facekd's own convention skips the 0..255 round trip; any other mean/std takes it (same numbers)."""
    path, _ = exported
    x = torch.from_numpy(face_like_images(4, seed=5)).permute(0, 3, 1, 2).float().sub(127.5).div(127.5)
    own = OnnxBackbone(path, InputConvention(normalization="outside"))
    detour = OnnxBackbone(path, InputConvention(normalization="outside", mean=127.5 + 1e-9))
    assert own.takes_facekd_input and not detour.takes_facekd_input
    np.testing.assert_array_equal(own.model_input(x), x.numpy())
    np.testing.assert_allclose(detour.model_input(x), own.model_input(x), atol=1e-6)


@pytest.mark.parametrize(("variant", "right", "wrong"), [
    (_bgr_variant, InputConvention(color="bgr"), InputConvention(color="rgb")),
    (_normalizing_variant, InputConvention(normalization="auto"), InputConvention(normalization="outside")),
    (_normalizing_variant, InputConvention(normalization="inside"), InputConvention(normalization="outside")),
])
def test_input_conventions_give_the_same_embeddings_only_when_right(exported, tmp_path, variant, right, wrong) -> None:
    path, model = exported
    images = face_like_images(12, seed=4)
    reference = _torch_embed(model, images)
    other = variant(path, tmp_path / "variant.onnx")
    assert _cosines(_onnx_embed(other, images, right), reference).min() >= 0.9999
    # Wrong settings: clearly another function (measured mean cosine 0.2-0.8 on these images).
    assert _cosines(_onnx_embed(other, images, wrong), reference).mean() < 0.95


def test_fixed_batch_files_run_in_chunks(exported, tmp_path) -> None:
    path, model = exported
    proto = onnx.load(str(path))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    proto.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 1
    fixed = tmp_path / "fixed.onnx"
    onnx.save(proto, str(fixed))
    images = face_like_images(5, seed=5)
    assert inspect_onnx(fixed).batch == 1
    assert _cosines(_onnx_embed(fixed, images), _torch_embed(model, images)).min() >= 0.9999


def _graph(inputs: list[tuple[str, list]], outputs: list[tuple[str, list]]) -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", [inputs[0][0]], [o[0]]) for o in outputs]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs])
    return helper.make_model(graph)


@pytest.mark.parametrize(("build", "fragment"), [
    (lambda p: onnx.save(_graph([("x", ["N", 3, 96, 96])], [("y", ["N", 8])]), str(p)), "is ['N', 3, 96, 96]"),
    (lambda p: onnx.save(_graph([("x", ["N", 3, 112, 112]), ("z", ["N", 3, 112, 112])], [("y", ["N", 8])]), str(p)),
     "found 2"),
    (lambda p: onnx.save(_graph([("x", ["N", 3, 112, 112])], [("y", ["N", 8]), ("w", ["N", 8])]), str(p)),
     "one output"),
    (lambda p: onnx.save(_graph([("x", ["N", 3, 112, 112])], [("y", ["N", 3, 112, 112])]), str(p)), "expected N x d"),
    (lambda p: p.write_bytes(b"PK\x03\x04 this is a zip, not a protobuf"), "not an ONNX model"),
    (lambda p: None, "missing"),
])
def test_bad_files_are_refused_naming_the_file(tmp_path, build, fragment) -> None:
    path = tmp_path / "teacher.onnx"
    build(path)
    with pytest.raises(DataError) as err:
        inspect_onnx(path)
    assert str(path) in str(err.value) and fragment in str(err.value)


def test_a_folder_must_hold_exactly_one_onnx(tmp_path, exported) -> None:
    with pytest.raises(ConfigError, match="no .onnx file"):
        resolve_onnx_path(tmp_path)
    (tmp_path / "a.onnx").write_bytes(exported[0].read_bytes())
    assert resolve_onnx_path(tmp_path) == tmp_path / "a.onnx"
    (tmp_path / "b.onnx").write_bytes(b"")
    with pytest.raises(ConfigError, match="2 .onnx files"):
        resolve_onnx_path(tmp_path)


def test_sanity_check_flags_classifiers_and_unseparated_outputs() -> None:
    labels = np.repeat(np.arange(4), 4)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    good = sanity_check(centres[labels] + 0.3 * rng.normal(size=(16, 16)), labels)
    assert good["warnings"] == [] and good["separation"] > 0.5
    logits = rng.normal(size=(16, 10))
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    flagged = sanity_check(softmax, labels)
    assert any("softmax" in w for w in flagged["warnings"])
    noise = sanity_check(rng.normal(size=(16, 16)), labels)
    assert any("hardly separates" in w for w in noise["warnings"])
    with pytest.raises(DataError, match="non-finite"):
        sanity_check(np.full((16, 4), np.nan), labels)


def test_import_writes_a_model_folder_that_loads_as_the_same_function(exported, tmp_path) -> None:
    path, model = exported
    images, labels = _identities()
    meta = import_onnx_teacher(OnnxTeacherParams(path=str(path), sanity_images=16), tmp_path / "teacher",
                               images[:16], labels[:16])
    assert (tmp_path / "teacher" / "model.onnx").read_bytes() == path.read_bytes()
    assert json.loads((tmp_path / "teacher" / "meta.json").read_text())["format"] == "onnx"
    assert meta["embedding_size"] == 32 and meta["sanity"]["images"] == 16
    loaded, _ = load_backbone(tmp_path / "teacher")
    with torch.inference_mode():
        got = loaded(torch.from_numpy(to_input(images[:6]))).numpy()
    assert _cosines(got, _torch_embed(model, images[:6])).min() >= 0.9999


def _train_head(emb: np.ndarray, labels: np.ndarray, steps: int = 1500) -> MarginHead:
    """An ArcFace head trained to convergence on a frozen backbone's embeddings (CPU-seconds; training
    the backbone as well would take a minute here and leave the comparison the same)."""
    torch.manual_seed(0)
    head = MarginHead(IDS, emb.shape[1], "arcface", 32.0, 0.3)
    opt = torch.optim.SGD(head.parameters(), lr=0.5, momentum=0.9)
    x, y = torch.from_numpy(emb), torch.from_numpy(labels)
    for _ in range(steps):
        opt.zero_grad()
        head.loss(x, y).backward()
        opt.step()
    return head


def test_class_mean_centres_match_a_trained_head() -> None:
    """W_t estimated from embeddings alone (an ONNX teacher has no head) against the real head."""
    images, labels = _identities()
    backbone = fitted_backbone("iresnet_tiny", 32, 0.125, images)
    emb = _torch_embed(backbone, images)
    flipped = _torch_embed(backbone, images[:, :, ::-1].copy())
    head = _train_head(np.concatenate([emb, flipped]), np.concatenate([labels, labels]))
    centres = class_mean_centres(np.stack([emb, flipped], axis=1), labels, IDS).numpy()  # (C, d)
    real = torch.nn.functional.normalize(head.weight.detach(), dim=1).numpy()
    cos = centres @ real.T  # (C, C)
    # Measured: cosine to the own class's head row 0.83-0.97 (mean 0.88), to the others' <= 0.36 (a
    # trained head also pushes its rows apart, so it is not exactly the mean); nearest-centre
    # accuracy on these images 0.958 with the estimate, 0.979 with the real head.
    assert (cos.argmax(axis=1) == np.arange(IDS)).all(), cos  # each estimate is nearest its own class's centre
    assert np.diag(cos).mean() >= 0.8, np.diag(cos)
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    accuracy = [((unit @ w.T).argmax(1) == labels).mean() for w in (centres, real)]
    assert accuracy[0] >= accuracy[1] - 0.05, accuracy
