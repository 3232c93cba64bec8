"""Stage ``teacher_features``: cache a frozen teacher's embeddings of every training image and its flip.

Reads ``models/<teacher>`` (``teacher`` or a student-aware ``teacher_<method>``) and the students' training data
(``data/prepared``, or the unlabeled folder of ``data.path``); writes
``features/<teacher>/embeddings.npy`` (N, 2, d) in ``distill.cache_dtype`` and ``meta.json``
(teacher weights sha256, data hash, N, d, dtype). A cache that already matches the teacher, the
data and the dtype is left as it is. An ONNX teacher (``teacher.source: onnx``) runs in
onnxruntime with ``teacher.onnx.batch_size`` and ``threads``.
"""
from __future__ import annotations

import logging

from facekd import layout
from facekd.config import Params
from facekd.errors import ConfigError

log = logging.getLogger(__name__)

def run(params: Params, teacher_name: str) -> None:
    """Write (or confirm up to date) ``features/<teacher_name>/``."""
    import torch

    from facekd.data.training_set import student_data
    from facekd.distill.teacher_cache import read_cache_meta, teacher_weights_hash, write_teacher_features
    from facekd.errors import DataError
    from facekd.models.store import ONNX_FORMAT, load_backbone, require_model

    teachers = [layout.TEACHER, *map(layout.student_aware_teacher, params.distill.head_sharing)]
    if teacher_name not in teachers:
        raise ConfigError(f"unknown teacher '{teacher_name}'; choose one of {', '.join(teachers)} "
                          "(teacher_<method> for each method of distill.head_sharing)")
    require_model(teacher_name)
    data = student_data(params, augment=False)
    weights = teacher_weights_hash(layout.model_dir(teacher_name))
    out = layout.features_dir(teacher_name)
    wanted = {"teacher_weights_sha256": weights, "data_hash": data.data_hash, "num_images": len(data.dataset),
              "dtype": params.distill.cache_dtype}
    try:
        current = read_cache_meta(out)
    except DataError:
        current = {}
    if all(current.get(k) == v for k, v in wanted.items()) and (out / "embeddings.npy").is_file():
        log.info("%s is up to date (teacher %s..., data %s...): nothing to do", out, weights[:12], data.data_hash[:12])
        return
    teacher, meta = load_backbone(layout.model_dir(teacher_name))
    onnx = meta.get("format") == ONNX_FORMAT  # run by onnxruntime on the CPU, batch from teacher.onnx
    device = torch.device("cuda") if torch.cuda.is_available() and not onnx else torch.device("cpu")
    batch_size = params.teacher.onnx.batch_size if onnx else params.evaluate.batch_size
    write_teacher_features(out, teacher, data, teacher_name=teacher_name, weights_hash=weights,
                           dtype=params.distill.cache_dtype, batch_size=batch_size,
                           workers=params.distill.optim.workers, device=device)
