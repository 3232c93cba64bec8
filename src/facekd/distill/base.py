"""The one interface every distillation method implements.

A method is an ``nn.Module``: it owns its trainable parameters (the student's own margin head, a
projection into the teacher's embedding space) and keeps its state (QUD's queue, AdaDistill's
centres) in buffers, so ``method.parameters()`` goes to the optimiser and ``method.state_dict()``
into the checkpoint. The frozen teacher head is a non-persistent buffer: it comes from the teacher
every run, is never trained, and would only bloat checkpoints (C x d).

All loss math runs in float32 with autocast off (margins and temperatures lose their meaning in
half precision). Shared state is updated under ``torch.no_grad()``, only in training mode, and from
tensors gathered over all ranks (:mod:`facekd.distill.sync`), so 1 and N ranks end up identical.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from facekd.config import HeadParams
from facekd.errors import ConfigError
from facekd.models.heads import MarginHead

log = logging.getLogger(__name__)


@dataclass
class DistillBatch:
    """One step's inputs to a distillation method.

    student: (B, d_s) raw student embeddings (requires grad); teacher: (B, d_t) raw teacher
    embeddings (no grad; cached or online); labels: (B,) int64 identities, or None for unlabeled
    data; epoch: fractional epoch (3.25 = a quarter into the fourth epoch) for schedules.
    """

    student: Tensor
    teacher: Tensor
    labels: Tensor | None
    epoch: float = 0.0


class DistillMethod(nn.Module):
    """Base class: validates the batch, then :meth:`compute` returns ``{"loss": ..., parts}``.

    Set by ``@register``: ``name`` and ``params_model``, the pydantic model of its ``distill.<name>``
    section. Class flags (a pipeline reads them before building anything):
    ``teacher_model``: the trained model (``models/<name>``) it distils from, ``None`` for a loss
    that never reads a teacher (the pipeline then loads none); ``fine_tunes_teacher``: the method
    distils from its own student-aware copy of the teacher (SH-KD), ``models/teacher_<name>``,
    trained by the ``student_aware_teacher@<name>`` stage; ``needs_labels``: the loss uses
    identity labels; ``needs_teacher_head``: the loss uses the teacher's class centres ``W_t``;
    ``shares_teacher_space``: the loss compares the student embedding with teacher-space vectors,
    so a learned linear projection is added when the embedding sizes differ.
    :meth:`requires_labels` / :meth:`requires_teacher_head` refine the flags with the method's
    params (feature KD needs labels only with ``with_ce``).
    """

    name: ClassVar[str] = ""
    params_model: ClassVar[type] = type(None)
    teacher_model: ClassVar[str | None] = "teacher"
    fine_tunes_teacher: ClassVar[bool] = False
    needs_labels: ClassVar[bool] = True
    needs_teacher_head: ClassVar[bool] = False
    shares_teacher_space: ClassVar[bool] = False

    def __init__(
        self,
        params: Any,
        *,
        num_classes: int,
        student_dim: int,
        teacher_dim: int,
        head: HeadParams,
        teacher_head: Tensor | None,
    ) -> None:
        super().__init__()
        self.params = params
        self.num_classes = num_classes
        self.student_dim = student_dim
        self.teacher_dim = teacher_dim
        self.head_params = head
        self.uses_labels = type(self).requires_labels(params)
        if self.needs_teacher_head:
            # (C, d_t) unit rows: every use is a cosine, so normalise once.
            self.register_buffer("teacher_centres", self.checked_teacher_head(teacher_head), persistent=False)
        self.project: nn.Module = (
            self._projection() if self.shares_teacher_space else nn.Identity()
        )

    @classmethod
    def check_setting(cls, params: Any, batch_size: int) -> None:
        """Raise ``ValueError`` when the section ``params`` cannot run with this global batch size."""

    @classmethod
    def requires_labels(cls, params: Any) -> bool:
        """Whether this method, with these params, needs identity labels."""
        return cls.needs_labels

    @classmethod
    def requires_teacher_head(cls, params: Any) -> bool:
        """Whether this method, with these params, needs the teacher's head ``W_t``."""
        return cls.needs_teacher_head

    def forward(self, batch: DistillBatch) -> dict[str, Tensor]:
        """Validate ``batch`` and return ``{"loss": scalar, <named parts>}``.

        The teacher embedding is detached here, so no method can send a gradient into the teacher.
        """
        self._check_batch(batch)
        batch = replace(batch, teacher=batch.teacher.detach())
        with torch.autocast(device_type=batch.student.device.type, enabled=False):
            return self.compute(batch)

    def compute(self, batch: DistillBatch) -> dict[str, Tensor]:
        """The method's loss; subclasses implement it (inputs already validated)."""
        raise NotImplementedError

    # ---- helpers for subclasses -------------------------------------------------------------

    def student_head(self, kind: str | None = None, margin: float | None = None) -> MarginHead:
        """The student's own margin head over its raw embedding size (a trainable part)."""
        return MarginHead(
            self.num_classes,
            self.student_dim,
            kind or self.head_params.type,
            self.head_params.scale,
            self.head_params.margin if margin is None else margin,
        )

    def in_teacher_space(self, student: Tensor) -> Tensor:
        """(B, d_t) unit student embeddings, projected when d_s != d_t."""
        return F.normalize(self.project(student.float()), dim=1)

    # ---- construction and checks -------------------------------------------------------------------------------

    def _projection(self) -> nn.Module:
        if self.student_dim == self.teacher_dim:
            return nn.Identity()
        log.info(
            "%s: student embedding %d-d, teacher %d-d: adding a learned linear projection",
            self.name, self.student_dim, self.teacher_dim,
        )
        return nn.Linear(self.student_dim, self.teacher_dim, bias=False)

    def checked_teacher_head(self, teacher_head: Tensor | None) -> Tensor:
        """W_t (C, d_t) with unit rows, float32, detached; ConfigError if missing or misshapen."""
        expected = (self.num_classes, self.teacher_dim)
        if teacher_head is None:
            raise ConfigError(
                f"distill method '{self.name}' needs the teacher's head weight W_t {expected}, "
                "but none was given: train the teacher with a margin head on the same identities "
                "(its checkpoint holds the head) or choose a method that needs no teacher head"
            )
        if tuple(teacher_head.shape) != expected:
            raise ConfigError(
                f"distill method '{self.name}': teacher head has shape {tuple(teacher_head.shape)}, "
                f"expected (num_classes, teacher embedding size) = {expected}; the teacher must be "
                "trained on the same identities as the student"
            )
        return F.normalize(teacher_head.detach().float(), dim=1).clone()

    def _check_batch(self, batch: DistillBatch) -> None:
        s, t = batch.student, batch.teacher
        if s.dim() != 2 or s.shape[1] != self.student_dim:
            raise ValueError(f"{self.name}: student embeddings must be (B, {self.student_dim}), got {tuple(s.shape)}")
        if t.dim() != 2 or t.shape[1] != self.teacher_dim or t.shape[0] != s.shape[0]:
            raise ValueError(
                f"{self.name}: teacher embeddings must be ({s.shape[0]}, {self.teacher_dim}), got {tuple(t.shape)}"
            )
        if batch.labels is None:
            if self.uses_labels:
                raise ConfigError(
                    f"distill method '{self.name}' needs identity labels but the batch has none "
                    "(unlabeled data): use labelled data or a label-free method such as 'qud'"
                )
        elif tuple(batch.labels.shape) != (s.shape[0],) or batch.labels.dtype != torch.int64:
            raise ValueError(
                f"{self.name}: labels must be int64 of shape ({s.shape[0]},), "
                f"got {batch.labels.dtype} {tuple(batch.labels.shape)}"
            )


def soft_kl(teacher_logits: Tensor, student_logits: Tensor, temperature: float) -> Tensor:
    """Hinton's ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``, summed over classes, mean over B."""
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)  # (B, C)
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)  # (B, C)
    kl = F.kl_div(log_p_s, log_p_t, log_target=True, reduction="batchmean")
    return kl * temperature**2
