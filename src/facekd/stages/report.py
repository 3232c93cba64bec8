"""Stage ``report``: the leaderboard of teacher and every student, side by side.

Reads ``metrics/eval/*.json`` and ``plots/roc/*.json``; writes ``reports/leaderboard.md``,
``reports/leaderboard.html``, ``reports/leaderboard.png`` (gate metric per model, bars) and
``reports/roc_all.png`` (IJB-style ROC of every model, 95% bands for the teacher, ``none`` and the
top students) and ``reports/leaderboard.txt`` (the columns that fit a terminal, which ``facekd
summary`` prints); and what DVC shows: ``metrics/headline.json`` (facekd.evaluation.headline) and
``plots/roc_by_benchmark/`` (facekd.evaluation.dvcplots). An MLflow run ``report`` holds the gate
metric per model with its interval, and the pages and plots as artifacts.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from facekd import layout
from facekd.config import Params
from facekd.errors import DataError
from facekd.fsio import read_json_object, write_text

log = logging.getLogger(__name__)

# Headline number per benchmark kind: what the seed papers' tables report.
HEADLINE = {"bin": ("accuracy",), "ijb": ("tar@far=1e-4", "tar@far=1e-3", "rank1"),
            "mfr": ("tar@far<=1e-4", "tar@lowest_supported_far")}


def _lookup(metrics: dict, dotted: str) -> float:
    """The number at ``dotted`` (the registry's lookup: keys may hold dots), NaN when absent or null."""
    from facekd.mlops.evidence import lookup

    value = lookup(metrics, dotted)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else float("nan")


def load_metrics(models: tuple[str, ...]) -> dict[str, dict]:
    """Every model's ``metrics/eval/<model>.json``; a missing one names the stage that writes it."""
    return {name: read_json_object(layout.eval_metrics_file(name), DataError, redo=f"run `dvc repro evaluate@{name}`",
                                   missing=f"missing; run `dvc repro evaluate@{name}` first") for name in models}


def _with_intervals(board: pd.DataFrame, study: Any) -> pd.DataFrame:
    """Interval columns of the gate metric, the paired difference to ``none`` and the gap closed."""
    rows = {name: {"gate low": study.models[name].low, "gate high": study.models[name].high,
                   "vs none": study.vs_baseline[name].value, "vs none low": study.vs_baseline[name].low,
                   "vs none high": study.vs_baseline[name].high,
                   "significant": study.vs_baseline[name].excludes_zero() and name != "none",
                   # the teacher closes its own gap by definition: no interval to show
                   "gap low": study.gap_closed[name].low if name in study.gap_closed and name != "teacher" else np.nan,
                   "gap high": study.gap_closed[name].high if name in study.gap_closed and name != "teacher" else np.nan}
            for name in board.index}
    return board.join(pd.DataFrame.from_dict(rows, orient="index"))


def leaderboard(metrics: dict[str, dict], gate: str, study: Any = None, int8: dict[str, dict] | None = None,
                others: dict[str, Any] | None = None) -> pd.DataFrame:
    """One row per model: size, every headline metric, gate metric and the teacher gap closed;
    with ``study`` (:func:`gate_study`) the gate's intervals and the paired test against ``none``;
    with ``int8`` (model -> its INT8 copy's metrics) the INT8 columns (:func:`_with_int8`);
    ``others`` (metric -> its study) adds the intervals of other headline metrics."""
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
                if f"{key}_ci_low" in values:  # computed by the evaluate stage (rank-1, the masked track)
                    row[f"{bench} {key} ci_low"] = values[f"{key}_ci_low"]
                    row[f"{bench} {key} ci_high"] = values[f"{key}_ci_high"]
            if kind == "bin" and "accuracy_std" in values:  # the protocol's own spread over its 10 folds
                row[f"{bench} accuracy fold_std"] = values["accuracy_std"]
        row[f"gate: {gate}"] = _lookup(m, gate)
        row.update(_seed_columns(m))
        rows.append(row)
    board = pd.DataFrame(rows).set_index("model")
    gate_col = f"gate: {gate}"
    if {"teacher", "none"} <= set(board.index):
        teacher, base = board.loc["teacher", gate_col], board.loc["none", gate_col]
        gap = teacher - base
        board["gap closed"] = (board[gate_col] - base) / gap if gap else np.nan
        board.loc["teacher", "gap closed"] = np.nan
    if study is not None:
        board = _with_intervals(board, study)
    for metric, other in (others or {}).items():
        col = metric.replace(".", " ", 1)
        board[f"{col} ci_low"] = [other.models[n].low if n in other.models else np.nan for n in board.index]
        board[f"{col} ci_high"] = [other.models[n].high if n in other.models else np.nan for n in board.index]
    if int8:
        board = _with_int8(board, gate, int8, study)
    students = board.drop(index="teacher", errors="ignore")
    # the ranking is by the mean over seeds where there are several, else by the one value
    order = students["seeds mean"].fillna(students[gate_col]) if "seeds mean" in students else students[gate_col]
    students = students.loc[order.sort_values(ascending=False, kind="stable").index]
    board = pd.concat([board.loc[["teacher"]] if "teacher" in board.index else None, students])
    if "gate low" in board.columns:
        board["rank"] = pd.Series(_ranks(students, metrics), dtype="Int64")
    return board


def _seed_columns(metrics: dict) -> dict[str, float]:
    """Mean, standard deviation and count of the gate metric over training seeds (evaluate's ``seeds``)."""
    from facekd.evaluation.ranking import SEEDS_KEY, seed_summary

    if not isinstance(metrics.get(SEEDS_KEY), dict) or len(metrics[SEEDS_KEY]) < 2:
        return {}
    mean, sd, n = seed_summary(_seed_values(metrics))
    return {"seeds mean": mean, "seeds sd": sd, "seeds n": n}


def _seed_values(metrics: dict) -> tuple[float, ...]:
    from facekd.evaluation.ranking import SEEDS_KEY

    values = metrics.get(SEEDS_KEY)
    if not isinstance(values, dict):
        return ()
    return tuple(float(v) for v in values.values() if isinstance(v, (int, float)) and math.isfinite(v))


def _ranks(students: pd.DataFrame, metrics: dict[str, dict]) -> dict[str, int]:
    """Tied ranks of the students (:mod:`facekd.evaluation.ranking`), ``none`` included."""
    from facekd.evaluation.ranking import Evidence, tied_ranks

    def seeds(name: str) -> tuple[float, ...]:
        return _seed_values(metrics.get(name, {}))

    return tied_ranks({name: Evidence(row["gate low"], row["gate high"], seeds(name))
                       for name, row in students.iterrows() if not name.endswith(layout.INT8_SUFFIX)})


INTERVAL_COLUMNS = ("gate low", "gate high", "vs none", "vs none low", "vs none high", "significant", "gap low",
                    "gap high", "INT8 low", "INT8 high", "seeds mean", "seeds sd", "seeds n", "rank")
SEEDS_SHOWN = "over seeds"  # the gate metric's mean ± sd over training seeds, (n)
INT8_COLUMNS = ("INT8", "INT8 - float", "INT8 cos min", "INT8 cos median")


def _with_int8(board: pd.DataFrame, gate: str, int8: dict[str, dict], study: Any) -> pd.DataFrame:
    """Per model with an INT8 evaluation: its gate metric, INT8 - float (with the paired interval
    when ``study`` has the contrast: same resamples as ``vs none``), and the float-vs-INT8 embedding
    cosine over the evaluation images; NaN (an empty cell) for a model without one."""
    from facekd.evaluation.int8 import COSINE_KEY

    contrasts = getattr(study, "contrasts", {}) or {}
    rows = {}
    for name in board.index:
        if name not in int8:
            continue
        value = _lookup(int8[name], gate)
        cos = int8[name].get(COSINE_KEY) or {}
        paired = contrasts.get(name)
        rows[name] = {"INT8": value, "INT8 - float": value - board.loc[name, f"gate: {gate}"],
                      "INT8 low": paired.low if paired else np.nan, "INT8 high": paired.high if paired else np.nan,
                      "INT8 cos min": cos.get("min", np.nan), "INT8 cos median": cos.get("median", np.nan)}
    extra = pd.DataFrame.from_dict(rows, orient="index", columns=[*INT8_COLUMNS[:2], "INT8 low", "INT8 high",
                                                                  *INT8_COLUMNS[2:]])
    return board.join(extra.astype(float))


def _pct(value: float, signed: bool = False) -> str:
    return "" if pd.isna(value) else f"{100 * value:{'+' if signed else ''}.2f}"


def _shown(board: pd.DataFrame, gate: str) -> pd.DataFrame:
    """The leaderboard as people read it: percent, each interval beside its value, a mark where
    the paired difference to ``none`` is beyond noise."""
    bounded = [c for c in board.columns if f"{c} ci_low" in board.columns]
    shown = board.drop(columns=[c for c in board.columns
                                if c in INTERVAL_COLUMNS or c.endswith((" ci_low", " ci_high", " fold_std"))])
    for col in shown.columns:
        # Rates and the gap as percent; sizes as plain numbers; unsupported operating points blank.
        if col in ("params (M)", "GMACs"):
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
        elif col in ("INT8 cos min", "INT8 cos median"):
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
        else:
            shown[col] = shown[col].map(_pct)
    if "seeds mean" in board.columns:
        shown[SEEDS_SHOWN] = ["" if pd.isna(n) else f"{_pct(m)} ± {_pct(sd)} ({int(n)})"
                              for m, sd, n in zip(board["seeds mean"], board["seeds sd"], board["seeds n"], strict=True)]
    if "rank" in board.columns:
        shown["rank"] = ["" if pd.isna(r) else str(int(r)) for r in board["rank"]]
    for col in [c for c in board.columns if f"{c} fold_std" in board.columns]:
        shown[col] = [_pct(v) if pd.isna(sd) else f"{_pct(v)} ± {_pct(sd)}"
                      for v, sd in zip(board[col], board[f"{col} fold_std"], strict=True)]
    for col in bounded:  # another headline metric with its interval (same resamples as the gate's)
        shown[col] = [_pct(v) if pd.isna(lo) or pd.isna(hi) else f"{_pct(v)} [{_pct(lo)}, {_pct(hi)}]"
                      for v, lo, hi in zip(board[col], board[f"{col} ci_low"], board[f"{col} ci_high"], strict=True)]
    if "INT8 low" in board.columns:
        shown["INT8 - float"] = [
            _pct(v, True) if pd.isna(lo) else f"{_pct(v, True)} [{_pct(lo, True)}, {_pct(hi, True)}]"
            for v, lo, hi in zip(board["INT8 - float"], board["INT8 low"], board["INT8 high"], strict=True)]
    int8_first = [c for c in INT8_COLUMNS if c in shown.columns]
    if "gate low" not in board.columns:
        return shown
    gate_col = f"gate: {gate}"
    shown[gate_col] = [f"{_pct(v)} [{_pct(lo)}, {_pct(hi)}]" for v, lo, hi in
                       zip(board[gate_col], board["gate low"], board["gate high"], strict=True)]
    shown["vs none (paired)"] = [
        "" if name in ("none",) else f"{_pct(v, True)} [{_pct(lo, True)}, {_pct(hi, True)}]{' *' if sig else ''}"
        for name, v, lo, hi, sig in zip(board.index, board["vs none"], board["vs none low"], board["vs none high"],
                                        board["significant"], strict=True)]
    if "gap closed" in board.columns:
        shown["gap closed"] = [_pct(v) if pd.isna(lo) else f"{_pct(v)} [{_pct(lo)}, {_pct(hi)}]" for v, lo, hi in
                               zip(board["gap closed"], board["gap low"], board["gap high"], strict=True)]
    # the answer first
    first = [c for c in ("rank", gate_col, SEEDS_SHOWN, "vs none (paired)", "gap closed") if c in shown.columns]
    first += int8_first
    return shown[first + [c for c in shown.columns if c not in first]]


def _explanation(gate: str, study: Any, int8: bool = False, seeds: bool = False) -> list[str]:
    """The paragraphs above the table (markdown inline code in backticks); ``int8``: the INT8 columns
    are shown; ``seeds``: students were trained under several seeds."""
    order = "the mean over training seeds of the gate metric" if seeds else "the gate metric"
    text = [f"Students ordered by {order} `{gate}` (percent). `gap closed`: share of the teacher - `none` "
            "gap on the gate metric that the method recovers (100 = as good as the teacher)."]
    if seeds:
        text.append(f"`{SEEDS_SHOWN}`: the gate metric's mean ± standard deviation over the seeds each student "
                    "was trained under (`distill.seeds`; the count in brackets); the other columns are the first "
                    "seed's model, the one that is exported and registered.")
    if study is not None:
        text.append(
            f"Brackets: 95% intervals from {study.n_resamples} bootstrap resamples of the {study.identities} "
            "evaluation identities (each identity's pairs resampled together; every model on the same resamples). "
            "`vs none (paired)`: the gate metric minus `none`'s on the same resamples; `*` marks a difference whose "
            "interval excludes 0. Rows without `*` are not shown to differ from `none`, whatever their order; "
            "two students whose intervals overlap are not ranked by this table. The intervals cover the "
            "evaluation sample, not training noise" + (f" (that is `{SEEDS_SHOWN}`)" if seeds else
                                                        " (one seed per student: see `distill.seeds`)") + ". "
            "`rank`: 1 + the number of students shown better (95% intervals apart"
            + (" and a Welch t-test over seeds at 5%" if seeds else "") + "); equal ranks are ties. "
            "The gate benchmark's other TAR column has its interval from the same resamples; rank-1 and the "
            "masked track theirs from the evaluate stage (same resampling of identities: for rank-1 the probes', "
            "the gallery as enrolled). `.bin` accuracies (LFW-style): mean ± standard deviation over the "
            "protocol's 10 folds.")
    if int8:
        text.append(
            "`INT8`: the gate metric of the model's INT8 ONNX copy (`exports/<model>.int8.onnx`, onnxruntime) on the "
            "same benchmarks; `INT8 - float`: its difference to the float model" + (
                ", paired on the same resamples (bracket: 95% interval)" if study is not None else "")
            + "; `INT8 cos min` / `median`: cosine of each evaluation image's INT8 embedding to the float ONNX "
            "model's. Empty: no INT8 evaluation.")
    return text


def _markdown(board: pd.DataFrame, gate: str, study: Any = None) -> str:
    explained = _explanation(gate, study, "INT8" in board.columns, "seeds mean" in board.columns)
    paragraphs = [line for paragraph in explained for line in (paragraph, "")]
    return "\n".join([
        "# Leaderboard", "", *paragraphs,
        _shown(board, gate).to_markdown(disable_numparse=True), "",
        "![gate metric](leaderboard.png)", "", "![ROC](roc_all.png)", "",
    ])


def _terminal(board: pd.DataFrame, gate: str, study: Any) -> str:
    """The few columns that fit a terminal (what `make run` ends with); the rest is in the .md/.html."""
    shown = _shown(board, gate)
    if "INT8" in board.columns:  # one short column; its interval and the cosines are in the .md/.html
        shown["INT8 (vs float)"] = ["" if pd.isna(q) else f"{_pct(q)} ({_pct(d, True)})"
                                    for q, d in zip(board["INT8"], board["INT8 - float"], strict=True)]
    keep = ["rank", "params (M)", f"gate: {gate}", SEEDS_SHOWN, "vs none (paired)", "gap closed", "INT8 (vs float)"]
    table = shown[[c for c in keep if c in shown.columns]].rename(columns={f"gate: {gate}": gate})
    lines = ["Leaderboard (percent; brackets: 95% intervals over evaluation identities; * beyond noise vs none)"
             if study is not None else "Leaderboard (percent)",
             table.to_markdown(tablefmt="simple", disable_numparse=True), "",
             "Full table, plots and how to read them: reports/leaderboard.html (or .md)."]
    return "\n".join(lines) + "\n"


PAGE_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #222; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: .3rem; } h2 { font-size: 1.15rem; margin-top: 2rem; }
p.note { color: #444; max-width: 62rem; line-height: 1.45; }
code { background: #f3f3f3; padding: 0 .25rem; border-radius: 3px; }
table { border-collapse: collapse; font-size: .88rem; margin-top: 1rem; }
th, td { padding: .35rem .7rem; border-bottom: 1px solid #e2e2e2; text-align: right; white-space: nowrap; }
th { background: #f7f7f7; border-bottom: 2px solid #ccc; } th:first-child, td:first-child { text-align: left; }
tbody tr:first-child td { color: #555; font-style: italic; } tbody tr:hover { background: #f5f9fd; }
img { max-width: 100%; border: 1px solid #eee; }
"""


def _code(text: str) -> str:
    """HTML of a paragraph whose `backticks` mark inline code."""
    import html
    import re

    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def _png_data(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _html(board: pd.DataFrame, gate: str, study: Any, images: dict[str, Path]) -> str:
    """A page to send to a colleague: one file, offline (plots inline), the same table as the .md."""
    table = _shown(board, gate).rename_axis("model").reset_index().to_html(index=False, border=0, escape=True)
    figures = [f'<h2>{title}</h2>\n<img alt="{title}" src="{_png_data(path)}">' for title, path in images.items()]
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        "<title>facekd leaderboard</title>", f"<style>{PAGE_STYLE}</style>", "</head>", "<body>",
        "<h1>facekd leaderboard</h1>",
        *(f'<p class="note">{_code(text)}</p>' for text in _explanation(gate, study, "INT8" in board.columns, "seeds mean" in board.columns)),
        f'<div style="overflow-x: auto">{table}</div>', *figures, "</body>", "</html>", "",
    ])


def _bar_chart(board: pd.DataFrame, gate: str, path: Path) -> None:
    from matplotlib.figure import Figure

    from facekd.evaluation.plots import save_png

    col = f"gate: {gate}"
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.add_subplot()
    colours = ["#444444" if m == "teacher" else "#999999" if m == "none" else "#2a7ab9" for m in board.index]
    values = 100 * board[col].fillna(0)
    errors = None
    if "gate low" in board.columns:  # 95% interval as asymmetric error bars
        errors = np.vstack([values - 100 * board["gate low"], 100 * board["gate high"] - values]).clip(min=0)
    ax.bar(board.index, values, color=colours, yerr=errors, capsize=3, ecolor="#222222")
    label = f"{gate} (%)" + (", 95% interval" if errors is not None else "")
    if "seeds mean" in board.columns:  # training noise beside the evaluation sample's
        ax.errorbar(board.index, 100 * board["seeds mean"], yerr=100 * board["seeds sd"].fillna(0), fmt="D",
                    color="#d95f02", markersize=4, capsize=2, linestyle="none")
        label += "; diamonds: mean ± sd over seeds"
    ax.set_ylabel(label)
    ax.set_title("Teacher, no-KD baseline and each distillation method")
    ax.tick_params(axis="x", rotation=30)
    save_png(fig, path)


def _other_tar_metrics(gate: str) -> list[str]:
    """The gate benchmark's other TAR@FAR headline metrics: their intervals come from the same scored pairs."""
    bench = gate.split(".", 1)[0]
    return [f"{bench}.{key}" for key in HEADLINE["ijb"] if key.startswith("tar@far=") and f"{bench}.{key}" != gate]


BANDED_STUDENTS = 2  # the best students by the gate metric get an interval band, beside teacher and `none`
BAND_POINTS = 30  # FAR grid of a band, log-spaced


def _roc_all(models: tuple[str, ...], gate: str, path: Path, board: pd.DataFrame, cfg: Any) -> list[str]:
    """Every model's ROC on the gate benchmark, with 95% bands for the teacher, `none` and the top
    students (:func:`facekd.evaluation.uncertainty.roc_bands`); returns the banded models."""
    from facekd.evaluation.plots import roc_figure, save_png

    bench = gate.split(".", 1)[0]
    curves = {}
    for name in models:
        points = json.loads(layout.roc_points_file(name).read_text())
        pts = [p for p in points if p["benchmark"] == bench]
        if pts:
            curves[name] = (np.array([p["fpr"] for p in pts]), np.array([p["tpr"] for p in pts]))
    bands = _roc_bands(_banded_models(board), bench, cfg)
    title = f"ROC on {bench}, every model" + (" (shaded: 95% bands over identities)" if bands else "")
    save_png(roc_figure(curves, title, bands), path)
    return sorted(bands)


def _banded_models(board: pd.DataFrame) -> list[str]:
    students = [m for m in board.index if m not in ("teacher", "none") and not m.endswith(layout.INT8_SUFFIX)]
    return [m for m in ("teacher", "none") if m in board.index] + students[:BANDED_STUDENTS]


def _roc_bands(models: list[str], bench: str, cfg: Any) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """model -> (far, low, high) from the scored pairs; {} when intervals are off or pairs are missing."""
    from facekd.evaluation.plots import FAR_RANGE
    from facekd.evaluation.uncertainty import roc_bands, scored_pairs

    pairs = {name: scored_pairs(layout.SCORES, name, bench) for name in models} if cfg.resamples else {}
    if not pairs or any(p is None for p in pairs.values()):
        return {}
    first = next(iter(pairs.values()))
    impostors = int((first.labels == 0).sum())
    # Below ~10 false accepts a reading is one or two impostor pairs: no band there.
    fars = np.geomspace(max(FAR_RANGE[0], 10.0 / max(impostors, 1)), 1.0, BAND_POINTS)
    found = roc_bands(first.subjects, first.labels, {n: p.scores for n, p in pairs.items()}, fars,
                      n_resamples=cfg.resamples, confidence=cfg.confidence, seed=cfg.seed)
    return {n: (band.far, band.low, band.high) for n, band in found.items()}


def _log_to_mlflow(params: Params, board: pd.DataFrame, gate: str, banded: list[str]) -> None:
    """A ``report`` run: the gate metric per model with its interval, and the pages and plots as artifacts."""
    from facekd.mlops.tracking import Tracker, metric_name

    columns = {f"gate: {gate}": "", "gate low": ".ci_low", "gate high": ".ci_high", "vs none": ".vs_none",
               "seeds mean": ".seeds_mean", "seeds sd": ".seeds_sd", "rank": ".rank"}
    metrics = {metric_name(f"gate.{model}{suffix}"): float(board.loc[model, column])
               for model in board.index for column, suffix in columns.items()
               if column in board.columns and pd.notna(board.loc[model, column])
               and np.isfinite(float(board.loc[model, column]))}
    tracker = Tracker.from_params(params.tracking, stage="report")
    tracker.start("report", {}, {"facekd.gate_metric": gate, "facekd.roc_bands": ",".join(banded)}, {})
    tracker.log_metrics(metrics, step=0)
    for path in (layout.LEADERBOARD_PNG, layout.ROC_ALL_PNG, layout.LEADERBOARD_HTML, layout.LEADERBOARD_MD):
        tracker.log_artifact(path, "report")
    tracker.end("FINISHED")


def run(params: Params) -> pd.DataFrame:
    from facekd.evaluation import dvcplots, headline
    from facekd.evaluation.int8 import int8_metrics
    from facekd.evaluation.uncertainty import gate_study

    models = params.evaluate.models
    gate = params.registry.gate_metric
    int8 = {name: found for name in models if (found := int8_metrics(name)) is not None}
    study = gate_study(models, gate, params.evaluate.bootstrap, contrasts={m: (layout.int8_name(m), m) for m in int8})
    others = {metric: found for metric in _other_tar_metrics(gate)
              if (found := gate_study(models, metric, params.evaluate.bootstrap)) is not None}
    # What DVC shows: metrics/headline.json (dvc exp show / metrics diff) and one ROC plot per benchmark.
    headline.write(headline.build(load_metrics(models), gate, study))
    dvcplots.write_benchmark_rocs(models)
    board = leaderboard(load_metrics(models), gate, study, int8, others)
    write_text(layout.LEADERBOARD_MD, _markdown(board, gate, study))
    write_text(layout.LEADERBOARD_TEXT, _terminal(board, gate, study))
    _bar_chart(board, gate, layout.LEADERBOARD_PNG)
    banded = _roc_all(models, gate, layout.ROC_ALL_PNG, board, params.evaluate.bootstrap)
    images = {"Gate metric per model": layout.LEADERBOARD_PNG, f"ROC on {gate.split('.', 1)[0]}": layout.ROC_ALL_PNG}
    write_text(layout.LEADERBOARD_HTML, _html(board, gate, study, images))
    _log_to_mlflow(params, board, gate, banded)
    log.info("leaderboard:\n%s", board.to_string(float_format=lambda v: f"{v:.4f}"))
    return board
