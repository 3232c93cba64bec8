"""The model card logged with every registered version: one JSON record and its Markdown view.

The register stage also writes the Markdown to ``reports/model_card.md``. The card says what the
model is for, what it was evaluated on (and loudly when that was the synthetic embedded set), the
threshold `facekd verify` decides with, and what the numbers cannot tell.
"""
from __future__ import annotations

import json
import math
from typing import Any

SYNTHETIC_SOURCE = "synthetic"
Z95 = 1.959963984540054  # two-sided 95% normal quantile

INTENDED_USE = (
    "1:1 face verification and 1:N search on aligned 112x112 RGB face crops (insightface's 5-point "
    "alignment, as the training and evaluation data): embed each face, compare two faces by the cosine "
    "of their L2-normalised embeddings (`facekd embed`, `facekd verify`)."
)
LIMITATIONS = (
    "Unaligned or differently aligned crops, other resolutions, profile faces and heavy occlusion were "
    "not measured and score lower.",
    "The threshold holds the stated FAR on the evaluation set's impostor pairs only; recalibrate it on "
    "pairs from the population and capture conditions of the deployment.",
    "Accuracy across demographic groups was not measured. Not for decisions with legal or similarly "
    "significant effects on a person without human review.",
)


def build_card(
    *,
    model: str,
    meta: dict[str, Any],
    metrics: dict[str, Any],
    export_report: dict[str, Any],
    onnx_sha256: str,
    gate_metric: str,
    gate_value: float,
    git_commit: str | None,
    operating_point: dict[str, Any],
    eval_data: dict[str, Any],
    int8_eval: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Everything needed to judge and reproduce a registered model, as one JSON-able dict.

    ``operating_point`` is ``registry.operating_point``'s verify threshold; ``eval_data`` names the
    data source and evaluation folder; ``int8_eval`` the INT8 copy's evaluation (``gate_metric``,
    ``float_value``, ``int8_value``, ``drop`` = float - INT8 with ``drop_low`` / ``drop_high``, and
    ``cosine`` min / median / images over the evaluation images), None when it was not evaluated.
    """
    checks = export_report.get("checks", {})
    synthetic = eval_data.get("source") == SYNTHETIC_SOURCE
    return {
        "model": model,
        "method": meta.get("method", model),
        "teacher": meta.get("teacher"),
        "arch": meta.get("arch"),
        "embedding_size": meta.get("embedding_size"),
        "width": meta.get("width"),
        "data_hash": meta.get("data_hash"),
        "git_commit": git_commit,
        "params": meta.get("params"),
        "params_m": meta.get("params_m", metrics.get("params_m")),
        "gmacs": meta.get("gmacs", metrics.get("gmacs")),
        "gate": {"metric": gate_metric, "value": gate_value},
        "intended_use": INTENDED_USE,
        "evaluation_data": {**eval_data, "synthetic": synthetic,
                            "benchmarks": sorted(k for k, v in metrics.items() if isinstance(v, dict))},
        "verification": {**operating_point, "tar_interval95": _wilson(operating_point.get("tar"),
                                                                      operating_point.get("num_genuine"))},
        "limitations": list(LIMITATIONS),
        "eval_metrics": metrics,
        "onnx": {
            "sha256": onnx_sha256,
            "opset": checks.get("opset"),
            "file_bytes": checks.get("file_bytes"),
            "exporter": export_report.get("export", {}).get("exporter"),
            "input": "data (batch, 3, 112, 112) float32, RGB, (x - 127.5) / 127.5",
            "output": "embedding (batch, d) float32, not normalised",
        },
        "int8": _int8(export_report.get("int8"), int8_eval, checks.get("file_bytes")),
        "export_checks": {
            "passed": bool(checks.get("passed")),
            "failures": checks.get("failures", []),
            "parity": checks.get("parity", {}),
            "latency_ms": checks.get("latency_ms", {}),
            "mfr_rules": {name: rule.get("ok") for name, rule in checks.get("mfr_rules", {}).items()},
        },
    }


def _int8(report: dict[str, Any] | None, evaluation: dict[str, Any] | None,
          float_bytes: int | None) -> dict[str, Any] | None:
    """The INT8 copy: size (and the float file's), calibration data, cosine to float on the export's
    parity images, and its evaluation beside the float model's (None when not made)."""
    if not report:
        return None
    return {**{key: report.get(key) for key in ("sha256", "file_bytes", "calibration_data", "calibration_images",
                                                "kept_float", "cosine_to_float")},
            "float_file_bytes": float_bytes, "evaluation": evaluation}


def _points(rate: float | None, signed: bool = False) -> str:
    return "not measured" if rate is None else f"{100 * rate:{'+' if signed else ''}.2f}"


def _int8_section(int8: dict[str, Any] | None) -> str:
    """Markdown: float and INT8 side by side (gate metric, size), the drop, the cosine, the calibration."""
    if not int8:
        return "No INT8 copy was made (export.int8.enabled is off)."
    ev = int8.get("evaluation")
    rows = []
    if ev:
        rows.append((f"gate: {ev['gate_metric']} (%)", _points(ev["float_value"]), _points(ev["int8_value"])))
    rows.append(("ONNX file (bytes)", int8.get("float_file_bytes"), int8["file_bytes"]))
    table = "| | float | INT8 |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)
    lines = [table, ""]
    if ev:
        interval = ("" if ev.get("drop_low") is None else
                    f" (paired 95% interval {_points(ev['drop_low'], True)} to {_points(ev['drop_high'], True)})")
        cos = ev.get("cosine") or {}
        lines.append(f"- drop from float (float - INT8): {_points(ev['drop'], True)} points{interval}")
        if cos:
            lines.append(f"- embedding cosine INT8 vs float over the {cos.get('images')} evaluated images (each and "
                         f"its mirror): min {cos['min']:.4f}, median {cos['median']:.4f}")
    else:
        lines.append("- the INT8 copy was not evaluated on the benchmarks (`dvc repro evaluate_int8`)")
    parity = int8.get("cosine_to_float") or {}
    if parity:
        lines.append(f"- embedding cosine on the export's {parity.get('images')} parity images: min "
                     f"{parity['min']:.4f}, median {parity['median']:.4f}")
    lines.append(f"- calibration: {int8['calibration_images']} training images of `{int8['calibration_data']}`; "
                 f"kept in float: {', '.join(int8.get('kept_float') or []) or 'nothing'}")
    return "\n".join(lines)


def _int8_text(int8: dict[str, Any] | None) -> str:
    if not int8:
        return "not made"
    cos = int8["cosine_to_float"]
    return (f"{int8['file_bytes']} bytes, calibrated on {int8['calibration_images']} images of "
            f"`{int8['calibration_data']}`; embedding cosine to float min {cos['min']:.4f}, median {cos['median']:.4f}")


def _wilson(rate: float | None, n: float | None) -> list[float] | None:
    """95% Wilson score interval of a rate measured on ``n`` trials (None when unmeasured)."""
    if rate is None or not n:
        return None
    centre = (rate + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 / (1 + Z95**2 / n) * math.sqrt(rate * (1 - rate) / n + Z95**2 / (4 * n * n))
    return [max(0.0, centre - half), min(1.0, centre + half)]


def _percent(rate: float | None) -> str:
    return "not measured" if rate is None else f"{100 * rate:.2f}%"


def _count(n: float | None) -> str:
    return "an unrecorded number of" if n is None else f"{n:.0f}"


def threshold_text(card: dict[str, Any]) -> str:
    """One sentence: the decision threshold and where it comes from."""
    point = card["verification"]
    if point.get("threshold") is None:
        return (f"no threshold at FAR {point['far']:g}: benchmark '{point['benchmark']}' recorded none "
                "(too few impostor pairs, or evaluated before thresholds were recorded)")
    return (f"same person when cosine > {point['threshold']:.4f} (FAR {point['far']:g} on the "
            f"{_count(point['num_impostor'])} impostor pairs of '{point['benchmark']}')")


def describe(card: dict[str, Any]) -> str:
    """The registry version's description: what it is, on what data, and how to decide."""
    data = "SYNTHETIC evaluation data" if card["evaluation_data"]["synthetic"] else "evaluation data"
    gate = card["gate"]
    return (f"facekd student '{card['model']}' ({card['arch']}, {card['embedding_size']}-d): "
            f"{gate['metric']} = {gate['value']:.4f} on {data} at {card['evaluation_data']['path']}; "
            f"{threshold_text(card)}. Input: aligned 112x112 face crops.{_int8_description(card.get('int8'))}")


def _int8_description(int8: dict[str, Any] | None) -> str:
    ev = (int8 or {}).get("evaluation")
    if not ev:
        return ""
    return (f" INT8 copy (artifact int8/ of this version's run): {ev['gate_metric']} = {ev['int8_value']:.4f}, "
            f"drop from float {ev['drop']:+.4f}.")


def _rows(pairs: list[tuple[str, Any]]) -> str:
    return "\n".join(f"| {key} | {value} |" for key, value in pairs)


def render_markdown(card: dict[str, Any]) -> str:
    """A short human-readable card; the JSON beside it has every number."""
    checks = card["export_checks"]
    summary = _rows([
        ("method", card["method"]),
        ("teacher", card["teacher"]),
        ("backbone", f"{card['arch']} (width {card['width']}, {card['embedding_size']}-d)"),
        ("parameters (M)", card["params_m"]),
        ("GMACs", card["gmacs"]),
        (f"gate: {card['gate']['metric']}", card["gate"]["value"]),
        ("training data hash", card["data_hash"]),
        ("git commit", card["git_commit"]),
        ("ONNX sha256", card["onnx"]["sha256"]),
        ("export checks", "passed" if checks["passed"] else f"FAILED: {'; '.join(checks['failures'])}"),
        ("latency batch 1 (ms)", json.dumps(checks["latency_ms"])),
        ("INT8 ONNX", _int8_text(card.get("int8"))),
    ])
    return (
        f"# Model card: {card['model']}\n\n"
        "Face-recognition embedding model distilled with facekd.\n\n"
        f"| field | value |\n|---|---|\n{summary}\n\n"
        f"## Intended use\n\n{card['intended_use']}\n\n"
        f"## Input / output\n\n- input: {card['onnx']['input']}\n- output: {card['onnx']['output']}\n"
        "- compare two faces by the cosine of their L2-normalised embeddings\n\n"
        f"## Evaluation data\n\n{_data_text(card['evaluation_data'])}\n\n"
        f"## Decision threshold\n\n{_threshold_section(card)}\n\n"
        f"## INT8\n\n{_int8_section(card.get('int8'))}\n\n"
        "## Limitations\n\n" + "".join(f"- {line}\n" for line in card["limitations"]) + "\n"
        "## Evaluation metrics\n\n```json\n"
        f"{json.dumps(card['eval_metrics'], indent=2, sort_keys=True)}\n```\n"
    )


def _data_text(data: dict[str, Any]) -> str:
    names = ", ".join(data["benchmarks"]) or "none"
    if data["synthetic"]:
        return (f"**SYNTHETIC.** Every number below was measured on the embedded synthetic face set "
                f"(`{data['path']}`: rendered identities, not photographs of people; benchmarks: {names}). "
                "It shows the pipeline works and separates methods; it says nothing about accuracy on real "
                "faces. Evaluate on real data (README, \"Real data and GPUs\") before any use.")
    return f"Source `{data['source']}`, evaluation folder `{data['path']}`; benchmarks: {names}."


def _threshold_section(card: dict[str, Any]) -> str:
    point = card["verification"]
    text = f"`facekd verify` decides: {threshold_text(card)}."
    if point.get("threshold") is None:
        return text
    interval = point["tar_interval95"]
    spread = "" if interval is None else f" (95% interval {_percent(interval[0])} - {_percent(interval[1])})"
    return (f"{text} Scores are cosines of flip-summed, L2-normalised embeddings, as the evaluation's "
            "template scores (one image is a one-image template; the evaluation's templates pool several "
            "images, so single-image scores spread wider). TAR at this FAR as evaluated: "
            f"{_percent(point.get('tar'))} of {_count(point['num_genuine'])} genuine pairs{spread}.")
