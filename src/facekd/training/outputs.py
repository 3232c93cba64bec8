"""What every training stage leaves behind: the model folder, its train metrics, the MLflow artifact."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from facekd.fsio import write_json


def train_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The ``metrics/train/<model>.json`` row of a :func:`facekd.training.loop.fit` result."""
    loss = result["loss"]
    return {
        "loss": loss.get("loss"),
        **{f"loss.{k}": v for k, v in sorted(loss.items()) if k != "loss"},
        "epochs": result["epochs"],
        "steps": result["step"],
        "images": result["images"],
        "img_per_s": round(result["img_per_s"], 3),
        "train_seconds": round(result["train_seconds"], 3),
        **{f"eval.{k}": v for k, v in result.get("eval", {}).items()},
    }


def publish_trained_model(model_dir: Path, metrics_file: Path, backbone: Any, meta: dict[str, Any],
                          head: Any, result: dict[str, Any], tracker: Any) -> dict[str, Any]:
    """Save ``model_dir`` (backbone + head (C, d) + meta), write the train metrics, log the folder's files.

    Returns the metrics written.
    """
    from facekd.models.store import save_model_dir

    save_model_dir(model_dir, backbone.cpu(), meta, head=head)
    metrics = train_metrics(result)
    write_json(metrics_file, metrics)
    for path in sorted(model_dir.iterdir()):  # its files: models/<m>/seeds/ holds other runs' students
        if path.is_file():
            tracker.log_artifact(path, "model")
    return metrics
