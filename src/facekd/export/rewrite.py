"""Graph rewrites applied to an exported ONNX model before it is checked and written.

``PRelu(x, s)`` becomes ``Max(x, 0) + s * Min(x, 0)``. onnxruntime's (1.31) CPU PRelu goes through
its generic broadcasting path for the (C, 1, 1) slope: 41% of a batch-1 MobileFaceNet 1.0/512 run
on 1 thread, next to 51% in Conv. The four-node form runs each step on a flat buffer (Max/Min
against a scalar) or one per-channel Mul, and measured on this machine (batch 1, 1 thread, median
of interleaved runs, both exporters): mfn 1.0/512 plain 29.6-30.2 ms -> 17.6-17.9 ms; the other
forms tried were no faster (Relu(x) + s * Min(x, 0) 17.8-18.1 ms, Relu(x) - s * Relu(-x)
17.8-18.2 ms, Where(x > 0, x, s * x) 19.5-20.0 ms); ``bench/export_latency.py`` at load 5-6:
25.5 -> 19.5 ms; iresnet50 (where PReLU is a small share) unchanged within noise. The outputs
are bit-identical: for x > 0 the sum is x + (+-0) = x, for x <= 0 it is 0 + s * x.

The slope input is passed to Mul as it is: PRelu broadcasts it to x one-way and Mul both ways,
which gives the same result for any slope PRelu accepts. The exporters emit it as (C, 1, 1)
initializers, some behind Identity nodes where slopes are shared (legacy), or as (1, C, 1, 1)
initializers shared between nodes (dynamo). Only the main graph is rewritten (neither exporter
puts PReLU in a subgraph for these backbones).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from facekd.errors import ExportError

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

ZERO_PREFIX = "facekd_prelu_zero"


def rewrite_prelu(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """A copy of ``model`` with every main-graph PRelu replaced by Max/Min/Mul/Add; and how many.

    A model without PRelu comes back unchanged (an equal copy). The replacement nodes keep the
    PRelu's input and output names, so consumers and graph outputs are untouched; the new nodes are
    named ``<prelu name>/max`` etc., never ``Sub*``/``Mul*`` (which the MFR validator reads as
    "the graph normalises its own input").
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not any(node.op_type == "PRelu" for node in out.graph.node):
        return out, 0
    types = _elem_types(out)
    names = _used_names(out)
    zeros: dict[int, str] = {}  # element type -> name of its scalar 0 initializer
    nodes = []
    count = 0
    for node in out.graph.node:
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x = node.input[0]
        if x not in types:
            raise ExportError(
                f"PRelu rewrite: cannot infer the element type of '{x}' (input of node '{node.name}'); "
                f"export with export.rewrite_prelu: false"
            )
        if types[x] not in zeros:
            zeros[types[x]] = _add_zero(out, types[x], names)
        nodes.extend(_prelu_nodes(node, zeros[types[x]], names, count))
        count += 1
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    log.debug("rewrote %d PRelu nodes as Max(x, 0) + s * Min(x, 0)", count)
    return out, count


def _prelu_nodes(prelu: onnx.NodeProto, zero: str, names: set[str], index: int) -> list[onnx.NodeProto]:
    """Max(x, 0) + s * Min(x, 0), writing the PRelu's output name."""
    from onnx import helper

    x, slope = prelu.input
    base = prelu.name or f"prelu_{index}"

    def fresh(suffix: str) -> str:
        name = f"{base}/{suffix}"
        while name in names:
            name += "_"
        names.add(name)
        return name

    pos, neg, scaled = fresh("pos"), fresh("neg"), fresh("neg_scaled")
    return [
        helper.make_node("Max", [x, zero], [pos], name=fresh("max")),
        helper.make_node("Min", [x, zero], [neg], name=fresh("min")),
        helper.make_node("Mul", [slope, neg], [scaled], name=fresh("scale")),
        helper.make_node("Add", [pos, scaled], [prelu.output[0]], name=fresh("add")),
    ]


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor name ONNX shape inference can type (the legacy exporter emits
    no value_info for intermediate tensors)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.HasField("tensor_type") and info.type.tensor_type.elem_type:
            types[info.name] = info.type.tensor_type.elem_type
    return types


def _used_names(model: onnx.ModelProto) -> set[str]:
    graph = model.graph
    names = {n.name for n in graph.node} | {t.name for t in graph.initializer}
    names |= {i.name for i in graph.input} | {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        names.update(node.output)
    return names


def _add_zero(model: onnx.ModelProto, elem_type: int, names: set[str]) -> str:
    """Append a scalar 0 initializer of ``elem_type`` and return its name."""
    from onnx import helper, numpy_helper

    name = ZERO_PREFIX
    while name in names:
        name += "_"
    names.add(name)
    zero = np.zeros((), helper.tensor_dtype_to_np_dtype(elem_type))
    model.graph.initializer.append(numpy_helper.from_array(zero, name))
    return name
