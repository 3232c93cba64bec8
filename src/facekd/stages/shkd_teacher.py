"""Stage ``shkd_teacher``: SH-KD step 2, a student-aware copy of the teacher.

Starts from ``models/teacher`` and fine-tunes it for ``distill.shkd.teacher_epochs`` at
``distill.shkd.teacher_lr`` (the other optimiser settings from ``teacher.optim``) through the
trained ``none`` student's margin head (``models/none/head.pt``), frozen: the teacher learns
features that a low-capacity head can use. Writes ``models/teacher_shkd/`` (backbone.pt, head.pt =
that student head, meta.json), ``metrics/train/teacher_shkd.json``; resumes from
``checkpoints/teacher_shkd/``. ``distill shkd`` then distils from it with the TH-KD loss.
"""
from __future__ import annotations

import logging
from typing import Any

from facekd import layout
from facekd.config import OptimParams, Params
from facekd.errors import ConfigError, DataError

log = logging.getLogger(__name__)

RUN_NAME = "teacher_shkd"
BASE_TEACHER = layout.model_dir("teacher")
STUDENT_HEAD_SOURCE = layout.model_dir("none")
RESUME_NEUTRAL = ("workers", "checkpoint_every", "eval_every")


def check_sizes(params: Params) -> None:
    """The student's head can sit on the teacher only when both embeddings have one size."""
    d_s, d_t = params.distill.student.embedding_size, params.teacher.backbone.embedding_size
    if d_s != d_t:
        raise ConfigError(
            f"SH-KD puts the `none` student's head on the teacher, so distill.student.embedding_size ({d_s}) "
            f"must equal teacher.backbone.embedding_size ({d_t}); make them equal or drop shkd from "
            "evaluate.models / export.models"
        )


def fine_tune_optim(params: Params) -> OptimParams:
    """``teacher.optim`` with SH-KD's epochs and learning rate."""
    shkd = params.distill.shkd
    return params.teacher.optim.model_copy(update={"epochs": shkd.teacher_epochs, "lr": shkd.teacher_lr})


def run(params: Params) -> None:
    """Fine-tune (or resume, or confirm finished) the student-aware teacher and write it."""
    from facekd.training.distributed import init_distributed, shutdown

    dist = init_distributed()
    try:
        _train(params, dist)
    finally:
        shutdown()


def _frozen_student_head(num_classes: int, dim: int) -> tuple[Any, str]:
    """The `none` student's trained margin head, frozen, and the sha256 of its head.pt."""
    from facekd.fsio import file_sha256
    from facekd.models.heads import MarginHead
    from facekd.models.store import HEAD_FILE, load_head_weight, require_model

    meta = require_model(STUDENT_HEAD_SOURCE.name)
    path = STUDENT_HEAD_SOURCE / HEAD_FILE
    if not path.is_file():
        raise DataError(f"{path}: missing; SH-KD needs the trained `none` student's head: run `dvc repro distill@none`")
    weight = load_head_weight(STUDENT_HEAD_SOURCE)
    if tuple(weight.shape) != (num_classes, dim):
        raise DataError(
            f"{path}: head is {tuple(weight.shape)}, expected (identities, teacher embedding size) = "
            f"({num_classes}, {dim}); retrain the `none` student on this data (`dvc repro distill@none`)"
        )
    settings = meta.get("head", {})
    head = MarginHead(num_classes, dim, settings.get("type", "arcface"), float(settings.get("scale", 64.0)),
                      float(settings.get("margin", 0.5)))
    head.weight.data.copy_(weight)
    head.weight.requires_grad_(False)  # the student's head stays as the student trained it
    return head, file_sha256(path)


def _train(params: Params, dist: Any) -> None:
    from facekd.data.training_set import student_data
    from facekd.distill.teacher import teacher_weights_hash
    from facekd.mlops.tracking import NullTracker, Tracker
    from facekd.models.store import load_backbone, require_model
    from facekd.training.loop import fit, seed_everything
    from facekd.training.objectives import HeadObjective

    check_sizes(params)
    data = student_data(params)
    if data.num_classes == 0:
        raise ConfigError("shkd_teacher trains through a classification head and needs labelled data, but "
                          f"data.source is 'unlabeled' ({data.where})")
    require_model(BASE_TEACHER.name)
    seed_everything(params.seed)
    backbone, teacher_meta = load_backbone(BASE_TEACHER)
    dim = int(teacher_meta["embedding_size"])
    if dim != params.distill.student.embedding_size:
        raise DataError(f"{BASE_TEACHER}/meta.json: the trained teacher is {dim}-d, but "
                        f"distill.student.embedding_size is {params.distill.student.embedding_size}; "
                        "retrain the teacher (`dvc repro train_teacher`)")
    backbone.requires_grad_(True)
    head, head_sha = _frozen_student_head(data.num_classes, dim)
    optim = fine_tune_optim(params)
    base_sha = teacher_weights_hash(BASE_TEACHER)
    tuned = optim.model_dump(mode="json")
    for key in RESUME_NEUTRAL:
        tuned.pop(key)
    config = {"seed": params.seed, "data_hash": data.data_hash, "optim": tuned,
              "teacher": {"weights_sha256": base_sha},
              "student_head": {"sha256": head_sha, "type": head.kind, "scale": head.scale, "margin": head.margin}}
    tracker = Tracker.from_params(params.tracking, stage="shkd_teacher") if dist.is_main else NullTracker()
    result = fit(run_name=RUN_NAME, backbone=backbone, objective=HeadObjective(head), dataset=data.dataset,
                 optim=optim, run_dir=layout.checkpoint_dir(RUN_NAME), config=config, seed=params.seed,
                 tracker=tracker, dist=dist)
    if dist.is_main:
        meta = {"role": "teacher", "variant": "shkd", "data_hash": data.data_hash,
                "base_teacher_weights_sha256": base_sha, "student_head_sha256": head_sha,
                "head": config["student_head"], "trained_steps": result["step"],
                "mlflow_run_id": result["mlflow_run_id"]}
        _write_outputs(backbone, head, meta, result, tracker)


def _write_outputs(backbone: Any, head: Any, meta: dict[str, Any], result: dict[str, Any], tracker: Any) -> None:
    from facekd.training.outputs import publish_trained_model

    folder = layout.model_dir(RUN_NAME)
    metrics = publish_trained_model(folder, layout.train_metrics_file(RUN_NAME), backbone, meta,
                                    head.weight.detach().cpu(), result, tracker)
    log.info("teacher_shkd: %d steps, final loss %s -> %s", result["step"], metrics["loss"], folder)
