"""Stage ``distill <method>``: train the student with one distillation method.

Reads the training data (``data/prepared``, or for label-free methods an unlabeled folder at
``data.path`` when ``data.source`` is ``unlabeled``), the frozen teacher ``models/teacher`` (for
a method of ``distill.head_sharing``: its student-aware ``models/teacher_<method>``) and its feature cache ``features/<teacher>``
(or runs the teacher online when ``distill.teacher_source`` is ``online``). Trains
``distill.student`` through :func:`facekd.training.loop.fit`, resuming from
``checkpoints/students/<method>/``; writes ``models/<method>/`` (backbone.pt, head.pt when the
method has its own margin head, meta.json) and ``metrics/train/<method>.json``. With
``distill.seeds`` > 1 the same process then trains the student under the next seeds, each into
``models/<method>/seeds/<seed>/`` (checkpoints ``checkpoints/students/<method>/seeds/<seed>/``,
its training summary ``train_metrics.json`` beside it).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from facekd import layout
from facekd.config import Params
from facekd.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Settings that change how a run is executed, not what it computes: changing them keeps the resume.
RESUME_NEUTRAL = ("workers", "checkpoint_every", "eval_every")


@dataclass(frozen=True)
class TeacherSide:
    """The frozen teacher of a run: its name, weights hash, embedding size and batch provider."""

    name: str
    weights_sha256: str
    dim: int
    feed: Any  # CachedTeacher | OnlineTeacher: the loop's extra_batch_fn


def check_method(params: Params, method: str, labeled: bool, where: str) -> None:
    """The method is configured, and has the labels it needs."""
    from facekd.distill.registry import method_class

    cls = method_class(method)
    key = "head_sharing" if cls.fine_tunes_teacher else "methods"
    if method not in getattr(params.distill, key):
        raise ConfigError(
            f"distill method '{method}' is not in distill.{key} {list(getattr(params.distill, key))}; "
            "add it there (params.yaml) or choose one of those"
        )
    if not labeled and cls.requires_labels(getattr(params.distill, method)):
        raise ConfigError(
            f"distill method '{method}' needs identity labels, but data.source is 'unlabeled' ({where}); "
            "use labelled data (data.source synthetic, rec or folder) or a label-free method such as 'qud'"
        )


def run(params: Params, method: str) -> None:
    """Train (or resume, or confirm finished) the student of ``method`` and write its model and metrics."""
    from facekd.training.distributed import init_distributed, shutdown

    dist = init_distributed()
    try:
        _train(params, method, dist)
    finally:
        shutdown()


def _train(params: Params, method: str, dist: Any) -> None:
    from facekd.data.training_set import student_data
    from facekd.distill.registry import method_class

    data = student_data(params)
    check_method(params, method, data.num_classes > 0, data.where)
    teacher = _teacher_setup(params, method, data, dist) if method_class(method).teacher_model else None
    # One process trains every seed: the data, the teacher's cache and the imports are paid once.
    for seed in params.student_seeds():
        _train_seed(params, method, seed, data, teacher, dist)


def _train_seed(params: Params, method: str, seed: int, data: Any, teacher: TeacherSide | None, dist: Any) -> None:
    """Train (or resume, or confirm finished) ``method``'s student under ``seed`` and write it."""
    from facekd.distill.registry import build_method, method_class
    from facekd.distill.teacher import DistillObjective
    from facekd.mlops.tracking import NullTracker, Tracker
    from facekd.models.registry import create_backbone
    from facekd.training.loop import fit
    from facekd.training.sampling import seed_everything

    distill = params.distill
    section = getattr(distill, method)
    primary = seed == params.seed
    seed_everything(seed)
    s = distill.student
    backbone = create_backbone(s.arch, embedding_size=s.embedding_size, width=s.width, dropout=s.dropout, fp16=s.fp16)
    head_weight = None
    if teacher is not None and method_class(method).requires_teacher_head(section):
        head_weight = _teacher_head(params, teacher, method, data)
    objective = DistillObjective(build_method(
        method, distill, num_classes=data.num_classes, student_dim=s.embedding_size,
        teacher_dim=teacher.dim if teacher else s.embedding_size, teacher_head=head_weight))

    config = run_config(params, method, data.data_hash, teacher, seed)
    stage = layout.training_stage(method, distill.head_sharing)
    tracker = Tracker.from_params(params.tracking, stage=stage) if dist.is_main else NullTracker()
    run_dir = layout.checkpoint_dir(method) if primary else layout.seed_checkpoint_dir(method, seed)
    result = fit(run_name=f"distill-{method}" if primary else f"distill-{method}-seed{seed}", backbone=backbone,
                 objective=objective, dataset=data.dataset, optim=distill.optim, run_dir=run_dir, config=config,
                 seed=seed, tracker=tracker, extra_batch_fn=teacher.feed if teacher else None, dist=dist)
    if dist.is_main:
        _write_outputs(params, method, seed, data, teacher, backbone, objective, result, tracker)


def _teacher_setup(params: Params, method: str, data: Any, dist: Any) -> TeacherSide:
    """The teacher of ``method``, fed from its checked cache or run online."""
    from facekd.distill.registry import method_class
    from facekd.distill.teacher import CachedTeacher, OnlineTeacher
    from facekd.distill.teacher_cache import check_cache_dtype, open_cache, teacher_weights_hash
    from facekd.models.store import require_model

    name = method_class(method).teacher_model
    meta = require_model(name)
    weights = teacher_weights_hash(layout.model_dir(name))
    dim = int(meta["embedding_size"])
    if params.distill.teacher_source == "online":
        from facekd.models.store import load_backbone

        backbone, _ = load_backbone(layout.model_dir(name))
        from facekd.training.runtime import use_channels_last

        channels_last = use_channels_last(params.distill.optim.channels_last, backbone, dist.device)
        feed: Any = OnlineTeacher(backbone, dist.device, channels_last)
    else:
        check_cache_dtype(method, params.distill.cache_dtype)
        cache = open_cache(layout.features_dir(name), num_images=len(data.dataset), data_hash=data.data_hash,
                           weights_hash=weights, dim=dim, dtype=params.distill.cache_dtype)
        feed = CachedTeacher(cache)
    return TeacherSide(name, weights, dim, feed)


def _teacher_head(params: Params, teacher: TeacherSide, method: str, data: Any) -> Any:
    """W_t (C, d): the teacher's trained head, or for an ONNX teacher (no head) the class means of
    its cached embeddings (:func:`facekd.distill.teacher_cache.class_mean_centres`)."""
    from facekd.distill.teacher_cache import class_mean_centres, open_cache
    from facekd.models.store import HEAD_FILE, ONNX_FORMAT, load_head_weight, read_meta

    folder = layout.model_dir(teacher.name)
    if (folder / HEAD_FILE).is_file():
        return load_head_weight(folder)
    if read_meta(folder).get("format") == ONNX_FORMAT:
        cache = open_cache(layout.features_dir(teacher.name), num_images=len(data.dataset), data_hash=data.data_hash,
                           weights_hash=teacher.weights_sha256, dim=teacher.dim, dtype=params.distill.cache_dtype)
        log.info("%s: W_t estimated as the class means of the ONNX teacher's cached embeddings", method)
        return class_mean_centres(cache, data.dataset.labels, data.num_classes)
    raise DataError(
        f"{folder / HEAD_FILE}: missing, but distill method '{method}' needs the teacher's class centres W_t; "
        f"train {folder} with a margin head on the same identities (dvc repro)"
    )


def run_config(params: Params, method: str, data_hash: str, teacher: TeacherSide | None,
               seed: int | None = None) -> dict[str, Any]:
    """What defines a student run (hashed into its checkpoints; a change refuses to resume).

    Keys follow params.yaml (``distill.<method>.tau``), so MLflow shows the method's params by
    their params.yaml names.
    """
    distill = params.distill
    optim = distill.optim.model_dump(mode="json")
    for key in RESUME_NEUTRAL:
        optim.pop(key)
    section: dict[str, Any] = {
        "student": distill.student.model_dump(mode="json"),
        "head": distill.head.model_dump(mode="json"),
        "optim": optim,
        method: getattr(distill, method).model_dump(mode="json"),
    }
    seed = params.seed if seed is None else seed
    config: dict[str, Any] = {"seed": seed, "method": method, "distill": section, "data_hash": data_hash}
    if teacher is not None:
        section["teacher_source"] = distill.teacher_source
        if distill.teacher_source == "cache":
            section["cache_dtype"] = distill.cache_dtype
        config["teacher"] = {"name": teacher.name, "weights_sha256": teacher.weights_sha256}
    return config


def _write_outputs(params: Params, method: str, seed: int, data: Any, teacher: TeacherSide | None, backbone: Any,
                   objective: Any, result: dict[str, Any], tracker: Any) -> None:
    """``models/<method>`` and ``metrics/train/<method>.json`` for the first seed; for another seed
    ``models/<method>/seeds/<seed>`` with its ``train_metrics.json``."""
    from facekd.training.outputs import publish_trained_model

    head = objective.student_head()
    meta: dict[str, Any] = {
        "role": "student",
        "method": method,
        "seed": seed,
        "data_hash": data.data_hash,
        "distill_params": getattr(params.distill, method).model_dump(mode="json"),
        "trained_steps": result["step"],
        "mlflow_run_id": result["mlflow_run_id"],
    }
    if teacher is not None:
        meta |= {"teacher": teacher.name, "teacher_weights_sha256": teacher.weights_sha256,
                 "teacher_source": params.distill.teacher_source}
    if head is not None:
        meta["head"] = {"type": head.kind, "scale": head.scale, "margin": head.margin}
    primary = seed == params.seed
    folder = layout.model_dir(method) if primary else layout.seed_model_dir(method, seed)
    metrics_file = layout.train_metrics_file(method) if primary else layout.seed_train_metrics_file(method, seed)
    metrics = publish_trained_model(folder, metrics_file, backbone, meta, head.weight.detach().cpu() if head else None,
                                    result, tracker)
    log.info("distill %s (seed %d): %d steps, final loss %s, %.1f img/s -> %s", method, seed, result["step"],
             metrics["loss"], result["img_per_s"], folder)
