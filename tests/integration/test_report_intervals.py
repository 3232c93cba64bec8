"""The leaderboard's intervals: evaluate's scored pairs -> report's paired bootstrap (issue 16)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from facekd.config import BootstrapParams, load_params
from facekd.errors import DataError
from facekd.evaluation.uncertainty import PairScores
from facekd.stages import report
from tests import browser
from tests.browser import needs_chromium

ROOT = Path(__file__).resolve().parents[2]
MODELS = ("teacher", "none", "good", "same")


def _write_run(root: Path, n_ids: int = 300, shifts=None) -> None:
    """metrics/eval/*.json and metrics/scores/*.npz as the evaluate stage leaves them."""
    rng = np.random.default_rng(0)
    genuine = np.stack([np.repeat(np.arange(n_ids), 3)] * 2, axis=1)
    impostor = rng.integers(0, n_ids, (40 * n_ids, 2))
    impostor = impostor[impostor[:, 0] != impostor[:, 1]]
    subjects = np.concatenate([genuine, impostor])
    labels = np.r_[np.ones(len(genuine)), np.zeros(len(impostor))].astype(np.int8)
    hard = rng.normal(0, 0.7, n_ids)[subjects[:, 0]]
    noise = rng.normal(size=len(labels))
    shifts = shifts or {"teacher": 3.0, "none": 1.5, "good": 2.5, "same": 1.5}
    made: dict[str, np.ndarray] = {}
    for name in MODELS:
        jitter = 0.01 * rng.normal(size=len(labels))
        scores = made["none"] if name == "same" else (labels * (shifts[name] + hard) + noise + jitter).astype(np.float32)
        made[name] = scores
        arrays: dict = {}
        PairScores(subjects, labels, scores).save(arrays, "ijb")
        (root / "metrics/scores").mkdir(parents=True, exist_ok=True)
        np.savez(root / "metrics/scores" / f"{name}.npz", **arrays)
        from facekd.evaluation.metrics import SortedScores

        tar = SortedScores.from_scores(scores, labels).tar_at_far([1e-3, 1e-4])
        (root / "metrics/eval").mkdir(parents=True, exist_ok=True)
        (root / "metrics/eval" / f"{name}.json").write_text(json.dumps(
            {"model": name, "params_m": 1.0, "gmacs": 0.1,
             "ijb": {"tar@far=1e-3": tar[1e-3], "tar@far=1e-4": tar[1e-4], "rank1": 0.5,
                     "rank1_ci_low": 0.4, "rank1_ci_high": 0.625},
             "mfr": {"tar@far<=1e-4": 0.08, "tar@far<=1e-4_ci_low": 0.05, "tar@far<=1e-4_ci_high": None},
             "synth_lfw": {"accuracy": 0.9, "accuracy_std": 0.012}}))
    (root / "plots/roc").mkdir(parents=True, exist_ok=True)
    for name in MODELS:
        (root / "plots/roc" / f"{name}.json").write_text(json.dumps([{"benchmark": "ijb", "fpr": 0.0, "tpr": 0.0},
                                                                      {"benchmark": "ijb", "fpr": 1.0, "tpr": 1.0}]))


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One MLflow SQLite store for the module's report runs (creating one takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture(autouse=True)
def _shared_store(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # wins over params.yaml's tracking.uri


def _params(resamples: int = 200):
    params = load_params(ROOT / "params.yaml")
    evaluate = params.evaluate.model_copy(update={"models": MODELS,
                                                  "bootstrap": BootstrapParams(resamples=resamples)})
    return params.model_copy(update={"evaluate": evaluate})


def test_leaderboard_carries_intervals_and_marks_only_real_gains(tmp_path, monkeypatch, store):
    monkeypatch.chdir(tmp_path)
    _write_run(tmp_path)
    board = report.run(_params())
    assert board.loc["good", "significant"] and not board.loc["same", "significant"]
    for name in MODELS:
        assert board.loc[name, "gate low"] <= board.loc[name, "gate: ijb.tar@far=1e-3"] <= board.loc[name, "gate high"]
    assert board.loc["same", "vs none"] == 0.0
    md = (tmp_path / "reports/leaderboard.md").read_text()
    assert "95% intervals from 200 bootstrap resamples of the 300 evaluation identities" in md
    good_row = next(line for line in md.splitlines() if line.startswith("| good"))
    same_row = next(line for line in md.splitlines() if line.startswith("| same"))
    # gate, vs none, gap closed, TAR@FAR=1e-4, rank-1 (from the evaluate stage); the masked track's
    # interval is incomplete (a null bound), so it is shown without one
    assert good_row.count("[") == 5 and " *" in good_row
    assert "| 50.00 [40.00, 62.50] |" in good_row and "| 8.00 " in good_row
    assert "90.00 ± 1.20" in good_row  # LFW-style accuracy with its 10-fold spread
    assert " *" not in same_row
    for name in MODELS:  # the gate benchmark's other TAR column, on the same resamples
        low, high = board.loc[name, "ijb tar@far=1e-4 ci_low"], board.loc[name, "ijb tar@far=1e-4 ci_high"]
        assert low <= board.loc[name, "ijb tar@far=1e-4"] <= high and low < high
    assert (tmp_path / "reports/leaderboard.png").stat().st_size > 0

    from mlflow.tracking import MlflowClient

    client = MlflowClient(store)
    (run,) = client.search_runs([client.get_experiment_by_name(_params().tracking.experiment).experiment_id],
                                "tags.mlflow.runName = 'report'", order_by=["attributes.start_time DESC"], max_results=1)
    assert run.data.metrics["gate.good.ci_low"] == pytest.approx(board.loc["good", "gate low"])
    assert run.data.tags["facekd.roc_bands"] == "good,none,same,teacher"
    shown = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert shown == {"report/leaderboard.png", "report/roc_all.png", "report/leaderboard.html", "report/leaderboard.md"}


def test_roc_bands_for_teacher_none_and_the_top_students_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_run(tmp_path, n_ids=120)
    params = _params(resamples=50)
    board = report.run(params)
    gate = params.registry.gate_metric
    with monkeypatch.context() as m:
        m.setattr(report, "BANDED_STUDENTS", 1)
        banded = report._roc_all(MODELS, gate, tmp_path / "roc.png", board, params.evaluate.bootstrap)
    assert banded == ["good", "none", "teacher"]  # `same` ranks below `good`
    off = report._roc_all(MODELS, gate, tmp_path / "roc.png", board, BootstrapParams(resamples=0))
    assert off == [] and (tmp_path / "roc.png").stat().st_size > 0


def test_no_intervals_when_turned_off(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_run(tmp_path, n_ids=60)
    board = report.run(_params(resamples=0))
    assert "gate low" not in board.columns
    assert "bootstrap" not in (tmp_path / "reports/leaderboard.md").read_text()


def test_models_scored_on_different_pairs_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_run(tmp_path, n_ids=60)
    with np.load(tmp_path / "metrics/scores/good.npz") as arrays:
        changed = dict(arrays)
    changed["ijb.labels"] = changed["ijb.labels"].copy()
    changed["ijb.labels"][-1] = 1 - changed["ijb.labels"][-1]
    np.savez(tmp_path / "metrics/scores/good.npz", **changed)
    with pytest.raises(DataError, match="good.npz: scored on other ijb pairs than teacher"):
        report.run(_params())


def _set_params_m(root: Path, name: str, value: float) -> None:
    path = root / "metrics/eval" / f"{name}.json"
    metrics = json.loads(path.read_text())
    path.write_text(json.dumps({**metrics, "params_m": value}))


def test_register_chooses_among_students_within_noise_the_smallest(tmp_path, monkeypatch):
    from facekd.mlops.evidence import select_beyond_noise

    monkeypatch.chdir(tmp_path)
    # "same" scores exactly like "none": a tie by construction; "good" is clearly better than both
    _write_run(tmp_path)
    cfg = BootstrapParams(resamples=200)
    clear = select_beyond_noise(["none", "good", "same"], "ijb.tar@far=1e-3", cfg)
    assert clear.model == "good" and "beyond noise" in clear.reason
    assert clear.gate_low < 0.31 < clear.gate_high
    _write_run(tmp_path, shifts={"teacher": 3.0, "none": 1.5, "good": 1.5, "same": 1.5})
    _set_params_m(tmp_path, "same", 0.5)  # the smaller of two students the data cannot tell apart
    tied = select_beyond_noise(["none", "same", "teacher"], "ijb.tar@far=1e-3", cfg)
    assert tied.model == "same" and "smallest" in tied.reason and "none" in tied.reason
    off = select_beyond_noise(["none", "good"], "ijb.tar@far=1e-3", BootstrapParams(resamples=0))
    assert off.gate_low is None and "no interval" in off.reason


def test_html_page_is_one_offline_file_with_the_table_and_plots(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_run(tmp_path, n_ids=60)
    report.run(_params(resamples=50))
    page = (tmp_path / "reports/leaderboard.html").read_text()
    assert page.startswith("<!DOCTYPE html>") and "<title>facekd leaderboard</title>" in page
    assert page.count('src="data:image/png;base64,') == 2 and "http" not in page  # nothing to fetch
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # base64 may spell anything
    assert "None" not in text and "nan" not in text.lower()
    assert "<code>vs none (paired)</code>" in page and "<th>gate: ijb.tar@far=1e-3</th>" in page
    assert ">teacher<" in page and "%" not in page.split("<table")[1].split("</table>")[0]  # percent, no signs


@needs_chromium
def test_html_page_renders_its_table_and_plots_in_chromium_offline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_run(tmp_path, n_ids=60)
    report.run(_params(resamples=50))
    page = tmp_path / "reports/leaderboard.html"
    dom = browser.dump_dom(page, tmp_path / "profile")
    assert "facekd leaderboard" in dom and dom.count("<tr") >= len(MODELS) + 1
    # The same page with its inline images cut out: what is drawn beyond it is the two plots.
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r'src="data:image/png;base64,[^"]*"', 'src=""', page.read_text()))
    full = browser.inked(browser.screenshot(page, tmp_path / "shots/page.png", height=2400))
    without = browser.inked(browser.screenshot(bare, tmp_path / "shots/bare.png", height=2400))
    assert full > without + 0.03, f"plots add {full - without:.3f} of the page's ink: not drawn?"


def test_terminal_table_fits_a_screen(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_run(tmp_path, n_ids=60)
    report.run(_params(resamples=50))
    text = (tmp_path / "reports/leaderboard.txt").read_text()
    assert max(len(line) for line in text.splitlines()) <= 120 and "](" not in text  # no image links
    assert "vs none (paired)" in text and "good" in text and "[" in text


def _add_seeds(root: Path, seeds: dict[str, list[float]]) -> None:
    """Evaluate's ``seeds`` (the gate metric per training seed) in each student's metrics, the first
    seed being the model's own value."""
    for name, others in seeds.items():
        path = root / "metrics/eval" / f"{name}.json"
        metrics = json.loads(path.read_text())
        first = metrics["ijb"]["tar@far=1e-3"]
        metrics["seeds"] = {str(k): v for k, v in enumerate([first, *(first + d for d in others)])}
        path.write_text(json.dumps(metrics))


def test_seeds_give_a_mean_and_spread_order_the_board_and_tie_what_they_do_not_separate(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write_run(tmp_path)
    # `same` scores as `none` on the first seed but far better on two others: its mean leads, yet
    # its interval overlaps none's (no rank over it) and its seeds do not beat good's.
    _add_seeds(tmp_path, {"none": [0.005, -0.005], "good": [0.01, -0.01], "same": [0.9, 0.9]})
    board = report.run(_params())
    gate = "gate: ijb.tar@far=1e-3"
    assert board.loc["good", "gate low"] > board.loc["none", "gate high"]  # the bootstrap separates them
    assert list(board.index) == ["teacher", "same", "good", "none"]  # by the mean over seeds
    assert board.loc["good", "seeds n"] == 3 and board.loc["good", "seeds mean"] == pytest.approx(board.loc["good", gate])
    assert board.loc["good", "seeds sd"] == pytest.approx(0.01)
    assert pd.isna(board.loc["teacher", "rank"]) and board.loc[["same", "good", "none"], "rank"].tolist() == [1, 1, 2]
    md = (tmp_path / "reports/leaderboard.md").read_text()
    assert "mean over training seeds" in md and "Welch t-test over seeds" in md
    good_row = next(line for line in md.splitlines() if line.startswith("| good"))
    assert f"{100 * board.loc['good', gate]:.2f} ± 1.00 (3)" in good_row
    assert "over seeds" in (tmp_path / "reports/leaderboard.txt").read_text()
