"""Stage ``register``: the best student (by ``registry.gate_metric``) becomes alias ``candidate``.

The choice is among the students that are both exported and evaluated (``export.models`` and
``evaluate.models``, never the teacher). Writes ``reports/registry.json``. Registering an unchanged
ONNX file again reuses its version.
"""
from __future__ import annotations

import logging
from typing import Any

from facekd.config import Params

log = logging.getLogger(__name__)


def run(params: Params, model_name: str | None = None) -> dict[str, Any]:
    """Register ``model_name``, or when None the best exported and evaluated student; returns the record."""
    from facekd.registry import register_candidate, select_best

    students = [m for m in params.export.models if m in params.evaluate.models and m != "teacher"]
    chosen = model_name or select_best(students, params.registry.gate_metric)
    return register_candidate(params, chosen)
