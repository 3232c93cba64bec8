"""Stages ``evaluate@<model>`` and ``evaluate_int8@<model>``: every benchmark in ``data/eval`` for
one model, or for its INT8 ONNX copy (``exports/<model>.int8.onnx``, run by onnxruntime).

Writes, under the evaluated name (``<model>``, or ``<model>.int8``): ``metrics/eval/<name>.json``
(DVC metrics), ``metrics/scores/<name>.npz`` (the scored IJB pairs, for the report's intervals),
``plots/roc/<name>.json`` (DVC plots, one ROC per benchmark), ``reports/roc/<name>.png``, and logs
the same numbers and the PNG to an MLflow run nested under the model's training run. The INT8
metrics also hold the cosine of every evaluated image's INT8 embedding to the float ONNX file's
(``cosine_to_float``; :mod:`facekd.evaluation.int8`).

Embeddings are cached per model file + benchmark + content hash of the images embedded, so
re-scoring does not re-embed, and a benchmark replaced under the same name is embedded afresh. The
INT8 copy keeps its cache in its own folder (``features/eval/<model>.int8``).

With ``distill.seeds`` > 1 a student's metrics also hold ``seeds``: its gate metric under every
training seed (``models/<model>/seeds/<seed>`` scored on the gate benchmark only), which the
report turns into a mean and spread over seeds.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from facekd import layout
from facekd.config import Params
from facekd.errors import DataError
from facekd.fsio import atomic_write, write_json

if TYPE_CHECKING:
    from torch import nn

    from facekd.evaluation.benchmarks import Embedder

log = logging.getLogger(__name__)


def run(params: Params, model_name: str, *, int8: bool = False) -> dict:
    """Score ``model_name`` (with ``int8``: its INT8 ONNX copy) on every benchmark; returns the metrics."""
    import torch

    from facekd.evaluation.benchmarks import score_all
    from facekd.evaluation.int8 import COSINE_KEY

    torch.set_num_threads(max(1, torch.get_num_threads()))
    if int8:
        name, (meta, header, embed) = layout.int8_name(model_name), _int8(params, model_name)
    else:
        name, (meta, header, embed) = model_name, _pytorch(params, model_name)
    scored = score_all(Path(params.data.eval_dir), embed, params.evaluate, name)
    metrics = {**header, **scored.metrics}
    if not int8 and not layout.is_teacher(model_name) and params.distill.seeds > 1:
        from facekd.evaluation.ranking import SEEDS_KEY

        metrics[SEEDS_KEY] = _other_seeds(params, model_name, metrics)
    if int8:
        metrics[COSINE_KEY] = embed.summary(str(layout.onnx_path(model_name)))
        cos = metrics[COSINE_KEY]
        log.info("%s: INT8 vs float embedding cosine over %d images: min %.4f, median %.4f",
                 name, cos["images"], cos["min"], cos["median"])
    png = _write_outputs(name, metrics, scored)
    _log_to_mlflow(params, meta, metrics, png, name=name, stage=f"evaluate{'_int8' if int8 else ''}@{model_name}")
    return metrics


def _cached(cache_dir: Path, file_hash: str, model: nn.Module, batch_size: int, *, flip: bool = True) -> Embedder:
    """embed(name, images) through ``model`` ((N, 2d) [image, mirror], or (N, d) without ``flip``),
    cached under ``cache_dir`` by model file, flip and images."""
    from facekd.evaluation.embed import EmbeddingCache, embed_images

    cache = EmbeddingCache(cache_dir)
    file_key = file_hash if flip else f"{file_hash}:no-flip"

    def embed(name: str, images: np.ndarray) -> np.ndarray:
        return cache.get_or_compute(EmbeddingCache.key(file_key, name, images),
                                    lambda: embed_images(model, images, batch_size=batch_size, flip=flip))
    return embed


def _header(model_name: str, meta: dict[str, Any]) -> dict[str, Any]:
    return {"model": model_name, "arch": meta.get("arch"), "params_m": meta.get("params_m"), "gmacs": meta.get("gmacs")}


def _pytorch(params: Params, model_name: str) -> tuple[dict, dict, Embedder]:
    """The model folder's backbone (trained weights, or an imported ONNX model): (meta, metrics header, embedder)."""
    from facekd.evaluation.embed import checkpoint_hash
    from facekd.models.store import load_backbone, weights_file

    src = layout.model_dir(model_name)
    weights = weights_file(src)
    if not weights.is_file():
        raise DataError(f"{src}: no trained model ({weights.name} missing); "
                        "run `dvc repro` for its training stage first")
    model, meta = load_backbone(src)
    # an imported ONNX model's input convention is part of what it computes
    key = checkpoint_hash(weights) + str(meta.get("input", ""))
    embed = _cached(layout.EVAL_FEATURES / model_name, key, model, params.evaluate.batch_size)
    return meta, _header(model_name, meta), embed


def _other_seeds(params: Params, model_name: str, metrics: dict) -> dict[str, float]:
    """The gate metric of the student under every training seed (``distill.seeds``): the first from
    ``metrics``, the others scored here on the gate benchmark only."""
    from facekd.evaluation.benchmarks import score_gate
    from facekd.evaluation.embed import checkpoint_hash
    from facekd.mlops.evidence import lookup
    from facekd.models.store import BACKBONE_FILE, load_backbone

    gate = params.registry.gate_metric
    first, *others = params.student_seeds()
    value = lookup(metrics, gate)
    values = {str(first): float(value) if isinstance(value, (int, float)) else float("nan")}
    for seed in others:
        folder = layout.seed_model_dir(model_name, seed)
        if not (folder / BACKBONE_FILE).is_file():
            raise DataError(f"{folder}: no student trained under seed {seed} (distill.seeds is "
                            f"{params.distill.seeds}); run `dvc repro "
                            f"{layout.training_stage(model_name, params.distill.head_sharing)}`")
        model, _ = load_backbone(folder)
        embed = _cached(layout.EVAL_FEATURES / model_name, checkpoint_hash(folder / BACKBONE_FILE), model,
                        params.evaluate.batch_size)
        values[str(seed)] = score_gate(Path(params.data.eval_dir), embed, params.evaluate, gate)
        log.info("%s, seed %d: %s %.4f", model_name, seed, gate, values[str(seed)])
    return values


def _int8(params: Params, model_name: str) -> tuple[dict, dict, Any]:
    """The INT8 ONNX copy, with the float ONNX file beside it as the cosine reference.

    Both run in onnxruntime through :class:`OnnxBackbone` with the project's export convention
    (RGB ``(x - 127.5) / 127.5`` fed from outside): detecting it from a QDQ graph's leading nodes
    would be a guess.
    """
    import torch

    from facekd.evaluation.embed import checkpoint_hash
    from facekd.evaluation.int8 import AgreementEmbedder
    from facekd.models.onnx_backbone import InputConvention, OnnxBackbone
    from facekd.models.store import read_meta

    meta = read_meta(layout.model_dir(model_name))
    float_file, quantized_file = layout.onnx_path(model_name), layout.int8_path(model_name)
    for path in (float_file, quantized_file):
        if not path.is_file():
            raise DataError(f"{path}: missing; run `dvc repro export@{model_name}` with export.int8.enabled: true")
    convention, threads = InputConvention(normalization="outside"), torch.get_num_threads()
    batch, cache_dir = params.evaluate.batch_size, layout.EVAL_FEATURES / layout.int8_name(model_name)
    embed = AgreementEmbedder(
        _cached(cache_dir, checkpoint_hash(quantized_file), OnnxBackbone(quantized_file, convention, threads), batch),
        _cached(cache_dir, checkpoint_hash(float_file), OnnxBackbone(float_file, convention, threads), batch,
                flip=False))
    header = {**_header(model_name, meta), "precision": "int8", "onnx": str(quantized_file),
              "onnx_sha256": checkpoint_hash(quantized_file, length=64)}
    return meta, header, embed


def _write_outputs(name: str, metrics: dict, scored: Any) -> Path:
    """The stage's files under the evaluated ``name``; returns the ROC PNG."""
    from facekd.evaluation.plots import roc_figure, roc_points, save_png

    write_json(layout.eval_metrics_file(name), _finite(metrics))
    atomic_write(layout.scores_file(name), lambda f: np.savez(f, **scored.pairs))  # the report's intervals
    write_json(layout.roc_points_file(name),
               [{"benchmark": b, **p} for b, roc in scored.curves.items() for p in roc_points(*roc)])
    png = layout.roc_image(name)
    save_png(roc_figure(scored.curves, f"{name}: ROC per benchmark"), png)
    return png


def _finite(obj):
    """JSON has no NaN: unsupported operating points become null."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _log_to_mlflow(params: Params, meta: dict, metrics: dict, png: Path, *, name: str | None = None,
                   stage: str | None = None) -> None:
    """An evaluation run of its own, nested under the model's training run (its id is in meta.json):
    the training run keeps its duration and tags, and the UI shows the evaluation beneath it.
    ``name`` (default: the model) names the run; ``stage`` (default ``evaluate@<model>``) its DVC stage."""
    from facekd.mlops.tracking import Tracker

    name = name or metrics["model"]
    flat = {f"eval.{bench}.{k}": float(v) for bench, vals in metrics.items() if isinstance(vals, dict)
            for k, v in vals.items() if isinstance(v, (int, float)) and np.isfinite(v)}
    trained_by = meta.get("mlflow_run_id")
    links = {"mlflow.parentRunId": trained_by, "facekd.trained_by": trained_by} if trained_by else {}
    tags = {**links, "facekd.model": metrics["model"], "facekd.precision": metrics.get("precision", "float32")}
    tracker = Tracker.from_params(params.tracking, stage=stage or f"evaluate@{metrics['model']}")
    tracker.start(f"evaluate-{name}", {}, tags, {})
    tracker.log_metrics(flat, step=0)
    tracker.log_artifact(png)
    tracker.end("FINISHED")
