"""Target 1: a distillation step reading the teacher-feature cache costs about a student step.

For ``feature``, ``adadistill`` and ``qud``: facekd's training step with the teacher rows read from
the memory-mapped cache (``CachedTeacher``) against the same step of the ``none`` student (same
student, batch, data), target <= 1.15x; and against the same step with the teacher run online on
every batch (``OnlineTeacher``, an iResNet-50 as in the authors' code), target >= 5x faster.

The cache is written by facekd's own ``write_teacher_features`` from the same teacher, and its rows
for the timed batch are checked against the online teacher's output ("identical").

Cases: ``full`` is the paper setting (MobileFaceNet 512-d student, iResNet-50 512-d teacher);
``embedded`` is params.yaml's default student and teacher size (cache only, no online teacher).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bench import common
from bench._training import first_batch, fit_settings, make_trainer, optim_params, rec_dataset, step_fn

METHODS = ("feature", "adadistill", "qud")
CACHE_LIMIT = 1.15
ONLINE_LIMIT = 5.0


@dataclass(frozen=True)
class Setup:
    name: str
    student: tuple[str, float, int]  # arch, width, embedding size
    teacher: tuple[str, float, int]
    batch: int
    classes: int  # identities of the student's head / AdaDistill centres
    data_classes: int  # identities among the batch's images
    repeats: int
    online: tuple[str, ...]  # methods also timed with the teacher run online


FULL = Setup("full", ("mfn", 1.0, 512), ("iresnet50", 1.0, 512), batch=32, classes=1000, data_classes=16,
             repeats=3, online=METHODS)
EMBEDDED = Setup("embedded", ("mfn", 0.25, 128), ("iresnet18", 0.25, 128), batch=64, classes=200, data_classes=32,
                 repeats=5, online=())
QUICK = Setup("quick", ("mfn", 0.125, 32), ("iresnet_tiny", 0.25, 32), batch=4, classes=8, data_classes=2,
              repeats=1, online=("adadistill",))


def _backbone(spec: tuple[str, float, int]) -> Any:
    from facekd.models.registry import create_backbone

    arch, width, emb = spec
    return create_backbone(arch, embedding_size=emb, width=width)


def _cache(folder: Path, teacher: Any, dataset: Any) -> Any:
    """facekd's teacher-feature cache of ``dataset`` (written, then opened as the stage opens it)."""
    from facekd.data.dataset import FaceDataset
    from facekd.data.training_set import StudentData
    from facekd.distill.teacher import CachedTeacher
    from facekd.distill.teacher_cache import open_cache, write_teacher_features

    # The writer embeds each image and its flip itself: it needs the images unflipped (augment off).
    plain = FaceDataset(dataset.source, seed=dataset.seed, augment=False)
    data = StudentData(plain, "bench", dataset.num_classes, str(folder))
    meta = write_teacher_features(folder / "features", teacher, data, teacher_name="teacher",
                                  weights_hash="bench", batch_size=64)
    return CachedTeacher(open_cache(folder / "features", num_images=len(dataset), data_hash="bench",
                                    weights_hash="bench", dim=meta["dim"], dtype="float32"))


def _trainer(setup: Setup, method: str, dataset: Any, teacher_dim: int, feed: Any, run_dir: Path) -> Any:
    import torch

    from facekd.config import DistillParams
    from facekd.distill.registry import build_method
    from facekd.distill.teacher import DistillObjective

    torch.manual_seed(0)  # every variant starts from the same student weights
    backbone = _backbone(setup.student)
    built = build_method(method, DistillParams(), num_classes=setup.classes, student_dim=setup.student[2],
                         teacher_dim=teacher_dim)
    return make_trainer(backbone, DistillObjective(built), dataset, optim_params(setup.batch), run_dir,
                        extra_batch_fn=feed)


def _cache_matches_online(cached: Any, online: Any, raw: dict) -> bool:
    """The cached rows of this batch equal the online teacher on the same (flipped) images."""
    import torch

    from facekd.data.dataset import normalize_batch
    from facekd.training.batch import StepBatch

    batch = StepBatch(image=normalize_batch(raw["image"], torch.device("cpu")), label=raw["label"],
                      index=raw["index"], flip=raw["flip"], step=0, epoch=0.0)
    from_cache = cached(replace(batch)).teacher
    from_model = online(replace(batch)).teacher
    return bool(torch.allclose(from_cache, from_model, rtol=1e-4, atol=1e-4 * float(from_model.abs().max())))


def run_setup(setup: Setup) -> list[common.Result]:
    """Time none / cache / online steps of one setup, interleaved; return the result lines."""
    import torch

    from facekd.distill.teacher import OnlineTeacher

    with common.scratch_dir("distill") as tmp:
        dataset = rec_dataset(tmp / "data", setup.batch, setup.data_classes)
        torch.manual_seed(1)
        teacher = _backbone(setup.teacher).eval()
        cached = _cache(tmp, teacher, dataset)
        raw = first_batch(dataset, setup.batch)
        t_dim = setup.teacher[2]
        steps = {"none": step_fn(_trainer(setup, "none", dataset, setup.student[2], None, tmp / "r0"), raw)}
        for m in METHODS:
            steps[m] = step_fn(_trainer(setup, m, dataset, t_dim, cached, tmp / f"c-{m}"), raw)
        online = OnlineTeacher(teacher, "cpu", channels_last=True) if setup.online else None
        if online is not None:
            for m in setup.online:
                steps[f"{m}-online"] = step_fn(_trainer(setup, m, dataset, t_dim, online, tmp / f"o-{m}"), raw)
        with fit_settings(deterministic=True):
            timings = common.interleaved(steps, repeats=setup.repeats)
        same = _cache_matches_online(cached, online, raw) if online is not None else None
    return _results(setup, timings, same)


def _results(setup: Setup, t: dict[str, common.Timing], same: bool | None) -> list[common.Result]:
    out = []
    student, teacher = "{}x{:g}/{}".format(*setup.student), "{}x{:g}/{}".format(*setup.teacher)
    for m in METHODS:
        detail, ratio = common.compare("cache step", t[m], "none step", t["none"])
        out.append(common.emit(common.Result(
            "distill_cost", f"{setup.name}/{m}", detail, ratio, op="<=", limit=CACHE_LIMIT,
            note=f"{student}, batch {setup.batch}, {setup.classes} classes")))
        if f"{m}-online" in t:
            detail, ratio = common.compare("online-teacher step", t[f"{m}-online"], "cache step", t[m])
            out.append(common.emit(common.Result(
                "distill_cost", f"{setup.name}/{m}-online", detail, ratio, what="speed-up", op=">=",
                limit=ONLINE_LIMIT, identical=same,
                note=f"teacher {teacher}; identical = cached rows equal the online teacher")))
    return out


def run(quick: bool = False) -> list[common.Result]:
    """Measure this target (tiny sizes with ``quick``: a correctness check, not a measurement)."""
    return common.measure_setups(run_setup, quick, QUICK, (FULL, EMBEDDED))


if __name__ == "__main__":
    common.module_main(__doc__, run)
