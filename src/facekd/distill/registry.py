"""Name -> distillation method, with its params model and the teacher it distils from.

Adding a method is one module in :mod:`facekd.distill.methods` (or, from another package, a module
named by a ``facekd.methods`` entry point) that decorates its class with
``@register("name", params=<its params section model>)``. The methods are imported on first use
of :func:`methods` (never at import of this module), so the registry depends on no method and
:mod:`facekd.config` derives the ``distill.<name>`` sections from it without a cycle.
"""
from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
from collections.abc import Callable
from typing import Any, TypeVar

from torch import Tensor

from facekd import layout
from facekd.distill.base import DistillMethod
from facekd.errors import ConfigError

M = TypeVar("M", bound=type[DistillMethod])

PLUGIN_GROUP = "facekd.methods"  # entry points of methods shipped in other packages: name = module

_METHODS: dict[str, type[DistillMethod]] = {}
_loaded = False  # built-in modules and entry points imported


def register(name: str, *, params: type) -> Callable[[M], M]:
    """Class decorator: make ``cls`` the method called ``name``, configured by ``distill.<name>`` (``params``)."""

    def add(cls: M) -> M:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"distill method '{name}' is registered twice ({_METHODS[name].__name__}, {cls.__name__})")
        cls.name = name
        cls.params_model = params
        if cls.fine_tunes_teacher:
            cls.teacher_model = layout.student_aware_teacher(name)
        _METHODS[name] = cls
        return cls

    return add


def methods() -> dict[str, type[DistillMethod]]:
    """Every registered method by name: on first call, the modules of :mod:`facekd.distill.methods`
    and of the ``facekd.methods`` entry points are imported (each registers itself)."""
    global _loaded
    if not _loaded:
        package = importlib.import_module("facekd.distill.methods")
        for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
            importlib.import_module(module.name)
        for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
            _load_plugin(entry)
        _loaded = True
    return dict(_METHODS)


def _load_plugin(entry: importlib.metadata.EntryPoint) -> None:
    try:
        entry.load()
    except Exception as err:  # any failure of foreign code: name it, never a bare traceback
        where = f"{entry.dist.name} {entry.dist.version}" if entry.dist else "an installed package"
        raise ConfigError(f"distill method plugin '{entry.name} = {entry.value}' ({where}, entry-point group "
                          f"{PLUGIN_GROUP}) failed to import: {type(err).__name__}: {err}; fix or uninstall it") from err


def foreach_methods() -> tuple[str, ...]:
    """Methods that distil from the pipeline's teacher (or none): one ``distill@<name>`` stage each."""
    return tuple(name for name, cls in methods().items() if not cls.fine_tunes_teacher)


def student_aware_methods() -> tuple[str, ...]:
    """Methods that fine-tune their own copy of the teacher first (SH-KD): the ``*student_aware*`` stages."""
    return tuple(name for name, cls in methods().items() if cls.fine_tunes_teacher)


def method_class(name: str) -> type[DistillMethod]:
    """The class registered as ``name``; unknown names raise :class:`ConfigError`."""
    known = methods()
    if name not in known:
        raise ConfigError(f"unknown distill method '{name}'; valid methods: {', '.join(sorted(known))}")
    return known[name]


def build_method(
    name: str,
    params: Any,
    *,
    num_classes: int,
    student_dim: int,
    teacher_dim: int,
    teacher_head: Tensor | None = None,
) -> DistillMethod:
    """Build method ``name`` from its own section ``params.<name>`` and the student head ``params.head``.

    params: the ``distill`` section (:class:`facekd.config.DistillParams`). teacher_head: the
    teacher's class centres W_t (C, d_t) where the method needs them (for a student-aware method:
    the head of its fine-tuned teacher).
    """
    cls = method_class(name)
    return cls(
        getattr(params, name),
        num_classes=num_classes,
        student_dim=student_dim,
        teacher_dim=teacher_dim,
        head=params.head,
        teacher_head=teacher_head,
    )
