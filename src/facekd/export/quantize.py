"""INT8 copy of an exported model: onnxruntime static quantization, QDQ format, per-channel weights.

Input contract: the INT8 graph takes exactly what the float one takes (input ``data``, RGB,
``(x - 127.5) / 127.5``, NCHW float32; :func:`facekd.export.onnx.to_input`) and returns the same
``embedding``; the QuantizeLinear/DequantizeLinear pairs sit inside the graph, and onnxruntime's
CPU provider fuses ``DequantizeLinear -> Conv -> QuantizeLinear`` into one QLinearConv.

Choices (onnxruntime 1.31, ``quantize_static``'s CPU guidance, measured on this AVX2 CPU):

- uint8 activations (asymmetric: the ranges after a PReLU are lopsided), int8 weights per output
  channel, and 7-bit weights (``reduce_range``): x86 CPUs without VNNI multiply uint8 x int8 pairs
  into saturating int16 sums. Full-range weights dropped the min cosine to float on this CPU from
  0.9927 to 0.9149 (embedded mfn student) and from 0.9996 to 0.9770 (embedded iresnet teacher).
- ``quant_pre_process`` first (ONNX shape inference + onnxruntime's basic graph optimisations):
  it folds the constant BatchNorm inputs of the embedding layer (otherwise onnxruntime warns that
  the bias is not an initializer and leaves that layer float), and turns MatMul + BatchNorm into one
  Gemm. Symbolic shape inference is skipped: a CNN's shapes are static but for the batch.
- Only the compute ops (Conv, MatMul, Gemm) by default: quantizing the PReLU's Max/Min/Mul/Add too
  puts a Q/DQ pair around every elementwise op (both slower and less accurate, see config.Int8Params).
- MinMax calibration over a sample spread evenly over the training set (every identity, no
  randomness), batch by batch.
"""
from __future__ import annotations

import hashlib
import logging
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facekd.config import Int8Params
from facekd.errors import DataError, ExportError
from facekd.export.checks import cosine_rows, open_session
from facekd.export.onnx import IMAGE_SIZE, INPUT_NAME, _set_metadata, to_input
from facekd.fsio import write_bytes

if TYPE_CHECKING:
    import onnx

    from facekd.data.dataset import FaceDataset

log = logging.getLogger(__name__)

ACTIVATION_TYPE = "QUInt8"
WEIGHT_TYPE = "QInt8"
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
CALIBRATION_BATCH = 32
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)


def check_calibration_images(images: np.ndarray, expected: int) -> None:
    """ExportError unless ``images`` is ``expected`` decoded face crops, (N, 112, 112, 3) uint8 RGB."""
    shape = tuple(getattr(images, "shape", ()))
    dtype = getattr(images, "dtype", type(images).__name__)
    if dtype != np.uint8 or len(shape) != 4 or shape[1:] != IMAGE_SHAPE:
        raise ExportError(
            f"INT8 calibration needs training face crops as a (N, {IMAGE_SIZE}, {IMAGE_SIZE}, 3) uint8 RGB array "
            f"(decoded, not yet normalised), got {dtype} {shape}"
        )
    if shape[0] != expected:
        raise ExportError(
            f"INT8 calibration sample has {shape[0]} images, export.int8.calibration_images asks for {expected}; "
            "pass that many (or change the param)"
        )


def calibration_sample(dataset: FaceDataset, count: int) -> np.ndarray:
    """``count`` training images spread evenly over ``dataset`` (sorted by identity, so every
    identity contributes), (count, 112, 112, 3) uint8 RGB, unflipped."""
    if len(dataset) < count:
        raise DataError(
            f"{dataset.name}: {len(dataset)} training images, fewer than export.int8.calibration_images={count}; "
            "lower that param"
        )
    indices = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    return np.stack([dataset.load(int(i)) for i in indices])


class _Batches:
    """onnxruntime's CalibrationDataReader protocol (get_next / rewind) over normalised batches."""

    def __init__(self, images_uint8: np.ndarray) -> None:
        self.images = images_uint8
        self._it = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(self.images), CALIBRATION_BATCH):
            yield {INPUT_NAME: to_input(self.images[start : start + CALIBRATION_BATCH])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def float_nodes(model: onnx.ModelProto, rules: Sequence[str]) -> list[str]:
    """Names of the nodes ``rules`` keep in float (see config.Int8Params.keep_float).

    ONNX nodes are stored in topological order, so "every node after the last MatMul/Gemm" is the
    embedding layer's tail (its BatchNorm, a Flatten) and nothing upstream.
    """
    nodes = list(model.graph.node)
    names: list[str] = []
    if "first_conv" in rules:
        convs = [n for n in nodes if n.op_type == "Conv"]
        if not convs:
            raise ExportError("export.int8.keep_float has 'first_conv' but the graph has no Conv node")
        names.append(convs[0].name)
    if "embedding" in rules:
        linear = [i for i, n in enumerate(nodes) if n.op_type in ("MatMul", "Gemm")]
        if not linear:
            raise ExportError("export.int8.keep_float has 'embedding' but the graph has no MatMul/Gemm node")
        names += [n.name for n in nodes[linear[-1] :]]
    return names


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """QuantizeLinear / DequantizeLinear nodes, and Conv / MatMul / Gemm nodes with int8 weights
    (in QDQ form: weight input produced by a DequantizeLinear) or float ones."""
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    types = Counter(node.op_type for node in model.graph.node)
    counts = {"quantize_linear": types["QuantizeLinear"], "dequantize_linear": types["DequantizeLinear"]}
    for kind, ops in (("conv", ("Conv",)), ("matmul", ("MatMul", "Gemm"))):
        nodes = [n for n in model.graph.node if n.op_type in ops]
        int8 = sum(producers.get(n.input[1]) == "DequantizeLinear" for n in nodes)
        counts[f"{kind}_int8"], counts[f"{kind}_float"] = int8, len(nodes) - int8
    return counts


def quantize_int8(float_path: str | Path, out_path: str | Path, images_uint8: np.ndarray, params: Int8Params) -> dict:
    """Write the INT8 copy of ``float_path`` to ``out_path`` (one file, written once), calibrated on
    ``images_uint8`` (exactly ``params.calibration_images`` crops).

    Returns ``{"path", "file_bytes", "sha256", "ops", "kept_float", "calibration_images",
    "activation_type", "weight_type", "per_channel", "reduce_range", "ops_quantized",
    "quantize_seconds"}``.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    check_calibration_images(images_uint8, params.calibration_images)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="facekd-int8-") as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        quant_pre_process(str(float_path), str(prepared), skip_symbolic_shape=True)
        kept = float_nodes(onnx.load(str(prepared)), params.keep_float)
        quantize_static(
            str(prepared), str(quantized), _Batches(images_uint8),  # type: ignore[arg-type] - duck-typed reader
            quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=params.reduce_range,
            activation_type=QuantType[ACTIVATION_TYPE], weight_type=QuantType[WEIGHT_TYPE],
            op_types_to_quantize=list(COMPUTE_OPS) if params.ops == "compute" else None,
            nodes_to_exclude=kept,
        )
        proto = onnx.load(str(quantized))
    # The float model's metadata (arch, method, normalisation...) plus how this copy was made.
    props = {p.key: p.value for p in onnx.load(str(float_path), load_external_data=False).metadata_props}
    _set_metadata(proto, {**props, "quantization": f"static QDQ {ACTIVATION_TYPE}/{WEIGHT_TYPE} per-channel, "
                                                   f"ops {params.ops}, reduce_range {params.reduce_range}",
                          "calibration_images": len(images_uint8), "keep_float": ",".join(params.keep_float)})
    blob = proto.SerializeToString()
    write_bytes(out_path, blob)
    seconds = time.perf_counter() - start
    log.info("quantized %s -> %s in %.1f s (%d bytes)", float_path, out_path, seconds, len(blob))
    return {
        "path": str(out_path),
        "file_bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "ops": op_counts(proto),
        "kept_float": kept,
        "calibration_images": len(images_uint8),
        "activation_type": ACTIVATION_TYPE,
        "weight_type": WEIGHT_TYPE,
        "per_channel": True,
        "reduce_range": params.reduce_range,
        "ops_quantized": params.ops,
        "quantize_seconds": round(seconds, 3),
    }


def embedding_cosines(float_path: str | Path, int8_path: str | Path, images_uint8: np.ndarray) -> dict:
    """Float vs INT8 embeddings of the same images: ``{"min", "median", "images"}`` of the row cosines."""
    x = to_input(images_uint8)
    a, b = (open_session(path, 1).run(None, {INPUT_NAME: x})[0] for path in (float_path, int8_path))
    cos = cosine_rows(a, b)
    return {"min": float(cos.min()), "median": float(statistics.median(cos.tolist())), "images": len(cos)}
