"""Stage ``report``: the leaderboard of teacher and every student, side by side.

Reads ``metrics/eval/*.json`` and ``plots/roc/*.json``; writes ``reports/leaderboard.md``,
``reports/leaderboard.html``, ``reports/leaderboard.png`` (gate metric per model, bars) and
``reports/roc_all.png`` (IJB-style ROC of every model).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from facekd.config import Params
from facekd.errors import DataError
from facekd.fsio import write_text

log = logging.getLogger(__name__)

OUT = Path("reports")
# Headline number per benchmark kind: what the seed papers' tables report.
HEADLINE = {"bin": ("accuracy",), "ijb": ("tar@far=1e-4", "tar@far=1e-3", "rank1"),
            "mfr": ("tar@far<=1e-4", "tar@lowest_supported_far")}


def _lookup(metrics: dict, dotted: str) -> float:
    node = metrics
    for part in dotted.split(".", 1):
        if not isinstance(node, dict) or part not in node:
            return float("nan")
        node = node[part]
    return float(node) if node is not None else float("nan")


def load_metrics(models: tuple[str, ...], root: Path = Path("metrics/eval")) -> dict[str, dict]:
    out = {}
    for name in models:
        path = root / f"{name}.json"
        if not path.is_file():
            raise DataError(f"{path}: missing; run `dvc repro evaluate@{name}` first")
        out[name] = json.loads(path.read_text())
    return out


def leaderboard(metrics: dict[str, dict], gate: str) -> pd.DataFrame:
    """One row per model: size, every headline metric, gate metric and the teacher gap closed."""
    rows = []
    for name, m in metrics.items():
        row = {"model": name, "params (M)": m.get("params_m"), "GMACs": m.get("gmacs")}
        for bench, values in m.items():
            if not isinstance(values, dict):
                continue
            kind = "ijb" if bench.startswith("ijb") else "mfr" if bench == "mfr" else "bin"
            for key in HEADLINE[kind]:
                if key in values:
                    row[f"{bench} {key}"] = values[key]
        row[f"gate: {gate}"] = _lookup(m, gate)
        rows.append(row)
    board = pd.DataFrame(rows).set_index("model")
    gate_col = f"gate: {gate}"
    if {"teacher", "none"} <= set(board.index):
        teacher, base = board.loc["teacher", gate_col], board.loc["none", gate_col]
        gap = teacher - base
        board["gap closed"] = (board[gate_col] - base) / gap if gap else np.nan
        board.loc["teacher", "gap closed"] = np.nan
    students = board.drop(index="teacher", errors="ignore").sort_values(gate_col, ascending=False)
    return pd.concat([board.loc[["teacher"]] if "teacher" in board.index else None, students])


def _markdown(board: pd.DataFrame, gate: str) -> str:
    shown = board.copy()
    for col in shown.columns:
        # Rates and the gap as percent; sizes as plain numbers; unsupported operating points blank.
        fmt = "{:.3f}" if col in ("params (M)", "GMACs") else "{:.2f}"
        scale = 1 if col in ("params (M)", "GMACs") else 100
        shown[col] = shown[col].map(lambda v, f=fmt, k=scale: "" if pd.isna(v) else f.format(k * v))
    return "\n".join([
        "# Leaderboard", "",
        f"Students ranked by the gate metric `{gate}` (percent). `gap closed`: share of the teacher - `none` "
        "gap on the gate metric that the method recovers (100 = as good as the teacher).", "",
        shown.to_markdown(floatfmt=".3f", disable_numparse=True), "",
        "![gate metric](leaderboard.png)", "", "![ROC](roc_all.png)", "",
    ])


def _bar_chart(board: pd.DataFrame, gate: str, path: Path) -> None:
    from matplotlib.figure import Figure

    from facekd.evaluation.plots import save_png

    col = f"gate: {gate}"
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    colours = ["#444444" if m == "teacher" else "#999999" if m == "none" else "#2a7ab9" for m in board.index]
    ax.bar(board.index, 100 * board[col].fillna(0), color=colours)
    ax.set_ylabel(f"{gate} (%)")
    ax.set_title("Teacher, no-KD baseline and each distillation method")
    ax.tick_params(axis="x", rotation=30)
    save_png(fig, path)


def _roc_all(models: tuple[str, ...], gate: str, path: Path) -> None:
    from facekd.evaluation.plots import roc_figure, save_png

    bench = gate.split(".", 1)[0]
    curves = {}
    for name in models:
        points = json.loads((Path("plots/roc") / f"{name}.json").read_text())
        pts = [p for p in points if p["benchmark"] == bench]
        if pts:
            curves[name] = (np.array([p["fpr"] for p in pts]), np.array([p["tpr"] for p in pts]))
    save_png(roc_figure(curves, f"ROC on {bench}, every model"), path)


def run(params: Params) -> pd.DataFrame:
    models = params.evaluate.models
    gate = params.registry.gate_metric
    board = leaderboard(load_metrics(models), gate)
    write_text(OUT / "leaderboard.md", _markdown(board, gate))
    write_text(OUT / "leaderboard.html", board.to_html(float_format=lambda v: f"{v:.4f}", na_rep=""))
    _bar_chart(board, gate, OUT / "leaderboard.png")
    _roc_all(models, gate, OUT / "roc_all.png")
    log.info("leaderboard:\n%s", board.to_string(float_format=lambda v: f"{v:.4f}"))
    return board
