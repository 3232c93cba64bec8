"""Each MFR submission rule on small hand-built ONNX graphs: the good graph passes every rule,
and each crafted violation is caught by its rule (and only the rules it should trip)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper

from facekd.config import ExportParams
from facekd.export.checks import cosine_rows, mfr_rules, rule_file_size, rule_finite

DIM = 16


def graph(
    *,
    out_dim: int = DIM,
    weight_dtype=np.float32,
    outputs: int = 1,
    batch: int | str = "batch",
    nodes: int = 8,
    first_names: tuple[str, str] = ("pool", "flat"),
    opset: int = 18,
) -> onnx.ModelProto:
    """data (batch,3,112,112) -> GlobalAveragePool -> Flatten -> MatMul W (3,d) -> Relu chain -> embedding."""
    w = np.random.default_rng(0).standard_normal((3, out_dim)).astype(weight_dtype)
    body = [
        helper.make_node("GlobalAveragePool", ["data"], ["p"], name=first_names[0]),
        helper.make_node("Flatten", ["p"], ["f"], name=first_names[1]),
    ]
    weight = "W"
    if weight_dtype != np.float32:  # the MatMul still runs in fp32: cast the stored weight up
        body.append(helper.make_node("Cast", ["W"], ["Wf"], to=TensorProto.FLOAT, name="cast"))
        weight = "Wf"
    body.append(helper.make_node("MatMul", ["f", weight], ["h0"], name="fc"))
    current = "h0"
    while len(body) < nodes - 1:
        nxt = f"h{len(body)}"
        body.append(helper.make_node("Relu" if len(body) % 2 else "Identity", [current], [nxt], name=f"act{len(body)}"))
        current = nxt
    body.append(helper.make_node("Identity", [current], ["embedding"], name="out"))
    outs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, out_dim])]
    if outputs == 2:
        body.append(helper.make_node("Identity", ["f"], ["pooled"], name="extra"))
        outs.append(helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [batch, 3]))
    g = helper.make_graph(
        body,
        "crafted",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, 112, 112])],
        outs,
        initializer=[numpy_helper.from_array(w, "W")],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)  # onnxruntime 1.31 reads IR <= 13
    onnx.checker.check_model(model, full_check=True)
    return model


def failing(model: onnx.ModelProto, file_bytes: int = 1000, params: ExportParams | None = None) -> set[str]:
    return {name for name, rule in mfr_rules(model, file_bytes, params or ExportParams()).items() if not rule["ok"]}


def test_good_graph_passes_every_rule_and_runs():
    model = graph()
    assert failing(model) == set()
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    out = session.run(None, {"data": np.zeros((5, 3, 112, 112), np.float32)})[0]
    assert out.shape == (5, DIM)


def test_fp16_weight_is_caught():
    rules = mfr_rules(graph(weight_dtype=np.float16), 1000, ExportParams())
    assert not rules["weight_itemsize"]["ok"]
    assert rules["weight_itemsize"]["value"] == ["W:FLOAT16"]
    assert {n for n, r in rules.items() if not r["ok"]} == {"weight_itemsize"}


def test_fp16_constant_node_is_caught():
    model = graph()
    half = numpy_helper.from_array(np.ones(2, np.float16), "half")
    model.graph.node.append(helper.make_node("Constant", [], ["c"], value=half, name="const"))
    assert failing(model) == {"weight_itemsize"}


def test_two_outputs_are_caught():
    assert failing(graph(outputs=2)) == {"one_output", "output_2d"}


def test_output_over_512_is_caught_and_limit_is_configurable():
    rules = mfr_rules(graph(out_dim=1024), 1000, ExportParams())
    assert rules["output_dim"] == {"value": 1024, "limit": 512, "ok": False}
    assert failing(graph(out_dim=1024), params=ExportParams(max_output_dim=1024)) == set()
    assert failing(graph(out_dim=512)) == set()


def test_too_small_graph_is_caught():
    assert failing(graph(nodes=4)) == {"node_count"}


def test_fixed_batch_is_caught():
    assert failing(graph(batch=1)) == {"input_shape"}


def test_graph_that_stops_server_normalisation_is_caught():
    # The validator feeds raw pixels when the first nodes are named Sub*/Mul* (mxnet-style models).
    assert failing(graph(first_names=("Sub_0", "Mul_1"))) == {"server_normalises"}
    assert failing(graph(first_names=("Sub_0", "flat"))) == set()


def test_opset_must_match_the_requested_one():
    assert failing(graph(opset=17)) == {"opset"}


def test_external_data_is_caught(tmp_path: Path):
    model = graph(out_dim=512)
    onnx.save_model(model, tmp_path / "m.onnx", save_as_external_data=True, location="m.onnx.data", size_threshold=0)
    assert (tmp_path / "m.onnx.data").exists()
    assert failing(onnx.load(tmp_path / "m.onnx", load_external_data=False)) == {"self_contained"}


def test_file_size_and_finite_rules():
    assert rule_file_size(2048, 1024) == {"value": 2048, "limit": 1024, "ok": False}
    assert rule_file_size(1024, 1024)["ok"]
    assert rule_finite(np.ones((4, 3)))["ok"]
    bad = np.ones((4, 3))
    bad[1, 2] = np.nan
    bad[3, 0] = np.inf
    assert rule_finite(bad) == {"value": 2, "ok": False}


def test_cosine_rows():
    a = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(cosine_rows(a, np.array([[2.0, 0.0], [1.0, 0.0]])), [1.0, 0.0])
    assert cosine_rows(np.zeros((1, 2)), np.ones((1, 2)))[0] == 0.0


@pytest.mark.parametrize("bad", [np.zeros((2, 112, 112, 3), np.float32), np.zeros((2, 3, 112, 112), np.uint8)])
def test_run_checks_rejects_images_that_are_not_uint8_nhwc(bad, tmp_path: Path):
    from facekd.errors import ExportError
    from facekd.export.checks import run_checks

    with pytest.raises(ExportError, match="uint8 RGB"):
        run_checks(tmp_path / "m.onnx", None, bad, ExportParams())


def test_graph_onnxruntime_cannot_load_or_run_is_a_reported_failure(tmp_path: Path):
    from facekd.export.checks import run_checks

    images = np.zeros((2, 112, 112, 3), np.uint8)
    too_new = graph()
    too_new.ir_version = 99  # newer than any onnxruntime reads
    onnx.save_model(too_new, tmp_path / "new.onnx")
    report = run_checks(tmp_path / "new.onnx", None, images, ExportParams())
    assert not report["passed"] and report["failures"][0].startswith("onnxruntime cannot load or run")
    renamed = graph()
    renamed.graph.input[0].name = "x"  # the feed is named "data": running it fails
    renamed.graph.node[0].input[0] = "x"
    onnx.save_model(renamed, tmp_path / "renamed.onnx")
    report = run_checks(tmp_path / "renamed.onnx", None, images, ExportParams())
    assert not report["passed"] and report["failures"][0].startswith("onnxruntime cannot load or run")


# --- PRelu rewrite --------------------------------------------------------------------------------


def prelu_graph() -> onnx.ModelProto:
    """data -> PRelu (3,1,1) -> PRelu (1,3,1,1) behind an Identity -> PRelu sharing the first slope
    -> the `graph()` tail: the slope layouts and sharing the legacy and dynamo exporters emit."""
    rng = np.random.default_rng(1)
    slopes = {"s3": rng.uniform(-0.5, 0.5, (3, 1, 1)), "s4": rng.uniform(-0.5, 0.5, (1, 3, 1, 1))}
    base = graph()
    base.graph.node[0].input[0] = "a3"  # the tail now reads the last PRelu's output
    head = [
        helper.make_node("PRelu", ["data", "s3"], ["a1"], name="act/PRelu"),
        helper.make_node("Identity", ["s4"], ["s4_shared"], name="slope_alias"),
        helper.make_node("PRelu", ["a1", "s4_shared"], ["a2"], name="node_prelu"),
        helper.make_node("PRelu", ["a2", "s3"], ["a3"], name=""),
    ]
    nodes = head + list(base.graph.node)
    del base.graph.node[:]
    base.graph.node.extend(nodes)
    base.graph.initializer.extend(numpy_helper.from_array(v.astype(np.float32), k) for k, v in slopes.items())
    onnx.checker.check_model(base, full_check=True)
    return base


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"data": x})[0]


def test_prelu_rewrite_gives_the_same_outputs_without_prelu():
    from facekd.export.rewrite import rewrite_prelu

    plain = prelu_graph()
    before = plain.SerializeToString()
    rewritten, count = rewrite_prelu(plain)
    assert count == 3 and plain.SerializeToString() == before  # the input model is not modified
    ops = [n.op_type for n in rewritten.graph.node]
    assert "PRelu" not in ops and ops.count("Max") == ops.count("Min") == 3
    onnx.checker.check_model(rewritten, full_check=True)
    assert failing(rewritten) == set()  # new node names do not look like Sub*/Mul* input normalisation
    x = np.random.default_rng(2).standard_normal((2, 3, 112, 112)).astype(np.float32)
    x[0, :, :4] = 0.0  # PRelu's x == 0 branch
    np.testing.assert_array_equal(_run(rewritten, x), _run(plain, x))


def test_prelu_rewrite_leaves_a_model_without_prelu_unchanged():
    from facekd.export.rewrite import rewrite_prelu

    model = graph()
    rewritten, count = rewrite_prelu(model)
    assert count == 0 and rewritten.SerializeToString() == model.SerializeToString()


def test_prelu_rewrite_refuses_an_input_of_unknown_type():
    from facekd.errors import ExportError
    from facekd.export.rewrite import rewrite_prelu

    model = prelu_graph()
    model.graph.node.insert(0, helper.make_node("Opaque", ["data"], ["hidden"], domain="example.custom", name="op"))
    model.graph.node[1].input[0] = "hidden"  # the first PRelu now reads a tensor shape inference cannot type
    model.opset_import.append(helper.make_opsetid("example.custom", 1))
    with pytest.raises(ExportError, match="'hidden'.*act/PRelu.*rewrite_prelu: false"):
        rewrite_prelu(model)
