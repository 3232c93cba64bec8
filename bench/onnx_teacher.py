"""Issue 17, for the record (no target): teacher-feature cache throughput, ONNX teacher vs PyTorch teacher.

Both sides run :func:`facekd.distill.teacher_cache.write_teacher_features` (what the ``teacher_features``
stage runs) on the same JPEG ``.rec`` of face-like crops: once with the PyTorch backbone, once
with the same backbone exported by the project's exporter and run by onnxruntime through
:class:`facekd.models.onnx_backbone.OnnxBackbone`, alternately, so both see the same load.
Throughput counts images (each is embedded with its flip, as the cache holds both). "Identical":
the two caches agree to cosine >= 0.9999 on every row. Models: the embedded teacher (iresnet_tiny
width 0.25, 64-d) and iResNet-50 (512-d, the model-zoo size; ``w600k_r50.onnx`` is this network).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bench import common
from bench.int8_latency import fitted_backbone

SAME = 0.9999


@dataclass(frozen=True)
class Setup:
    name: str
    arch: str
    width: float
    embedding: int
    images: int
    rounds: int


EMBEDDED = Setup("embedded-teacher", "iresnet_tiny", 0.25, 64, images=512, rounds=3)
R50 = Setup("iresnet50", "iresnet50", 1.0, 512, images=64, rounds=2)
QUICK = Setup("quick", "iresnet_tiny", 0.125, 16, images=16, rounds=1)


def run_setup(setup: Setup) -> list[common.Result]:
    import torch

    from facekd.data.dataset import open_training_data
    from facekd.data.training_set import StudentData
    from facekd.distill.teacher_cache import write_teacher_features
    from facekd.export.onnx import export_onnx
    from facekd.models.onnx_backbone import InputConvention, OnnxBackbone

    images = common.face_like_images(setup.images, seed=3)
    labels = np.arange(setup.images) // 4
    with common.scratch_dir("onnx_teacher") as tmp:
        data = StudentData(open_training_data(common.write_rec(tmp / "data", images, labels), "rec", augment=False),
                           "bench", int(labels.max()) + 1, "bench")
        model = fitted_backbone(setup.arch, setup.embedding, setup.width, images[:32])
        export_onnx(model, tmp / "teacher.onnx", opset=18, exporter="legacy")
        teachers = {"onnx": OnnxBackbone(tmp / "teacher.onnx", InputConvention(normalization="outside"),
                                         threads=torch.get_num_threads()),
                    "pytorch": model}
        fns = {name: (lambda n=name, t=t: write_teacher_features(tmp / n, t, data, teacher_name=n, weights_hash=n,
                                                                batch_size=64))
               for name, t in teachers.items()}
        timing = common.interleaved(fns, setup.rounds)
        caches = {name: np.load(tmp / name / "embeddings.npy").reshape(-1, setup.embedding) for name in teachers}
    a, b = caches["onnx"], caches["pytorch"]
    cosine = float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).min())
    detail, ratio = common.compare("ONNX", timing["onnx"], "PyTorch", timing["pytorch"])
    per_s = {name: setup.images / t.median("wall") for name, t in timing.items()}
    return [common.emit(common.Result(
        "onnx_teacher", setup.name, f"{setup.images} images + flips: {detail}", ratio, what="time ratio", op="",
        identical=cosine >= SAME,
        note=f"ONNX {per_s['onnx']:.0f} img/s vs PyTorch {per_s['pytorch']:.0f} img/s; cache min cosine {cosine:.6f}"))]


def run(quick: bool = False) -> list[common.Result]:
    """Measure (tiny sizes with ``quick``: a correctness check, not a measurement)."""
    return common.measure_setups(run_setup, quick, QUICK, (EMBEDDED, R50))


if __name__ == "__main__":
    common.module_main(__doc__, run)
