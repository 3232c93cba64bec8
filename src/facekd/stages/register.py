"""Stage ``register``: the best student (by ``registry.gate_metric``) becomes alias ``candidate``;
among students within noise of the best (paired bootstrap intervals), the smallest.

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
    from facekd.mlops.evidence import Selection, select_beyond_noise
    from facekd.mlops.model_registry import register_candidate

    students = [m for m in params.export.models if m in params.evaluate.models and m != "teacher"]
    if model_name:
        selection = Selection(model_name, "named on the command line")
    else:
        selection = select_beyond_noise(students, params.registry.gate_metric, params.evaluate.bootstrap)
    log.info("registering %s: %s", selection.model, selection.reason)
    return register_candidate(params, selection.model, selection)
