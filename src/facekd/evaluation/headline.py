"""``metrics/headline.json``: the few numbers per model that ``dvc exp show`` and ``dvc metrics diff`` compare.

The evaluate stage's ``metrics/eval/<model>.json`` holds every benchmark, operating point and
gallery (hundreds of numbers per model): declared as DVC metrics they made ``dvc exp show``
thousands of characters wide, and a change to one method drowned among them. The report stage
writes this file instead, and it is the pipeline's DVC metrics file:

    {"gate_metric": "ijb.tar@far=1e-3",
     "qud": {"gate": 0.08, "gate_low": 0.033, "gate_high": 0.253, "lfw_acc": 0.9}, ...}

per model at most four flat numbers: the gate metric (``registry.gate_metric``, the number the
registry promotes on), its 95% bootstrap interval when the report computed one, and the accuracy of
the LFW-style ``.bin`` set (``lfw``, else the first set whose name contains ``lfw``). A number the
evaluation could not measure (an operating point the set is too small for) is left out rather than
written as null, so DVC shows ``-``. ``gate_metric`` names what ``gate`` is, so two experiments
gated on different metrics are not compared as if they were one.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from facekd import layout
from facekd.errors import DataError
from facekd.fsio import read_json_object, write_json

GATE_METRIC = "gate_metric"  # top-level key: which metric "gate" is
KEYS = ("gate", "gate_low", "gate_high", "lfw_acc")
DIGITS = 6  # more than any evaluation set here resolves; keeps the file and `dvc metrics diff` readable


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return round(float(value), DIGITS)


def _lookup(metrics: Mapping[str, Any], dotted: str) -> Any:
    """``metrics["ijb"]["tar@far=1e-3"]`` for ``"ijb.tar@far=1e-3"`` (the key after the benchmark may hold dots)."""
    bench, _, key = dotted.partition(".")
    node = metrics.get(bench)
    return node.get(key) if isinstance(node, Mapping) else None


def lfw_benchmark(metrics: Mapping[str, Any]) -> str | None:
    """The verification set whose accuracy stands for "LFW accuracy": ``lfw``, else the first (by name)
    ``.bin`` set whose name contains ``lfw`` (``synth_lfw`` in the embedded default), else None."""
    names = sorted(name for name, values in metrics.items()
                   if isinstance(values, Mapping) and "accuracy" in values and "lfw" in name.lower())
    return "lfw" if "lfw" in names else (names[0] if names else None)


def model_headline(metrics: Mapping[str, Any], gate: str, interval: Any = None) -> dict[str, float]:
    """One model's headline numbers from its ``metrics/eval/<model>.json`` tree and, when the report
    bootstrapped one, the gate metric's interval (an object with ``low`` and ``high``)."""
    row = {"gate": _number(_lookup(metrics, gate))}
    if interval is not None:
        row |= {"gate_low": _number(interval.low), "gate_high": _number(interval.high)}
    bench = lfw_benchmark(metrics)
    if bench is not None:
        row["lfw_acc"] = _number(metrics[bench]["accuracy"])
    return {key: value for key, value in row.items() if value is not None}


def build(metrics: Mapping[str, Mapping[str, Any]], gate: str, study: Any = None) -> dict[str, Any]:
    """The headline of every evaluated model (``metrics``: model -> its evaluation tree); ``study``
    is the report's :class:`~facekd.evaluation.uncertainty.PairedStudy` or None."""
    intervals = study.models if study is not None else {}
    return {GATE_METRIC: gate, **{name: model_headline(tree, gate, intervals.get(name))
                                  for name, tree in metrics.items()}}


def write(headline: Mapping[str, Any], path: Path = layout.HEADLINE) -> Path:
    write_json(path, dict(headline))
    return path


def parse(headline: Any, source: str) -> dict[str, Any]:
    """A headline object checked for shape; ``source`` names where it came from in the error."""
    if not isinstance(headline, Mapping) or not isinstance(headline.get(GATE_METRIC), str):
        raise DataError(f"{source}: not a facekd headline (a JSON object with '{GATE_METRIC}' and one "
                        "object per model); it is written by `facekd report` (dvc stage report)")
    models = {name: row for name, row in headline.items() if name != GATE_METRIC}
    bad = sorted(name for name, row in models.items() if not isinstance(row, Mapping))
    if bad:
        raise DataError(f"{source}: model entries {', '.join(bad)} are not objects; rerun `dvc repro report`")
    return dict(headline)


def read(path: Path = layout.HEADLINE) -> dict[str, Any]:
    data = read_json_object(path, DataError, redo="rerun `dvc repro report`",
                            missing="no headline metrics; run `dvc repro report` (or `make run`) first")
    return parse(data, str(path))
