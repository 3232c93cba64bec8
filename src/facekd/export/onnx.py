"""Export a backbone to one self-contained ONNX file in the ICCV21-MFR submission layout.

Graph contract: input ``data`` (batch, 3, 112, 112) float32, RGB normalised as
``(x - 127.5) / 127.5``; one output ``embedding`` (batch, d); the batch dimension is dynamic.

Exporter choice (torch 2.13, measured on this machine): the default torch.export-based ("dynamo")
exporter gives a cleaner graph (BatchNorm folded into the convolutions where it can, no Identity /
Constant nodes: MobileFaceNet 96 nodes vs 128 with the legacy exporter) and is the supported path;
the TorchScript ("legacy") exporter is about 4x faster but deprecated and due for removal. Both
match PyTorch to cosine >= 0.9999999 on iResNet and MobileFaceNet, PReLU and BatchNorm1d included.
So "dynamo" is the default and "legacy" the fallback when the dynamo exporter raises; the exporter
used is recorded in the file's metadata. Either way the file is built in memory and written once,
so there is never a ``.onnx.data`` side file (the dynamo exporter writes one unless told not to).

Before the ONNX checker runs, every PRelu is rewritten as ``Max(x, 0) + s * Min(x, 0)``
(:mod:`facekd.export.rewrite`: bit-identical outputs, 1.3-1.7x faster batch-1 MobileFaceNet in
onnxruntime on 1 thread). ``rewrite_prelu=False`` keeps the exporter's plain graph (one PRelu
node each, for a runtime with a faster PRelu kernel or a reader who wants the stock layout); the
count is in the metadata.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from facekd.errors import ExportError
from facekd.export.rewrite import rewrite_prelu as _rewrite_prelu
from facekd.fsio import write_bytes

if TYPE_CHECKING:
    import onnx
    from torch import nn

log = logging.getLogger(__name__)

INPUT_NAME = "data"
OUTPUT_NAME = "embedding"
IMAGE_SIZE = 112
PIXEL_MEAN = 127.5
PIXEL_STD = 127.5
NORMALISATION = "RGB, (x - 127.5) / 127.5, NCHW float32"

Exporter = Literal["auto", "dynamo", "legacy"]


def to_input(images_uint8: np.ndarray) -> np.ndarray:
    """(N, 112, 112, 3) uint8 RGB -> (N, 3, 112, 112) float32 normalised as the graph expects."""
    x = (images_uint8.astype(np.float32) - PIXEL_MEAN) / PIXEL_STD  # (N, H, W, 3)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))  # (N, 3, H, W)


def export_onnx(
    model: nn.Module,
    out_path: str | Path,
    *,
    opset: int,
    metadata: Mapping[str, object] | None = None,
    exporter: Exporter = "auto",
    rewrite_prelu: bool = True,
) -> dict:
    """Write ``model`` (moved to CPU, eval mode) to ``out_path`` as one ONNX file.

    ``metadata`` (e.g. arch, method) is stored as ONNX metadata properties beside ``opset``,
    ``exporter``, ``normalisation`` and ``prelu_rewritten``. ``exporter="auto"`` tries dynamo, then
    legacy. ``rewrite_prelu`` replaces PRelu nodes by their Max/Min form (see the module docstring).
    Returns ``{"path", "opset", "exporter", "prelu_rewritten", "export_seconds", "file_bytes",
    "sha256", "embedding_size"}``.
    """
    model = model.to("cpu").eval()
    start = time.perf_counter()
    proto, used = _export_proto(model, opset, exporter)
    rewritten = 0
    if rewrite_prelu:
        proto, rewritten = _rewrite_prelu(proto)
    seconds = time.perf_counter() - start
    props = {"opset": opset, "exporter": used, "normalisation": NORMALISATION, "prelu_rewritten": rewritten,
             **(metadata or {})}
    _set_metadata(proto, props)
    _check_proto(proto, out_path)
    blob = proto.SerializeToString()
    write_bytes(out_path, blob)
    embedding_size = proto.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    log.info("exported %s with the %s exporter in %.1f s (%d bytes)", out_path, used, seconds, len(blob))
    return {
        "path": str(out_path),
        "opset": opset,
        "exporter": used,
        "prelu_rewritten": rewritten,
        "export_seconds": round(seconds, 3),
        "file_bytes": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "embedding_size": int(embedding_size),
    }


def _export_proto(model: nn.Module, opset: int, exporter: Exporter) -> tuple[onnx.ModelProto, str]:
    """Run the chosen exporter; with "auto" fall back to legacy when dynamo raises."""
    import torch

    # Batch 2, not 1: torch.export specialises a dimension whose example size is 1.
    example = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    if exporter in ("auto", "dynamo"):
        try:
            return _export_dynamo(model, example, opset), "dynamo"
        except Exception as err:  # noqa: BLE001 - any exporter failure is reported or retried below
            if exporter == "dynamo":
                raise ExportError(f"ONNX export (dynamo exporter, opset {opset}) failed: {err}") from err
            log.warning("dynamo ONNX exporter failed (%s); falling back to the legacy exporter", err)
    try:
        return _export_legacy(model, example, opset), "legacy"
    except Exception as err:  # noqa: BLE001
        raise ExportError(f"ONNX export (legacy exporter, opset {opset}) failed: {err}") from err


@contextlib.contextmanager
def _quiet_loggers(names: tuple[str, ...], level: int = logging.WARNING) -> Iterator[None]:
    """Raise these loggers' levels for the duration (the exporter logs every optimisation step)."""
    loggers = [logging.getLogger(name) for name in names]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(level, lg.getEffectiveLevel()))
    try:
        yield
    finally:
        for lg, old in zip(loggers, before):
            lg.setLevel(old)


def _export_dynamo(model: nn.Module, example, opset: int) -> onnx.ModelProto:
    import torch
    from torch.export import Dim

    # onnx_ir/onnxscript log each pass at INFO; torch warns that torchvision ops are not registered.
    noisy = ("onnx_ir", "onnxscript", "torch.onnx._internal.exporter._registration")
    with _quiet_loggers(noisy[:2]), _quiet_loggers(noisy[2:], logging.ERROR), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch-internal pytree deprecation notices
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: Dim("batch")},),
            optimize=True,
            verbose=False,
        )
    return program.model_proto


def _export_legacy(model: nn.Module, example, opset: int) -> onnx.ModelProto:
    import onnx
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # chosen knowingly; see the module docstring
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return onnx.load_from_string(buffer.getvalue())


def _set_metadata(proto: onnx.ModelProto, props: Mapping[str, object]) -> None:
    """Replace the model's metadata properties by ``props`` (values as strings)."""
    del proto.metadata_props[:]
    for key, value in sorted(props.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(key), str(value)
    proto.producer_name = "facekd"


def _check_proto(proto: onnx.ModelProto, out_path: str | Path) -> None:
    """The ONNX checker plus the graph contract (names, one output) before anything is written."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as err:
        raise ExportError(f"{out_path}: exported graph is not valid ONNX: {err}") from None
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise ExportError(
            f"{out_path}: exported graph has inputs {inputs} and outputs {outputs}; expected "
            f"['{INPUT_NAME}'] -> ['{OUTPUT_NAME}'] (does the model's forward return more than one tensor?)"
        )
