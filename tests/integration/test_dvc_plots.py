"""`dvc plots show` as DVC's docs define plots, rendered offline (issue 19, item 5).

A real git + DVC repo holding this repository's own top-level `plots:` section (dvc.yaml) and its
template (.dvc/plots/), fed by :func:`facekd.evaluation.dvcplots.write_benchmark_rocs` from
evaluate-stage ROC rows. Checked: one plot per benchmark with every model, a log FAR axis and
stepped (not smoothed) lines; a page that names no http(s) script; and, in headless Chromium with
no network, one drawn chart per benchmark.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from facekd.evaluation import dvcplots
from tests import browser
from tests.browser import needs_chromium

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODELS = ("teacher", "none", "qud")
BENCHMARKS = ("ijb", "synth_lfw", "mfr")
REMOTE_SCRIPT = re.compile(r"<script[^>]*\bsrc\s*=\s*[\"']?\s*(https?:)?//", re.IGNORECASE)


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """dvc.yaml's plots section and template, with per-benchmark ROC files as the report stage writes them."""
    root = tmp_path_factory.mktemp("plots") / "repo"
    root.mkdir()
    _run(["git", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "init", "-q"], root)
    plots = yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"plots": plots}))
    shutil.copytree(ROOT / ".dvc" / "plots", root / ".dvc" / "plots")
    (root / "plots/roc").mkdir(parents=True)
    for i, model in enumerate(MODELS):  # evaluate-stage rows: every benchmark of a model in one file
        rows = [{"benchmark": b, "fpr": 10.0 ** -k, "tpr": min(1.0, 0.2 * (6 - k) + 0.05 * i)}
                for b in BENCHMARKS for k in range(5, -1, -1)]
        (root / "plots/roc" / f"{model}.json").write_text(json.dumps(rows))
    cwd = Path.cwd()
    os.chdir(root)
    try:
        written = dvcplots.write_benchmark_rocs(MODELS)
    finally:
        os.chdir(cwd)
    assert sorted(p.name for p in written) == sorted(f"{b}.json" for b in BENCHMARKS)
    return root


def _specs(page: str) -> list[dict]:
    """The Vega-Lite specs DVC wrote into the page (`var spec = {...};` before each vegaEmbed call)."""
    return [json.loads(m) for m in re.findall(r"var spec = (\{.*?\});\s*vegaEmbed", page, re.DOTALL)]


def test_one_log_far_plot_per_benchmark_with_every_model(repo: Path) -> None:
    rows = json.loads((repo / "plots/roc_by_benchmark/ijb.json").read_text())
    assert {r["model"] for r in rows} == set(MODELS) and len(rows) == 6 * len(MODELS)
    template = repo / "offline.html"
    template.write_text(dvcplots.offline_html_template(bundle="window.vegaEmbed = function () {};"))
    _run([sys.executable, "-m", "dvc", "plots", "show", "--html-template", str(template), "-o", "out"], repo)
    page = (repo / "out/index.html").read_text()
    assert not REMOTE_SCRIPT.search(page), "the offline page loads a script from the network"
    specs = _specs(page)
    assert len(specs) == len(BENCHMARKS), f"{len(specs)} plots for {len(BENCHMARKS)} benchmarks"
    for spec in specs:
        assert spec["encoding"]["x"]["field"] == "fpr" and spec["encoding"]["x"]["scale"]["type"] == "log"
        assert spec["encoding"]["color"]["field"] == "model"
        assert spec["mark"]["type"] == "line" and spec["mark"]["interpolate"] == "step-after"  # no smoothing
        assert {row["model"] for row in spec["data"]["values"]} == set(MODELS)
    # DVC's own page (no template) loads Vega from a CDN: what this template exists to avoid.
    _run([sys.executable, "-m", "dvc", "plots", "show", "-o", "cdn"], repo)
    assert REMOTE_SCRIPT.search((repo / "cdn/index.html").read_text())


@needs_chromium
def test_facekd_plots_page_draws_every_plot_in_chromium_offline(repo: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("vl_convert") is None:
        pytest.skip("vl-convert-python (the Vega libraries facekd plots writes into the page) is not installed")
    out = _run([str(BIN / "facekd"), "plots", "--out", "offline"], repo)
    page = repo / "offline/index.html"
    assert str(page.relative_to(repo)) in out and not REMOTE_SCRIPT.search(page.read_text())
    dom = browser.dump_dom(page, tmp_path / "profile")
    drawn = re.findall(r"<(?:svg|canvas)[^>]*class=\"marks\"", dom)  # what vega-embed draws a chart into
    assert len(drawn) == len(BENCHMARKS), f"{len(drawn)} charts drawn of {len(BENCHMARKS)}"
    assert browser.inked(browser.screenshot(page, tmp_path / "plots.png")) > 0.02  # a blank page is ~0.003
