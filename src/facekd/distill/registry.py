"""Name -> distillation method. Registering a method is one module plus ``@register("name")``."""
from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from torch import Tensor

from facekd.config import DistillParams
from facekd.distill.base import DistillMethod
from facekd.errors import ConfigError

M = TypeVar("M", bound=type[DistillMethod])

METHODS: dict[str, type[DistillMethod]] = {}


def register(name: str) -> Callable[[M], M]:
    """Class decorator: make ``cls`` the method called ``name`` (its params section too)."""

    def add(cls: M) -> M:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"distill method '{name}' is registered twice ({METHODS[name].__name__}, {cls.__name__})")
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


def method_class(name: str) -> type[DistillMethod]:
    """The class registered as ``name``; unknown names raise :class:`ConfigError`."""
    if name not in METHODS:
        raise ConfigError(f"unknown distill method '{name}'; valid methods: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def build_method(
    name: str,
    params: DistillParams,
    *,
    num_classes: int,
    student_dim: int,
    teacher_dim: int,
    teacher_head: Tensor | None = None,
) -> DistillMethod:
    """Build method ``name`` from its own section ``params.<name>`` and the student head ``params.head``.

    teacher_head: the teacher's class centres W_t (C, d_t) where the method needs them (for
    ``shkd``: the head of the student-aware teacher).
    """
    cls = method_class(name)
    section = getattr(params, name)
    return cls(
        section,
        num_classes=num_classes,
        student_dim=student_dim,
        teacher_dim=teacher_dim,
        head=params.head,
        teacher_head=teacher_head,
    )


# The built-in methods register themselves on import. Imported last because each of them imports
# ``register`` from this module.
from facekd.distill import (  # noqa: E402,F401
    adadistill,
    arcdistill,
    feature,
    gkd,
    logit,
    none,
    qud,
    thkd,
)
