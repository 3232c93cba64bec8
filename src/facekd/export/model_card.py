"""The model card logged with every registered version: one JSON record and its Markdown view."""
from __future__ import annotations

import json
from typing import Any


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
) -> dict[str, Any]:
    """Everything needed to judge and reproduce a registered model, as one JSON-able dict."""
    checks = export_report.get("checks", {})
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
        "eval_metrics": metrics,
        "onnx": {
            "sha256": onnx_sha256,
            "opset": checks.get("opset"),
            "file_bytes": checks.get("file_bytes"),
            "exporter": export_report.get("export", {}).get("exporter"),
            "input": "data (batch, 3, 112, 112) float32, RGB, (x - 127.5) / 127.5",
            "output": "embedding (batch, d) float32, not normalised",
        },
        "export_checks": {
            "passed": bool(checks.get("passed")),
            "failures": checks.get("failures", []),
            "parity": checks.get("parity", {}),
            "latency_ms": checks.get("latency_ms", {}),
            "mfr_rules": {name: rule.get("ok") for name, rule in checks.get("mfr_rules", {}).items()},
        },
    }


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
    ])
    return (
        f"# Model card: {card['model']}\n\n"
        "Face-recognition embedding model distilled with facekd.\n\n"
        f"| field | value |\n|---|---|\n{summary}\n\n"
        f"## Input / output\n\n- input: {card['onnx']['input']}\n- output: {card['onnx']['output']}\n"
        "- compare two faces by the cosine of their L2-normalised embeddings\n\n"
        "## Evaluation metrics\n\n```json\n"
        f"{json.dumps(card['eval_metrics'], indent=2, sort_keys=True)}\n```\n"
    )
