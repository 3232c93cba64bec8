"""Checks on an exported ONNX file: parity with PyTorch and the ICCV21-MFR submission rules.

Every MFR rule is a pure function of the loaded graph (or of a number) returning
``{"value": ..., "ok": bool}`` (plus ``"limit"`` where there is one), so a test can hit each rule
with a small hand-made graph. The rules follow the challenge's validator (insightface
``challenges/iccv21-mfr/onnx_helper.py``): one input of 112x112, one output, at least 8 nodes, no
initializer whose item size is below 4 bytes, <= 1 GB, <= 512-d features; and if the first 8 nodes
are named Sub*/_minus* and Mul*/_mul* the server stops normalising the input, which would feed our
graph raw pixels. We also require a dynamic batch, a 2-D output, no external data and finite
outputs.
"""
from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facekd.config import ExportParams
from facekd.errors import ExportError
from facekd.export.onnx import IMAGE_SIZE, INPUT_NAME, to_input
from facekd.models.onnx_backbone import open_session

if TYPE_CHECKING:
    import onnx
    import onnxruntime
    from torch import nn

log = logging.getLogger(__name__)

MIN_NODES = 8
NAN_BATCH = 32
PARITY_BATCH = 8
PARITY_SINGLES = 4
# Latency is timed on one thread for both runtimes: comparable across machines and not swamped by
# other jobs on a shared CPU (with 2 busy cores torch's batch-1 time swung 60-1300 ms on 2 threads).
LATENCY_THREADS = 1


# --- MFR rules: pure functions ------------------------------------------------------------------


def _shape(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    """Declared shape: ints for fixed dims, the symbol for dynamic ones, None when unknown."""
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs (old IR versions also list the initializers as inputs)."""
    weights = {init.name for init in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in weights]


def rule_one_input(model: onnx.ModelProto) -> dict:
    names = [i.name for i in graph_inputs(model)]
    return {"value": names, "ok": len(names) == 1}


def rule_input_shape(model: onnx.ModelProto) -> dict:
    """(batch, 3, 112, 112) with a symbolic batch dimension."""
    inputs = graph_inputs(model)
    shape = _shape(inputs[0]) if inputs else []
    ok = len(shape) == 4 and isinstance(shape[0], str) and shape[1:] == [3, IMAGE_SIZE, IMAGE_SIZE]
    return {"value": shape, "ok": ok}


def rule_one_output(model: onnx.ModelProto) -> dict:
    names = [o.name for o in model.graph.output]
    return {"value": names, "ok": len(names) == 1}


def rule_output_2d(model: onnx.ModelProto) -> dict:
    shapes = [_shape(o) for o in model.graph.output]
    return {"value": shapes, "ok": len(shapes) == 1 and len(shapes[0]) == 2}


def rule_output_dim(model: onnx.ModelProto, max_dim: int) -> dict:
    """The (static) feature size of the first output, at most ``max_dim``."""
    shape = _shape(model.graph.output[0]) if model.graph.output else []
    dim = shape[-1] if shape and isinstance(shape[-1], int) else None
    return {"value": dim, "limit": max_dim, "ok": dim is not None and dim <= max_dim}


def rule_weight_itemsize(model: onnx.ModelProto) -> dict:
    """No weight stored with fewer than 4 bytes per item (fp16, bf16, int8, ...).

    The validator checks initializers; Constant nodes hold weights too, so they are checked as well.
    """
    from onnx import TensorProto, helper

    tensors = list(model.graph.initializer)
    tensors += [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    small = []
    for tensor in tensors:
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        if dtype.itemsize < 4:
            small.append(f"{tensor.name}:{TensorProto.DataType.Name(tensor.data_type)}")
    return {"value": small, "ok": not small}


def rule_self_contained(model: onnx.ModelProto) -> dict:
    """No initializer kept in an external data file (a submission is one file)."""
    from onnx import TensorProto

    external = [t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    return {"value": external, "ok": not external}


def rule_file_size(file_bytes: int, max_bytes: int) -> dict:
    return {"value": file_bytes, "limit": max_bytes, "ok": file_bytes <= max_bytes}


def rule_node_count(model: onnx.ModelProto, min_nodes: int = MIN_NODES) -> dict:
    count = len(model.graph.node)
    return {"value": count, "limit": min_nodes, "ok": count >= min_nodes}


def rule_server_normalises(model: onnx.ModelProto) -> dict:
    """The validator normalises unless the first 8 node names start with Sub/_minus and Mul/_mul."""
    names = [n.name for n in model.graph.node[:MIN_NODES]]
    sub = any(n.startswith(("Sub", "_minus")) for n in names)
    mul = any(n.startswith(("Mul", "_mul")) for n in names)
    raw = sub and mul
    return {"value": "server feeds raw pixels" if raw else "server normalises (127.5, 127.5)", "ok": not raw}


def rule_opset(model: onnx.ModelProto, expected: int) -> dict:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    return {"value": opset, "limit": expected, "ok": opset == expected}


def rule_finite(embeddings: np.ndarray) -> dict:
    """Every output value finite for a batch of real images."""
    bad = int(np.size(embeddings) - np.isfinite(embeddings).sum())
    return {"value": bad, "ok": bad == 0}


def mfr_rules(model: onnx.ModelProto, file_bytes: int, params: ExportParams) -> dict[str, dict]:
    """Every static rule on one graph, by name."""
    return {
        "one_input": rule_one_input(model),
        "input_shape": rule_input_shape(model),
        "one_output": rule_one_output(model),
        "output_2d": rule_output_2d(model),
        "output_dim": rule_output_dim(model, params.max_output_dim),
        "weight_itemsize": rule_weight_itemsize(model),
        "self_contained": rule_self_contained(model),
        "file_size": rule_file_size(file_bytes, params.max_file_bytes),
        "node_count": rule_node_count(model),
        "server_normalises": rule_server_normalises(model),
        "opset": rule_opset(model, params.opset),
    }


# --- parity and latency ---------------------------------------------------------------------------


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) cosine similarity of matching rows of two (N, d) arrays."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    norms = np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1)
    return (a64 * b64).sum(axis=1) / np.maximum(norms, 1e-12)


def _compare(ort_out: np.ndarray, torch_out: np.ndarray) -> dict:
    return {
        "min_cosine": float(cosine_rows(ort_out, torch_out).min()),
        "max_abs_diff": float(np.abs(ort_out.astype(np.float64) - torch_out).max()),
    }


def parity(session: onnxruntime.InferenceSession, model: nn.Module, images_uint8: np.ndarray) -> dict:
    """onnxruntime vs PyTorch: the first images one at a time ("batch1") and as one batch ("batchN")."""
    torch_fn, ort_fn = _torch_embed(model), _ort_embed(session)
    x_single = to_input(images_uint8[:PARITY_SINGLES])  # (k, 3, 112, 112)
    single_ort = np.concatenate([ort_fn(x_single[i : i + 1]) for i in range(len(x_single))])
    single_torch = np.concatenate([torch_fn(x_single[i : i + 1]) for i in range(len(x_single))])
    x_batch = to_input(images_uint8[:PARITY_BATCH])
    batch = _compare(ort_fn(x_batch), torch_fn(x_batch))
    return {
        "batch1": {**_compare(single_ort, single_torch), "images": len(x_single)},
        "batchN": {**batch, "batch": len(x_batch)},
    }


def latency_ms(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, runs: int) -> float:
    """Median wall time of ``runs`` calls after one warm-up call, in milliseconds."""
    fn(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 3)


def _torch_embed(model: nn.Module) -> Callable[[np.ndarray], np.ndarray]:
    import torch

    def embed(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return model(torch.from_numpy(x)).float().numpy()

    return embed


def _ort_embed(session: onnxruntime.InferenceSession) -> Callable[[np.ndarray], np.ndarray]:
    return lambda x: session.run(None, {INPUT_NAME: x})[0]


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    """Run PyTorch on ``threads`` threads for the duration, then restore the previous setting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- all checks -----------------------------------------------------------------------------------


def _check_images(images_uint8: np.ndarray) -> None:
    shape = tuple(getattr(images_uint8, "shape", ()))
    if getattr(images_uint8, "dtype", None) != np.uint8 or shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3) or not shape[0]:
        raise ExportError(
            f"export checks need real face images as a (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) uint8 RGB array, "
            f"got {getattr(images_uint8, 'dtype', type(images_uint8).__name__)} {shape}"
        )


def _failures(rules: dict[str, dict], par: dict, min_cosine: float) -> list[str]:
    failures = [
        f"mfr rule {name}: value {r['value']!r}" + (f" (limit {r['limit']})" if "limit" in r else "")
        for name, r in rules.items()
        if not r["ok"]
    ]
    for key, res in par.items():
        if not res["min_cosine"] >= min_cosine:
            failures.append(f"parity {key}: min cosine {res['min_cosine']:.6f} < {min_cosine} (onnxruntime vs PyTorch)")
    return failures


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:400]


def _run_on_images(report: dict, path: Path, model: nn.Module, images_uint8: np.ndarray, params: ExportParams) -> None:
    """Fill ``report`` with the finite-output rule, parity and latency (needs a runnable graph)."""
    session = open_session(path)
    model.eval()
    batch32 = to_input(np.resize(images_uint8, (NAN_BATCH, IMAGE_SIZE, IMAGE_SIZE, 3)))  # images repeated to 32
    report["mfr_rules"]["finite_outputs"] = rule_finite(_ort_embed(session)(batch32))
    x1 = to_input(images_uint8[:1])
    with _torch_threads(LATENCY_THREADS):
        report["parity"] = parity(session, model, images_uint8)
        report["latency_ms"] = {
            "onnxruntime_b1": latency_ms(_ort_embed(open_session(path, LATENCY_THREADS)), x1, params.latency_runs),
            "torch_b1": latency_ms(_torch_embed(model), x1, params.latency_runs),
            "threads": LATENCY_THREADS,
        }


def run_checks(onnx_path: str | Path, model: nn.Module, images_uint8: np.ndarray, params: ExportParams) -> dict:
    """Parity, MFR rules and batch-1 latency of ``onnx_path`` against ``model`` (eval mode).

    Returns ``{"passed", "failures", "parity", "mfr_rules", "latency_ms", "opset", "file_bytes"}``;
    a graph onnxruntime cannot load or run is a failure in the report, not an exception.
    """
    import onnx

    _check_images(images_uint8)
    path = Path(onnx_path)
    if not path.is_file():
        raise ExportError(f"{path}: ONNX file not found; run the export first")
    file_bytes = path.stat().st_size
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - protobuf raises its own decode errors
        why = f"{type(err).__name__}: {err}"
        raise ExportError(f"{path}: not a readable ONNX file ({why}); export the model again") from None
    rules = mfr_rules(graph, file_bytes, params)
    report = {"opset": rules["opset"]["value"], "file_bytes": file_bytes, "mfr_rules": rules,
              "parity": {}, "latency_ms": {}}
    try:
        _run_on_images(report, path, model, images_uint8, params)
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types; record, don't crash
        report["failures"] = [f"onnxruntime cannot load or run the file: {_first_line(err)}"]
        report["failures"] += _failures(rules, {}, params.min_cosine)
        report["passed"] = False
        return report
    report["failures"] = _failures(rules, report["parity"], params.min_cosine)
    report["passed"] = not report["failures"]
    log.info("export checks on %s: %s", path, "passed" if report["passed"] else f"FAILED {report['failures']}")
    return report
