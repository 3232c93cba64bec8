"""Target 2: facekd's training step for ``mfn`` at 112x112 against a plain arcface_torch-style step.

The reference is written here the way insightface ``arcface_torch`` trains one step: float NCHW
input normalised as ``(x / 255 - 0.5) / 0.5``, fp32, no channels_last; backbone -> normalised
linear to the class centres, clamped -> ArcFace margin applied in place under ``no_grad``
(arccos, add m to the target angle, cos) -> scale -> cross-entropy -> backward -> clip the
backbone's gradient norm to 5 -> SGD (momentum 0.9, weight decay 5e-4) -> zero_grad -> lr step.

facekd's side is :meth:`Trainer.train_step` with a :class:`MarginHead` objective and the default
optim settings (channels_last, deterministic, clipping 5). Both start from the same weights on the
same batch; their first-step losses must agree ("identical": relative difference < 1e-4).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import common
from bench._training import first_batch, fit_settings, make_trainer, optim_params, rec_dataset, step_fn

LIMIT = 1.5
SCALE, MARGIN = 64.0, 0.5


@dataclass(frozen=True)
class Setup:
    name: str
    width: float
    embedding: int
    batch: int
    classes: int
    repeats: int


FULL = Setup("mfn-full", 1.0, 512, batch=64, classes=1000, repeats=4)
EMBEDDED = Setup("mfn-embedded", 0.25, 128, batch=64, classes=200, repeats=6)
QUICK = Setup("mfn-quick", 0.125, 32, batch=4, classes=8, repeats=1)


def _reference_head(weight: Any) -> Any:
    """insightface-style ArcFace over all classes (PartialFC at sample rate 1, one process)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class ReferenceArcFace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(weight.detach().clone())

        def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits = F.linear(F.normalize(emb), F.normalize(self.weight)).clamp(-1, 1)  # (B, C) cosines
            rows = torch.arange(labels.shape[0])
            target = logits[rows, labels]  # (B,) a copy
            with torch.no_grad():  # the margin moves the value only: the gradient goes straight through
                target.arccos_()
                logits.arccos_()
                logits[rows, labels] = target + MARGIN
                logits.cos_()
            return F.cross_entropy(logits * SCALE, labels)

    return ReferenceArcFace()


def _reference_step(model: Any, head: Any, raw: dict) -> Any:
    """One arcface_torch-style optimizer step; returns a closure giving the loss."""
    import torch

    optimizer = torch.optim.SGD([{"params": model.parameters()}, {"params": head.parameters()}],
                                lr=0.1, momentum=0.9, weight_decay=5e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    images, labels = raw["image"], raw["label"]

    def step() -> float:
        x = images.float().div(255).sub(0.5).div(0.5)  # (B, 3, 112, 112) NCHW fp32
        loss = head(model(x), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=5)
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
        return float(loss.detach())

    return step


def run_setup(setup: Setup) -> list[common.Result]:
    import torch

    from facekd.models.heads import MarginHead
    from facekd.models.registry import create_backbone
    from facekd.training.objectives import HeadObjective

    with common.scratch_dir("train") as tmp:
        dataset = rec_dataset(tmp / "data", setup.batch, min(setup.classes, setup.batch // 2 or 1))
        raw = first_batch(dataset, setup.batch)
        torch.manual_seed(0)
        backbone = create_backbone("mfn", embedding_size=setup.embedding, width=setup.width)
        head = MarginHead(setup.classes, setup.embedding, "arcface", SCALE, MARGIN)
        reference = _reference_step(copy.deepcopy(backbone).train(), _reference_head(head.weight), raw)
        trainer = make_trainer(backbone, HeadObjective(head), dataset, optim_params(setup.batch), Path(tmp) / "run")
        facekd = step_fn(trainer, raw)
        with fit_settings(deterministic=True):
            ref_loss, our_loss = reference(), facekd()["loss"]  # first step from the same weights: also the warm-up
            timings = common.interleaved({"facekd": facekd, "reference": reference}, setup.repeats, warmup=0)
    same = math.isclose(ref_loss, our_loss, rel_tol=1e-4)
    common.note(f"{setup.name}: first-step loss facekd {our_loss:.6f}, reference {ref_loss:.6f}")
    detail, speed_up = common.compare("reference step", timings["reference"], "facekd step", timings["facekd"])
    return [common.emit(common.Result(
        "train_step", setup.name, detail, speed_up, what="speed-up", op=">=", limit=LIMIT, identical=same,
        note=f"width {setup.width:g}, {setup.embedding}-d, batch {setup.batch}, {setup.classes} classes"))]


def run(quick: bool = False) -> list[common.Result]:
    """Measure this target (tiny sizes with ``quick``: a correctness check, not a measurement)."""
    return common.measure_setups(run_setup, quick, QUICK, (FULL, EMBEDDED))


if __name__ == "__main__":
    common.module_main(__doc__, run)
