"""What a registered version rests on: the evaluation numbers on disk, the gate metric read from
them, which student to register (beyond noise), and the candidate's files and INT8 copy.

Everything here reads the workspace (``metrics/eval``, ``metrics/scores``, ``exports``, ``models``);
nothing talks to MLflow. A missing or unusable file is a :class:`RegistryError` that names it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from facekd import layout
from facekd.config import Params
from facekd.errors import FacekdError, RegistryError
from facekd.fsio import read_json_object

log = logging.getLogger(__name__)

_MISSING = object()


def read_eval_metrics(model_name: str) -> dict[str, Any]:
    """``metrics/eval/<model>.json`` (written by the evaluate stage)."""
    path = layout.eval_metrics_file(model_name)
    return read_json_object(
        path, RegistryError, redo=f"re-run `facekd evaluate {model_name}`",
        missing=f"no evaluation metrics for model '{model_name}'; run `facekd evaluate {model_name}` first")


def lookup(tree: Any, dotted: str) -> Any:
    """``tree["ijb"]["tar@far=1e-4"]`` for ``"ijb.tar@far=1e-4"``; a key may itself contain dots."""
    if isinstance(tree, dict):
        if dotted in tree:
            return tree[dotted]
        for key in tree:
            if isinstance(key, str) and dotted.startswith(key + "."):
                found = lookup(tree[key], dotted[len(key) + 1 :])
                if found is not _MISSING:
                    return found
    return _MISSING


def gate_value(metrics: dict[str, Any], metric: str, *, model: str, source: str) -> float:
    """The gate metric as a float; RegistryError naming the model, source and key otherwise."""
    value = lookup(metrics, metric)
    if value is _MISSING or value is None:
        top = ", ".join(sorted(str(k) for k in metrics)) or "nothing"
        why = "is null (no such operating point)" if value is None else f"is missing (top-level keys: {top})"
        raise RegistryError(
            f"{source}: gate metric '{metric}' of model '{model}' {why}; "
            "evaluate it on that benchmark or change registry.gate_metric"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise RegistryError(f"{source}: gate metric '{metric}' of model '{model}' is {value!r}, not a finite number")
    return float(value)


def operating_point(metrics: dict[str, Any], gate_metric: str, far: float) -> dict[str, Any]:
    """Where `facekd verify` decides: the cosine threshold the gate metric's benchmark recorded at
    ``far``, with the TAR there (``threshold`` None when not recorded, e.g. a set too small for it)."""
    from facekd.evaluation.metrics import rate_key

    benchmark = gate_metric.split(".", 1)[0]

    def number(key: str) -> float | None:
        value = lookup(metrics, f"{benchmark}.{key}")
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    return {"benchmark": benchmark, "far": far, "threshold": number(rate_key("threshold@far", far)),
            "tar": number(rate_key("tar@far", far)), "num_genuine": number("num_genuine"),
            "num_impostor": number("num_impostor")}


def select_best(model_names: list[str] | tuple[str, ...], gate_metric: str) -> str:
    """The student with the highest gate metric; ties go to fewer parameters. Never the teacher."""
    students = [name for name in model_names if name != "teacher"]
    if not students:
        raise RegistryError(f"no student to choose from (got {list(model_names)}); distill at least one method")

    def rank(name: str) -> tuple[float, float]:
        metrics = read_eval_metrics(name)
        params_m = metrics.get("params_m")
        size = float(params_m) if isinstance(params_m, (int, float)) else float("inf")
        return gate_value(metrics, gate_metric, model=name, source=str(layout.eval_metrics_file(name))), -size

    ranked = sorted(students, key=rank, reverse=True)
    log.info("best student by %s: %s (of %s)", gate_metric, ranked[0], ", ".join(students))
    return ranked[0]


@dataclass(frozen=True)
class Selection:
    """Which student to register and why; the gate's 95% interval when the scores allow one."""

    model: str
    reason: str
    gate_low: float | None = None
    gate_high: float | None = None

    def record(self) -> dict[str, Any]:
        return {"model": self.model, "reason": self.reason, "gate_low": self.gate_low, "gate_high": self.gate_high}


def select_beyond_noise(students: list[str] | tuple[str, ...], gate_metric: str, bootstrap: Any) -> Selection:
    """The best student by the gate metric, unless others are within noise of it: then the smallest
    of those (fewest parameters), since the data cannot tell them apart.

    "Within noise": the paired 95% interval of (student - best) over resampled evaluation identities
    includes 0 (:func:`facekd.evaluation.uncertainty.gate_study`, ``evaluate.bootstrap``).
    """
    from facekd.evaluation.uncertainty import gate_study

    best = select_best(students, gate_metric)
    pool = tuple(name for name in students if name != "teacher")
    study = gate_study(pool, gate_metric, bootstrap, baseline=best) if len(pool) > 1 else None
    if study is None:
        return Selection(best, f"highest {gate_metric} (no interval: no scored pairs or intervals off)")
    tied = [name for name in pool if name != best and not study.vs_baseline[name].excludes_zero()]
    chosen = min([best, *tied], key=lambda name: (_params_m(name), name != best))
    interval = study.models[chosen]
    conf = f"{bootstrap.confidence:.0%}"
    if not tied:
        reason = f"highest {gate_metric}, above every other student beyond noise (paired {conf} intervals)"
    elif chosen == best:
        reason = (f"highest {gate_metric}; within noise of it (paired {conf} intervals include 0): "
                  f"{', '.join(tied)}; it is also the smallest of them")
    else:
        reason = (f"within noise of the highest, {best} (paired {conf} interval of the difference includes 0), "
                  f"and the smallest of {', '.join(sorted([best, *tied]))}")
    return Selection(chosen, reason, interval.low, interval.high)


def _params_m(name: str) -> float:
    value = read_eval_metrics(name).get("params_m")
    return float(value) if isinstance(value, (int, float)) else float("inf")


@dataclass(frozen=True)
class Int8Evidence:
    """The candidate's INT8 copy: its file and evaluation, and how far it falls from the float model.

    ``drop`` is float minus INT8 on the gate metric (positive: INT8 is worse); ``drop_low`` /
    ``drop_high`` its paired 95% interval on the report's resamples (None without one).
    """

    onnx_path: Path
    onnx_sha256: str
    metrics: dict[str, Any]
    gate_value: float
    drop: float
    drop_low: float | None
    drop_high: float | None
    cosine: dict[str, Any]  # min / median / images over the evaluation images

    def record(self, max_drop: float | None) -> dict[str, Any]:
        """reports/registry.json's ``int8`` entry, with the gate's verdict at ``max_drop``."""
        passed, reason = int8_verdict(self.drop, max_drop)
        return {"onnx_sha256": self.onnx_sha256, "gate_value": self.gate_value, "drop": self.drop,
                "drop_low": self.drop_low, "drop_high": self.drop_high,
                "cosine_min": self.cosine.get("min"), "cosine_median": self.cosine.get("median"),
                "max_drop": max_drop, "passes_gate": passed, "reason": reason}


def int8_verdict(drop: float, max_drop: float | None) -> tuple[bool | None, str]:
    """(passes, reason) of the INT8 gate: a drop (float minus INT8, gate units) up to ``max_drop``
    passes; None when the gate is off.

    The point value decides, not the interval's upper end: on a small evaluation set the interval
    spans several points even when INT8 and float agree (embedded: +-1.3 points with a drop of 0),
    so a bound would refuse every release; the interval is recorded beside it.
    """
    if max_drop is None:
        return None, f"INT8 drop {drop:+.6g} (registry.max_int8_drop off: float-only release)"
    if drop > max_drop:
        return False, f"INT8 copy loses {drop:+.6g} on the gate metric, more than registry.max_int8_drop {max_drop:g}"
    return True, f"INT8 drop {drop:+.6g} within registry.max_int8_drop {max_drop:g}"


@dataclass(frozen=True)
class Candidate:
    """Everything on disk that goes into one registered version."""

    model: str
    model_dir: Path
    onnx_path: Path
    onnx_sha256: str
    export_report: dict[str, Any]
    metrics: dict[str, Any]
    gate_metric: str
    gate_value: float
    meta: dict[str, Any]
    operating_point: dict[str, Any]
    selection: Selection | None = None
    int8: Int8Evidence | None = None

    @property
    def checks_passed(self) -> bool:
        return bool(self.export_report.get("checks", {}).get("passed"))


def gather_candidate(params: Params, model_name: str) -> Candidate:
    """Read the model's ONNX file, export report, metrics and meta; RegistryError if any is missing."""
    import hashlib

    from facekd.models.store import read_meta

    fix = f"run `facekd export {model_name}` first"
    path, report_file = layout.onnx_path(model_name), layout.export_report(model_name)
    folder = layout.model_dir(model_name)
    try:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise RegistryError(f"{path}: exported ONNX model of '{model_name}' not found; {fix}") from None
    report = read_json_object(report_file, RegistryError, missing=f"export report not found; {fix}", redo=fix)
    if report.get("export", {}).get("sha256") not in (None, sha):
        raise RegistryError(
            f"{path}: file changed since its export report {report_file} was written; {fix} again"
        )
    metrics = read_eval_metrics(model_name)
    metric = params.registry.gate_metric
    value = gate_value(metrics, metric, model=model_name, source=str(layout.eval_metrics_file(model_name)))
    try:
        meta = read_meta(folder)
    except FacekdError as err:
        raise RegistryError(f"model '{model_name}': {err}") from None
    point = operating_point(metrics, metric, params.registry.verify_far)
    int8 = gather_int8(params, model_name, value)
    return Candidate(model_name, folder, path, sha, report, metrics, metric, value, meta, point,
                     int8=int8)


def gather_int8(params: Params, model_name: str, float_value: float) -> Int8Evidence | None:
    """The INT8 copy of ``model_name`` and its evaluation; None (logged) when it has none.

    RegistryError when the evaluation is of another file than ``exports/<model>.int8.onnx`` (it was
    re-exported since) or lacks the gate metric.
    """
    import hashlib

    from facekd.evaluation.int8 import COSINE_KEY, int8_metrics
    from facekd.evaluation.uncertainty import gate_study

    name = layout.int8_name(model_name)
    path, metrics_file = layout.int8_path(model_name), layout.eval_metrics_file(name)
    try:
        metrics = int8_metrics(model_name)
    except FacekdError as err:
        raise RegistryError(str(err)) from None
    if metrics is None or not path.is_file():
        log.info("%s: no INT8 copy evaluated (%s, %s); registering the float model only", model_name, path,
                 metrics_file)
        return None
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    if metrics.get("onnx_sha256") != sha:
        raise RegistryError(f"{metrics_file}: evaluates another file than {path} (re-exported "
                            f"since); run `facekd evaluate {model_name} --int8` (dvc repro) again")
    metric = params.registry.gate_metric
    value = gate_value(metrics, metric, model=name, source=str(metrics_file))
    study = gate_study((model_name,), metric, params.evaluate.bootstrap, baseline=model_name,
                       contrasts={"int8": (name, model_name)})
    paired = study.contrasts.get("int8") if study is not None else None
    return Int8Evidence(path, sha, metrics, value, float_value - value,
                        None if paired is None else -paired.high, None if paired is None else -paired.low,
                        dict(metrics.get(COSINE_KEY) or {}))
