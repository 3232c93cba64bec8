"""Stage ``train_teacher``: margin-softmax training of the teacher on ``data/prepared``.

Reads ``<data.prepared_dir>/train.rec`` + ``train.idx`` + ``meta.json``; trains
``teacher.backbone`` with ``teacher.head`` (a :class:`MarginHead`, or :class:`PartialFC` when
``head.sample_rate < 1`` or under ``torchrun``) through :func:`facekd.training.loop.fit`, resuming
from ``checkpoints/teacher/``; writes ``models/teacher/`` (backbone.pt, head.pt with the full
(C, d) centres, meta.json) and ``metrics/train/teacher.json``. Running it again after it finished
does no training step and rewrites the same outputs.

With ``teacher.source: onnx`` nothing is trained: the ONNX face embedder at ``teacher.onnx.path``
is checked and imported into ``models/teacher/`` (model.onnx + meta.json, no head), see
:mod:`facekd.models.onnx_teacher`.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from facekd import layout
from facekd.config import Params, TeacherParams
from facekd.errors import ConfigError, DataError

log = logging.getLogger(__name__)

RUN_NAME = "teacher"
CHECKPOINT_DIR = layout.checkpoint_dir(RUN_NAME)
MODEL_DIR = layout.model_dir(RUN_NAME)
METRICS_FILE = layout.train_metrics_file(RUN_NAME)
# Settings that change how a run is executed, not what it computes: changing them keeps the resume.
RESUME_NEUTRAL = ("workers", "checkpoint_every", "eval_every")


def run_config(params: Params, data_hash: str) -> dict[str, Any]:
    """What defines the teacher run (hashed into its checkpoints): seed, teacher section, data."""
    teacher = params.teacher.model_dump(mode="json")
    for key in RESUME_NEUTRAL:
        teacher["optim"].pop(key)
    return {"seed": params.seed, "teacher": teacher, "data_hash": data_hash}


def build_head(teacher: TeacherParams, num_classes: int, world_size: int) -> Any:
    """MarginHead on one process at sample_rate 1; PartialFC (sharded, sampled) otherwise."""
    from facekd.models.heads import MarginHead
    from facekd.models.partialfc import PartialFC

    h, d = teacher.head, teacher.backbone.embedding_size
    if h.sample_rate == 1.0 and world_size == 1:
        return MarginHead(num_classes, d, h.type, h.scale, h.margin)
    return PartialFC(num_classes, d, h.type, h.scale, h.margin, h.sample_rate,
                     backbone_grads_averaged=world_size > 1)


def init_from_model(init_from: str, backbone: Any, head: Any) -> None:
    """Start from a trained model directory: backbone strictly, the head when its shape fits."""
    import torch

    from facekd.models.store import HEAD_FILE, load_backbone, load_head_weight

    source, meta = load_backbone(init_from)
    try:
        backbone.load_state_dict(source.state_dict(), strict=True)
    except RuntimeError as err:
        raise ConfigError(
            f"teacher.init_from={init_from}: its {meta['arch']} (embedding {meta['embedding_size']}, width "
            f"{meta['width']}) does not fit teacher.backbone ({str(err).splitlines()[0]})") from None
    if not (Path(init_from) / HEAD_FILE).is_file():
        return
    weight = load_head_weight(init_from)
    full = (head.num_classes, head.embedding_size)
    if tuple(weight.shape) != full:
        log.warning("%s: head %s does not fit (%d, %d); the head starts from scratch", init_from,
                    tuple(weight.shape), *full)
    elif hasattr(head, "load_full_weight"):
        head.load_full_weight(weight)
    else:
        with torch.no_grad():
            head.weight.copy_(weight)
    log.info("initialised from %s", init_from)


def run(params: Params) -> None:
    """Train (or resume, or confirm finished) the teacher and write its model and metrics."""
    from facekd.training.distributed import init_distributed, shutdown

    if params.teacher.source == "onnx":
        _import_onnx(params)
        return
    dist = init_distributed()
    try:
        _train(params, dist)
    finally:
        shutdown()


def _train(params: Params, dist: Any) -> None:
    from facekd.data.dataset import open_training_data
    from facekd.data.training_set import read_prepared_meta
    from facekd.mlops.tracking import NullTracker, Tracker
    from facekd.models.registry import create_backbone
    from facekd.training.loop import fit
    from facekd.training.sampling import seed_everything
    from facekd.training.objectives import HeadObjective

    prepared = Path(params.data.prepared_dir)
    meta = read_prepared_meta(prepared)
    dataset = open_training_data(prepared, "rec", seed=params.seed)
    if dataset.num_classes != meta.get("num_classes", dataset.num_classes):
        raise DataError(f"{prepared}/meta.json says {meta['num_classes']} identities but train.rec has "
                        f"{dataset.num_classes}; re-run `facekd prepare`")

    teacher = params.teacher
    seed_everything(params.seed)
    b = teacher.backbone
    backbone = create_backbone(b.arch, embedding_size=b.embedding_size, width=b.width, dropout=b.dropout, fp16=b.fp16)
    head = build_head(teacher, dataset.num_classes, dist.world_size)
    if teacher.init_from:
        init_from_model(teacher.init_from, backbone, head)
    objective = HeadObjective(head)

    tracker = Tracker.from_params(params.tracking, stage="train_teacher") if dist.is_main else NullTracker()
    result = fit(run_name=RUN_NAME, backbone=backbone, objective=objective, dataset=dataset, optim=teacher.optim,
                 run_dir=CHECKPOINT_DIR, config=run_config(params, meta["data_hash"]), seed=params.seed,
                 tracker=tracker, dist=dist)
    centres = objective.full_weight()  # (C, d); collective for a sharded PartialFC
    if dist.is_main:
        _write_outputs(params, meta, backbone, centres, result, tracker)


def _import_onnx(params: Params) -> None:
    """``models/teacher`` from ``teacher.onnx.path``, checked on a sample of ``data/prepared``."""
    from facekd.data.dataset import open_training_data
    from facekd.data.training_set import read_prepared_meta
    from facekd.fsio import write_json
    from facekd.mlops.tracking import Tracker
    from facekd.models.onnx_teacher import import_onnx_teacher, sanity_sample

    section = params.teacher.onnx
    prepared = Path(params.data.prepared_dir)
    data_meta = read_prepared_meta(prepared)
    dataset = open_training_data(prepared, "rec", seed=params.seed, augment=False)
    rows = sanity_sample(dataset.labels, section.sanity_images)
    images = np.stack([dataset.load(int(i)) for i in rows])  # (n, 112, 112, 3) uint8
    meta = import_onnx_teacher(section, MODEL_DIR, images, dataset.labels[rows])
    check = meta["sanity"]
    metrics = {"imported": 1, "embedding_size": meta["embedding_size"], "params_m": meta["params_m"],
               **{f"sanity.{k}": v for k, v in check.items() if k != "warnings"},
               "sanity.warnings": len(check["warnings"])}
    write_json(METRICS_FILE, metrics)
    tracker = Tracker.from_params(params.tracking, stage="train_teacher")
    tracker.start("teacher-onnx-import", {"teacher.source": "onnx", "teacher.onnx.source": meta["source"],
                                          **{f"teacher.onnx.{k}": v for k, v in meta["input"].items()}},
                  {"facekd.model": "teacher", "facekd.teacher_sha256": meta["source_sha256"],
                   "data_hash": data_meta["data_hash"]}, {})
    tracker.log_metrics({k: float(v) for k, v in metrics.items()}, step=0)
    tracker.end("FINISHED")
    log.info("teacher: imported %s (%d-d; sanity genuine %.3f vs impostor %.3f) -> %s", meta["source"],
             meta["embedding_size"], check["genuine_cosine"], check["impostor_cosine"], MODEL_DIR)


def _write_outputs(params: Params, data_meta: dict[str, Any], backbone: Any, centres: Any,
                   result: dict[str, Any], tracker: Any) -> None:
    from facekd.training.outputs import publish_trained_model

    meta = {
        "role": "teacher",
        "data_hash": data_meta["data_hash"],
        "num_classes": int(centres.shape[0]),
        "head": params.teacher.head.model_dump(mode="json"),
        "trained_steps": result["step"],
        "mlflow_run_id": result["mlflow_run_id"],
    }
    metrics = publish_trained_model(MODEL_DIR, METRICS_FILE, backbone, meta, centres.cpu(), result, tracker)
    log.info("teacher: %d steps, final loss %s, %.1f img/s -> %s", result["step"], metrics["loss"],
             result["img_per_s"], MODEL_DIR)
