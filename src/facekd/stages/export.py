"""Stage ``export``: a model directory -> ``exports/<model>.onnx`` + ``reports/export/<model>.json``.

With ``export.int8.enabled`` it also writes ``exports/<model>.int8.onnx`` (:mod:`facekd.export.quantize`,
calibrated on ``export.int8.calibration_images`` crops of ``<data.prepared_dir>/train.rec``) and adds
its size, op counts and float-vs-INT8 embedding cosines on the parity images to the report.

The report is written whether or not the checks pass; a failed check then stops the stage with an
:class:`ExportError` that lists the failures and points at the report.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facekd import layout
from facekd.config import Params
from facekd.errors import DataError, ExportError

if TYPE_CHECKING:
    from facekd.export.onnx import Exporter

log = logging.getLogger(__name__)

PARITY_BINS = ("synth_lfw.bin", "lfw.bin")
PARITY_IMAGES = 64


def parity_bin(eval_dir: Path) -> Path:
    """The verification set parity is checked on: synth_lfw.bin, else lfw.bin, else the first .bin."""
    preferred = [eval_dir / name for name in PARITY_BINS]
    found = [p for p in preferred if p.is_file()] + sorted(eval_dir.glob("*.bin"))
    if not found:
        raise DataError(
            f"{eval_dir}: no verification .bin to check ONNX parity on real faces; run the prepare stage "
            "(or set data.eval_dir)"
        )
    return found[0]


def parity_images(params: Params) -> np.ndarray:
    """The first real evaluation images, (N, 112, 112, 3) uint8 RGB, the ones parity is checked on."""
    from facekd.data.bins import decode_bin

    images, _ = decode_bin(parity_bin(Path(params.data.eval_dir)))
    return images[:PARITY_IMAGES]


def run(params: Params, model_name: str, *, exporter: Exporter | None = None) -> None:
    """Export ``model_name`` to ONNX, check it, write its report; ExportError if a check fails.

    ``exporter`` overrides ``params.export.exporter`` (see :mod:`facekd.export.onnx`).
    """
    from facekd.export.checks import run_checks
    from facekd.export.onnx import export_onnx
    from facekd.fsio import write_json
    from facekd.models.store import load_backbone


    source = layout.model_dir(model_name)
    if not (source / "meta.json").is_file():
        raise ExportError(
            f"{source}: no trained model '{model_name}' here (meta.json missing); train it first "
            f"({'facekd train-teacher' if model_name == 'teacher' else f'facekd distill {model_name}'})"
        )
    model, meta = load_backbone(source)
    images = parity_images(params)
    metadata = {key: meta.get(key, "") for key in ("arch", "method", "teacher", "embedding_size", "data_hash")}
    metadata["model"] = model_name
    export = export_onnx(model, layout.onnx_path(model_name), opset=params.export.opset, metadata=metadata,
                         exporter=exporter or params.export.exporter, rewrite_prelu=params.export.rewrite_prelu)
    checks = run_checks(layout.onnx_path(model_name), model, images, params.export)
    report = {
        "model": model_name,
        "source": str(source),
        "export": export,
        "checks": checks,
        "meta": {key: meta.get(key) for key in ("arch", "method", "teacher", "params_m", "gmacs", "data_hash")},
    }
    if params.export.int8.enabled and checks["passed"]:  # no INT8 copy of a graph that failed its checks
        report["int8"] = _int8(params, model_name, images)
    write_json(layout.export_report(model_name), report)
    if not checks["passed"]:
        raise ExportError(
            f"{layout.onnx_path(model_name)}: export checks failed: {'; '.join(checks['failures'])} "
            f"(details in {layout.export_report(model_name)})"
        )
    log.info(
        "%s: exported in %.1f s; min cosine %.7f; batch-1 latency onnxruntime %.2f ms vs torch %.2f ms",
        layout.onnx_path(model_name),
        export["export_seconds"],
        min(p["min_cosine"] for p in checks["parity"].values()),
        checks["latency_ms"]["onnxruntime_b1"],
        checks["latency_ms"]["torch_b1"],
    )


def _int8(params: Params, model_name: str, parity: np.ndarray) -> dict:
    """Quantize the exported file; its info plus the cosines to float on the parity images."""
    from facekd.data.dataset import open_training_data
    from facekd.export.quantize import calibration_sample, embedding_cosines, quantize_int8

    int8 = params.export.int8
    training = open_training_data(Path(params.data.prepared_dir), "rec", augment=False)
    sample = calibration_sample(training, int8.calibration_images)
    info = quantize_int8(layout.onnx_path(model_name), layout.int8_path(model_name), sample, int8)
    info["calibration_data"] = training.name
    info["cosine_to_float"] = embedding_cosines(layout.onnx_path(model_name), layout.int8_path(model_name), parity)
    log.info("%s: %d bytes (float %d), embedding cosine to float min %.4f median %.4f", layout.int8_path(model_name),
             info["file_bytes"], layout.onnx_path(model_name).stat().st_size, info["cosine_to_float"]["min"],
             info["cosine_to_float"]["median"])
    return info
