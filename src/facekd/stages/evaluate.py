"""Stage ``evaluate@<model>``: every benchmark in ``data/eval`` for one model.

Writes ``metrics/eval/<model>.json`` (DVC metrics), ``metrics/scores/<model>.npz`` (the scored
IJB pairs, for the report's intervals), ``plots/roc/<model>.json`` (DVC plots, one ROC per
benchmark) and logs the same numbers and a ROC PNG to the model's MLflow run.
Embeddings are cached per model weights + benchmark + content hash of the images embedded, so
re-scoring does not re-embed, and a benchmark replaced under the same name is embedded afresh.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from facekd.config import Params
from facekd.errors import DataError
from facekd.fsio import atomic_write, write_json

log = logging.getLogger(__name__)


def run(params: Params, model_name: str) -> dict:
    import torch

    from facekd.evaluation.benchmarks import benchmarks
    from facekd.evaluation.embed import EmbeddingCache, checkpoint_hash, embed_images
    from facekd.evaluation.plots import roc_figure, roc_points, save_png
    from facekd.evaluation.uncertainty import SCORES
    from facekd.models.store import load_backbone, model_dir

    torch.set_num_threads(max(1, torch.get_num_threads()))
    src = model_dir(model_name)
    if not (src / "backbone.pt").is_file():
        raise DataError(f"{src}: no trained model (backbone.pt missing); run `dvc repro` for its training stage first")
    model, meta = load_backbone(src)
    eval_dir = Path(params.data.eval_dir)
    found = list(benchmarks(eval_dir))
    if not found:
        raise DataError(f"{eval_dir}: no evaluation sets (*.bin, ijb/meta, mfr/) found; run the prepare stage")
    cache = EmbeddingCache(Path("features/eval") / model_name)
    weights = checkpoint_hash(src / "backbone.pt")

    def embed(name: str, images: np.ndarray) -> np.ndarray:
        return cache.get_or_compute(EmbeddingCache.key(weights, name, images),
                                    lambda: embed_images(model, images, batch_size=params.evaluate.batch_size))

    metrics: dict = {"model": model_name, "arch": meta["arch"], "params_m": meta.get("params_m"), "gmacs": meta.get("gmacs")}
    curves, points, pairs = {}, {}, {}
    for name, bench in found:
        log.info("%s: %s", model_name, name)
        metrics[name], roc, *scored = bench(embed, params.evaluate)
        if roc is not None:
            curves[name] = roc
            points[name] = roc_points(*roc)
        if scored:
            scored[0].save(pairs, name)
    write_json(Path("metrics/eval") / f"{model_name}.json", _finite(metrics))
    atomic_write(SCORES / f"{model_name}.npz", lambda f: np.savez(f, **pairs))  # the report's intervals
    write_json(Path("plots/roc") / f"{model_name}.json",
               [{"benchmark": b, **p} for b, pts in points.items() for p in pts])
    png = Path("reports/roc") / f"{model_name}.png"
    save_png(roc_figure(curves, f"{model_name}: ROC per benchmark"), png)
    _log_to_mlflow(params, meta, metrics, png)
    return metrics


def _finite(obj):
    """JSON has no NaN: unsupported operating points become null."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _log_to_mlflow(params: Params, meta: dict, metrics: dict, png: Path) -> None:
    """An evaluation run of its own, nested under the model's training run (its id is in meta.json):
    the training run keeps its duration and tags, and the UI shows the evaluation beneath it."""
    from facekd.tracking import Tracker

    flat = {f"eval.{bench}.{k}": float(v) for bench, vals in metrics.items() if isinstance(vals, dict)
            for k, v in vals.items() if isinstance(v, (int, float)) and np.isfinite(v)}
    trained_by = meta.get("mlflow_run_id")
    links = {"mlflow.parentRunId": trained_by, "facekd.trained_by": trained_by} if trained_by else {}
    tracker = Tracker.from_params(params.tracking, stage=f"evaluate@{metrics['model']}")
    tracker.start(f"evaluate-{metrics['model']}", {}, {**links, "facekd.model": metrics["model"]}, {})
    tracker.log_metrics(flat, step=0)
    tracker.log_artifact(png)
    tracker.end("FINISHED")
