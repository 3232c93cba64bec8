"""A face embedder shipped as ONNX (model-zoo style), run by onnxruntime behind a backbone's interface.

The strongest public face models come as ONNX only (insightface's packs: ``w600k_r50.onnx``,
``glintr100.onnx``). :class:`OnnxBackbone` is an ``nn.Module`` without parameters whose forward
takes what every facekd backbone takes, ``(B, 3, 112, 112)`` float RGB ``(x - 127.5) / 127.5``,
converts it to the file's own input convention and returns its ``(B, d)`` output raw (the methods
and the evaluation L2-normalise where they need to). So evaluation, the teacher-feature cache and
an online teacher run it unchanged; nothing can fine-tune it (no parameters).

Input conventions (:class:`InputConvention`): colour order, mean and std. insightface's
recognition models take RGB ``(x - 127.5) / 127.5`` (its loader swaps OpenCV's BGR to RGB), and
some carry that normalisation inside the graph as leading Sub/Mul nodes, which its loader detects
among the first 8 nodes and then feeds raw pixels; ``normalization: auto`` does the same.

:func:`inspect_onnx` checks a file before any work: one input ``N x 3 x 112 x 112`` (N symbolic
or fixed), one output ``N x d``; a fixed batch is honoured by running in chunks of that size.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from facekd.errors import DataError

if TYPE_CHECKING:
    import onnx
    import onnxruntime

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
IMAGE_SHAPE = (3, 112, 112)
# insightface's check (model_zoo/arcface_onnx.py): normalisation is in the graph when the first 8
# nodes include a Sub and a Mul (by name, as its exports name them; by op type as well here).
LEADING_NODES = 8


@dataclass(frozen=True)
class InputConvention:
    """How the file wants its pixels: ``(pixel - mean) / std`` in ``color`` order, unless the graph
    normalises itself (``inside``: raw 0..255 pixels are fed); ``auto`` detects that."""

    color: Literal["rgb", "bgr"] = "rgb"
    mean: float = 127.5
    std: float = 127.5
    normalization: Literal["auto", "outside", "inside"] = "auto"


@dataclass(frozen=True)
class OnnxInfo:
    """What :func:`inspect_onnx` found: tensor names, fixed batch (None = dynamic), output size."""

    path: Path
    input_name: str
    output_name: str
    batch: int | None
    dim: int
    normalizes_inside: bool
    opset: int | None
    params_m: float


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    dims = value_info.type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def _graph_normalizes(graph: onnx.GraphProto) -> bool:
    """insightface's rule: a Sub and a Mul among the first nodes mean the graph takes raw pixels."""
    first = graph.node[:LEADING_NODES]
    sub = any(n.op_type == "Sub" or n.name.startswith(("Sub", "_minus")) for n in first)
    mul = any(n.op_type == "Mul" or n.name.startswith(("Mul", "_mul")) for n in first)
    return sub and mul


def _load_proto(path: Path) -> onnx.ModelProto:
    import onnx

    if not path.is_file():
        raise DataError(f"{path}: missing (expected an ONNX face embedder, e.g. insightface's w600k_r50.onnx)")
    try:
        return onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - protobuf raises DecodeError and friends
        raise DataError(f"{path}: not an ONNX model ({type(err).__name__}: {str(err)[:200]})") from None


def inspect_onnx(path: str | Path) -> OnnxInfo:
    """Check that ``path`` is one input ``N x 3 x 112 x 112`` -> one output ``N x d``; say what was found otherwise."""
    path = Path(path)
    model = _load_proto(path)
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        found = ", ".join(f"{i.name} {_dims(i)}" for i in inputs) or "none"
        raise DataError(f"{path}: a face embedder has one image input N x 3 x 112 x 112; found {len(inputs)}: {found}")
    shape = _dims(inputs[0])
    if len(shape) != 4 or tuple(shape[1:]) != IMAGE_SHAPE:
        raise DataError(f"{path}: input '{inputs[0].name}' is {shape}; expected N x 3 x 112 x 112 "
                        "(aligned 112x112 face crops, channels first)")
    if len(graph.output) != 1:
        names = ", ".join(f"{o.name} {_dims(o)}" for o in graph.output)
        raise DataError(f"{path}: a face embedder has one output N x d (the embedding); found {len(graph.output)}: {names}")
    out_shape = _dims(graph.output[0])
    if len(out_shape) != 2 or not isinstance(out_shape[1], int) or out_shape[1] < 1:
        raise DataError(f"{path}: output '{graph.output[0].name}' is {out_shape}; expected N x d (an embedding per image)")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    n_params = sum(int(np.prod(i.dims)) for i in graph.initializer)
    return OnnxInfo(path, inputs[0].name, graph.output[0].name,
                    shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None,
                    int(out_shape[1]), _graph_normalizes(graph), opset, round(n_params / 1e6, 4))


def open_session(model: str | Path | bytes, threads: int = 0) -> onnxruntime.InferenceSession:
    """A CPU onnxruntime session on a file or serialized model; 0 threads = onnxruntime's default.

    A file onnxruntime cannot load (unsupported opset or operator) raises a :class:`DataError`
    naming it.
    """
    import onnxruntime

    # onnxruntime's own log (device discovery on GPU hosts, provider notes) warns on every first
    # session; the CPU provider is chosen on purpose, so only its errors are worth showing.
    onnxruntime.set_default_logger_severity(3)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else str(model)
    try:
        return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - onnxruntime raises its own untyped failures
        where = "the serialized model" if isinstance(model, bytes) else str(model)
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{where}: onnxruntime (CPU) cannot load it: {first[:300]}") from None


class OnnxBackbone(nn.Module):
    """``forward((B, 3, 112, 112) facekd-normalised RGB) -> (B, d)`` raw output of an ONNX embedder."""

    def __init__(self, path: str | Path, convention: InputConvention = InputConvention(), threads: int = 0) -> None:
        super().__init__()
        self.info = inspect_onnx(path)
        self.convention = convention
        self.raw_pixels = (convention.normalization == "inside"
                           or (convention.normalization == "auto" and self.info.normalizes_inside))
        self.session = open_session(self.info.path, threads)
        self.embedding_size = self.info.dim
        # RGB (x - 127.5) / 127.5 fed from outside is exactly what facekd's loaders produce
        self.takes_facekd_input = (not self.raw_pixels and convention.color == "rgb"
                                   and (convention.mean, convention.std) == (127.5, 127.5))

    def model_input(self, x: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) facekd input -> the file's own input, float32 NCHW numpy."""
        if self.takes_facekd_input:  # facekd's own export: no round trip through 0..255 (1.7 s of a 29 s stage)
            return x.detach().float().cpu().contiguous().numpy()
        pixels = x.detach().float().cpu().contiguous() * 127.5 + 127.5  # (B, 3, H, W) RGB 0..255
        if self.convention.color == "bgr":
            pixels = pixels.flip(1)
        if not self.raw_pixels:
            pixels = (pixels - self.convention.mean) / self.convention.std
        return pixels.contiguous().numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feed = self.model_input(x)
        chunk = self.info.batch or len(feed)
        outs = []
        for start in range(0, len(feed), chunk):
            part = feed[start:start + chunk]
            short = chunk - len(part)
            if short:  # a fixed-batch file: pad the last chunk, keep only the real rows
                part = np.concatenate([part, np.zeros((short, *part.shape[1:]), part.dtype)])
            out = self.session.run([self.info.output_name], {self.info.input_name: part})[0]
            outs.append(np.asarray(out, dtype=np.float32)[:len(part) - short])
        return torch.from_numpy(np.concatenate(outs)).to(x.device)
