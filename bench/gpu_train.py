"""Issue 13 (GPU readiness): training samples/s on one CUDA GPU with AMP (fp16) and channels_last.

facekd's real step (:meth:`Trainer.train_step`: normalisation on the device, forward, margin-softmax
loss, scaled backward, clipping, SGD) for the teacher (iresnet50, 512-d) and a student (mfn, 512-d)
at batch 128 per GPU over 10,000 classes, timed over 20 steps after a warm-up with the GPU
synchronised. The reference figure is insightface arcface_torch's published throughput of about
740 samples/s per GPU for R50 with fp16 (its README's speed table); the student has no published
figure (information only). Skipped without CUDA; as one short script it runs in a few minutes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from bench import common
from bench._training import first_batch, fit_settings, make_trainer, optim_params, rec_dataset, step_fn

INSIGHTFACE_R50_FP16 = 740.0  # samples/s per GPU, arcface_torch README


@dataclass(frozen=True)
class Setup:
    name: str
    arch: str
    batch: int
    steps: int
    reference: float | None


SETUPS = (Setup("teacher-iresnet50", "iresnet50", 128, 20, INSIGHTFACE_R50_FP16),
          Setup("student-mfn", "mfn", 128, 20, None))
CLASSES = 10_000


def run_setup(setup: Setup) -> common.Result:
    import torch

    from facekd.models.heads import MarginHead
    from facekd.models.registry import create_backbone
    from facekd.training.objectives import HeadObjective

    with common.scratch_dir("gpu") as tmp:
        dataset = rec_dataset(Path(tmp) / "data", setup.batch, setup.batch // 2)
        raw = first_batch(dataset, setup.batch)
        torch.manual_seed(0)
        backbone = create_backbone(setup.arch, embedding_size=512, fp16=True)
        objective = HeadObjective(MarginHead(CLASSES, 512, "arcface", 64.0, 0.5))
        optim = optim_params(setup.batch, amp="fp16", channels_last=True, deterministic=False)
        trainer = make_trainer(backbone, objective, dataset, optim, Path(tmp) / "run", device="cuda")
        step = step_fn(trainer, raw)
        with fit_settings(deterministic=False):
            for _ in range(5):
                step()
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(setup.steps):
                step()
            torch.cuda.synchronize()
            seconds = time.perf_counter() - start
    rate = setup.batch * setup.steps / seconds
    name = torch.cuda.get_device_name(0)
    if setup.reference is None:
        return common.emit(common.Result("gpu_train", setup.name, f"{rate:.0f} samples/s on {name}", rate,
                                         what="samples/s", op=""))
    return common.emit(common.Result(
        "gpu_train", setup.name, f"{rate:.0f} samples/s vs insightface {setup.reference:.0f} on {name}",
        rate / setup.reference, what="ratio", op=">=", limit=1.0, note="AMP fp16, channels_last, batch 128"))


def run(quick: bool = False) -> list[common.Result]:
    """Both setups on the first CUDA device; nothing (with a note) where there is none."""
    import torch

    if not torch.cuda.is_available():
        common.note("gpu_train: skipped, no CUDA device")
        return []
    return [run_setup(setup) for setup in SETUPS]


if __name__ == "__main__":
    common.module_main(__doc__, run)
