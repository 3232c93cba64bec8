"""Stage ``student_aware_teacher <method>``: SH-KD step 2, a student-aware copy of the teacher.

For a method that fine-tunes its own teacher (``fine_tunes_teacher``; ``shkd``): starts from
``models/teacher`` and fine-tunes it for ``distill.<method>.teacher_epochs`` at
``distill.<method>.teacher_lr`` (the other optimiser settings from ``teacher.optim``) through the
trained ``none`` student's margin head (``models/none/head.pt``), frozen: the teacher learns
features that a low-capacity head can use. Writes ``models/teacher_<method>/`` (backbone.pt,
head.pt = that student head, meta.json), ``metrics/train/teacher_<method>.json``; resumes from
``checkpoints/teacher_<method>/``. ``distill <method>`` then distils from it.
"""
from __future__ import annotations

import logging
from typing import Any

from facekd import layout
from facekd.config import OptimParams, Params
from facekd.errors import ConfigError, DataError

log = logging.getLogger(__name__)

BASE_TEACHER = layout.model_dir(layout.TEACHER)
STUDENT_HEAD_SOURCE = layout.model_dir("none")
RESUME_NEUTRAL = ("workers", "checkpoint_every", "eval_every")


def check_method(params: Params, method: str) -> None:
    """``method`` fine-tunes its own teacher and is switched on in ``distill.head_sharing``."""
    from facekd.distill.registry import method_class

    if not method_class(method).fine_tunes_teacher:
        raise ConfigError(f"distill method '{method}' distils from the pipeline's teacher and fine-tunes none; "
                          "student-aware teachers are for the methods of distill.head_sharing")
    if method not in params.distill.head_sharing:
        raise ConfigError(f"distill method '{method}' is not in distill.head_sharing "
                          f"{list(params.distill.head_sharing)}; add it there (params.yaml)")


def check_sizes(params: Params, method: str) -> None:
    """The student's head can sit on the teacher only when both embeddings have one size."""
    d_s, d_t = params.distill.student.embedding_size, params.teacher.backbone.embedding_size
    if d_s != d_t:
        raise ConfigError(
            f"SH-KD puts the `none` student's head on the teacher, so distill.student.embedding_size ({d_s}) "
            f"must equal teacher.backbone.embedding_size ({d_t}); make them equal or drop {method} from "
            "distill.head_sharing, evaluate.models and export.models"
        )


def fine_tune_optim(params: Params, method: str) -> OptimParams:
    """``teacher.optim`` with the method's fine-tuning epochs and learning rate."""
    section = getattr(params.distill, method)
    return params.teacher.optim.model_copy(update={"epochs": section.teacher_epochs, "lr": section.teacher_lr})


def run(params: Params, method: str) -> None:
    """Fine-tune (or resume, or confirm finished) ``method``'s student-aware teacher and write it."""
    from facekd.training.distributed import init_distributed, shutdown

    check_method(params, method)
    dist = init_distributed()
    try:
        _train(params, method, dist)
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


def _train(params: Params, method: str, dist: Any) -> None:
    from facekd.data.training_set import student_data
    from facekd.distill.teacher_cache import teacher_weights_hash
    from facekd.mlops.tracking import NullTracker, Tracker
    from facekd.models.store import load_backbone, require_model
    from facekd.training.loop import fit
    from facekd.training.sampling import seed_everything
    from facekd.training.objectives import HeadObjective

    check_sizes(params, method)
    name = layout.student_aware_teacher(method)
    data = student_data(params)
    if data.num_classes == 0:
        raise ConfigError(f"student_aware_teacher@{method} trains through a classification head and needs labelled data, but "
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
    optim = fine_tune_optim(params, method)
    base_sha = teacher_weights_hash(BASE_TEACHER)
    tuned = optim.model_dump(mode="json")
    for key in RESUME_NEUTRAL:
        tuned.pop(key)
    config = {"seed": params.seed, "data_hash": data.data_hash, "optim": tuned,
              "teacher": {"weights_sha256": base_sha},
              "student_head": {"sha256": head_sha, "type": head.kind, "scale": head.scale, "margin": head.margin}}
    tracker = Tracker.from_params(params.tracking, stage=layout.training_stage(name)) if dist.is_main else NullTracker()
    result = fit(run_name=name, backbone=backbone, objective=HeadObjective(head), dataset=data.dataset,
                 optim=optim, run_dir=layout.checkpoint_dir(name), config=config, seed=params.seed,
                 tracker=tracker, dist=dist)
    if dist.is_main:
        meta = {"role": "teacher", "variant": method, "data_hash": data.data_hash,
                "base_teacher_weights_sha256": base_sha, "student_head_sha256": head_sha,
                "head": config["student_head"], "trained_steps": result["step"],
                "mlflow_run_id": result["mlflow_run_id"]}
        _write_outputs(name, backbone, head, meta, result, tracker)


def _write_outputs(name: str, backbone: Any, head: Any, meta: dict[str, Any], result: dict[str, Any],
                   tracker: Any) -> None:
    from facekd.training.outputs import publish_trained_model

    folder = layout.model_dir(name)
    metrics = publish_trained_model(folder, layout.train_metrics_file(name), backbone, meta,
                                    head.weight.detach().cpu(), result, tracker)
    log.info("%s: %d steps, final loss %s -> %s", name, result["step"], metrics["loss"], folder)
