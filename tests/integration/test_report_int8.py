"""The leaderboard's INT8 columns: the INT8 gate metric, INT8 - float paired on the report's
resamples, and the float-vs-INT8 cosine; empty cells for a model without an INT8 evaluation."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from facekd.evaluation.metrics import SortedScores
from facekd.evaluation.uncertainty import PairScores
from facekd.stages import report
from tests.integration.test_report_intervals import _params, _write_run

COSINE = {"reference": "exports/good.onnx", "min": 0.98765, "median": 0.99912, "images": 1200, "per_benchmark": {}}


def _write_int8(root: Path, name: str, genuine_shift: float) -> float:
    """``<name>.int8``'s files as `facekd evaluate NAME --int8` writes them: ``name``'s scores, its
    genuine pairs moved by ``genuine_shift``; returns its TAR@FAR=1e-3."""
    with np.load(root / "metrics/scores" / f"{name}.npz") as arrays:
        pairs = PairScores.load(arrays, "ijb")
    scores = (pairs.scores + genuine_shift * pairs.labels).astype(np.float32)
    arrays: dict = {}
    PairScores(pairs.subjects, pairs.labels, scores).save(arrays, "ijb")
    np.savez(root / "metrics/scores" / f"{name}.int8.npz", **arrays)
    tar = SortedScores.from_scores(scores, pairs.labels).tar_at_far([1e-3])[1e-3]
    (root / "metrics/eval" / f"{name}.int8.json").write_text(json.dumps(
        {"model": name, "precision": "int8", "params_m": 1.0, "ijb": {"tar@far=1e-3": tar, "rank1": 0.5},
         "cosine_to_float": COSINE}))
    return tar


def test_int8_columns_carry_the_paired_drop_and_the_cosine(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_run(tmp_path, n_ids=120)
    lost = _write_int8(tmp_path, "good", -0.4)  # INT8 loses clearly
    same = _write_int8(tmp_path, "teacher", 0.0)  # INT8 identical to float
    board = report.run(_params(resamples=200))
    gate = "gate: ijb.tar@far=1e-3"
    assert board.loc["good", "INT8"] == lost and board.loc["teacher", "INT8"] == same
    drop = board.loc["good", "INT8 - float"]
    assert drop == lost - board.loc["good", gate] < 0
    assert board.loc["good", "INT8 low"] <= drop <= board.loc["good", "INT8 high"] < 0  # beyond noise
    assert board.loc["teacher", ["INT8 - float", "INT8 low", "INT8 high"]].tolist() == [0.0, 0.0, 0.0]
    assert board.loc[["none", "same"], ["INT8", "INT8 - float", "INT8 cos min"]].isna().all().all()
    # the INT8 copies do not move the float models' intervals (same resamples)
    assert board.loc["good", "gate low"] == report.run(_params(resamples=200)).loc["good", "gate low"]

    md = (tmp_path / "reports/leaderboard.md").read_text()
    good = next(line for line in md.splitlines() if line.startswith("| good"))
    none = next(line for line in md.splitlines() if line.startswith("| none "))
    assert "0.9877" in good and "0.9991" in good and f"{100 * drop:+.2f} [" in good
    assert "`INT8 - float`" in md and "0.98" not in none
    text = (tmp_path / "reports/leaderboard.txt").read_text()
    assert "INT8 (vs float)" in text and f"{100 * lost:.2f} ({100 * drop:+.2f})" in text
    assert max(len(line) for line in text.splitlines()) <= 120
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", (tmp_path / "reports/leaderboard.html").read_text())
    assert "<th>INT8 cos median</th>" in page and "nan" not in page.lower()


def test_no_int8_columns_without_int8_evaluations(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_run(tmp_path, n_ids=60)
    board = report.run(_params(resamples=0))
    assert "INT8" not in board.columns and "INT8" not in (tmp_path / "reports/leaderboard.md").read_text()
