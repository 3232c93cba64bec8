"""Experiments a person can compare (issue 19, item 4): metrics/headline.json and `facekd compare`.

The headline is built from real evaluation trees; the comparison runs against a real git + DVC repo
with a real `dvc exp run`, whose one stage writes a headline the way the report stage does (the
whole pipeline would cost minutes; tests/e2e runs that).
"""
from __future__ import annotations

import csv
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from facekd.errors import DataError
from facekd.evaluation import compare, headline
from facekd.evaluation.uncertainty import Interval, PairedStudy
from tests.integration.test_readme_commands import readme_commands
from tests.worktree import ROOT

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
GATE = "ijb.tar@far=1e-3"


def _tree(gate: float | None, lfw: float) -> dict:
    """An evaluate-stage metrics/eval/<model>.json tree, cut down."""
    return {"model": "m", "params_m": 0.03, "ijb": {"tar@far=1e-3": gate, "tar@far=1e-4": None, "rank1": 0.5,
                                                     "galleries": {"G1": {"rank1": 0.4}}},
            "synth_cpfp": {"accuracy": 0.7}, "synth_lfw": {"accuracy": lfw, "accuracy_std": 0.05}}


def test_headline_keeps_four_flat_numbers_per_model() -> None:
    study = PairedStudy(models={"teacher": Interval(0.1, 0.05, 0.2), "qud": Interval(0.08, 0.03, 0.25)},
                        vs_baseline={}, gap_closed={}, n_resamples=10, identities=5)
    built = headline.build({"teacher": _tree(0.1, 0.92), "qud": _tree(0.08, 0.9), "gkd": _tree(None, 0.77)},
                           GATE, study)
    assert built == {"gate_metric": GATE,
                     "teacher": {"gate": 0.1, "gate_low": 0.05, "gate_high": 0.2, "lfw_acc": 0.92},
                     "qud": {"gate": 0.08, "gate_low": 0.03, "gate_high": 0.25, "lfw_acc": 0.9},
                     "gkd": {"lfw_acc": 0.77}}  # a null gate is left out, never written as null
    no_study = headline.build({"qud": _tree(1 / 3, 0.9)}, GATE)
    assert no_study["qud"] == {"gate": 0.333333, "lfw_acc": 0.9}
    assert headline.lfw_benchmark({"lfw": {"accuracy": 1}, "synth_lfw": {"accuracy": 1}}) == "lfw"
    assert headline.lfw_benchmark({"cfp_fp": {"accuracy": 1}}) is None


# --- a real DVC repository with experiments ---------------------------------------------------------

DISTILL = '''\
"""Writes models/qud from params.yaml's tau, as a distill stage would."""
import pathlib, yaml
pathlib.Path("models/qud").mkdir(parents=True, exist_ok=True)
pathlib.Path("models/qud/weights.txt").write_text(str(yaml.safe_load(open("params.yaml"))["tau"]))
'''
REPORT = '''\
"""Writes metrics/headline.json from the student in models/qud, as the report stage would."""
import json, pathlib
qud = 0.08 if pathlib.Path("models/qud/weights.txt").read_text() == "0.1" else 0.06
out = {"gate_metric": "ijb.tar@far=1e-3",
       "teacher": {"gate": 0.1, "gate_low": 0.05, "gate_high": 0.2, "lfw_acc": 0.92},
       "qud": {"gate": qud, "gate_low": qud - 0.04, "gate_high": qud + 0.1, "lfw_acc": 0.9},
       "none": {"gate": 0.03, "gate_low": 0.0, "gate_high": 0.07, "lfw_acc": 0.8}}
pathlib.Path("metrics").mkdir(exist_ok=True)
pathlib.Path("metrics/headline.json").write_text(json.dumps(out, indent=2, sort_keys=True))
'''
STAGES = {"distill": {"cmd": f"{sys.executable} distill.py", "deps": ["distill.py"], "params": ["tau"],
                      "outs": ["models/qud"]},
          "report": {"cmd": f"{sys.executable} report.py", "deps": ["report.py", "models/qud"],
                     "metrics": [{"metrics/headline.json": {"cache": False}}]}}


def _run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return proc


def _dvc(*args: str, cwd: Path) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd).stdout


@pytest.fixture(scope="module")
def experiments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed run (tau 0.1, dvc.lock and the headline in git) and an experiment `tau007`."""
    repo = tmp_path_factory.mktemp("exps") / "repo"
    repo.mkdir()
    _run(["git", "init", "-q", "-b", "main"], repo)
    _dvc("init", "-q", cwd=repo)
    (repo / "distill.py").write_text(DISTILL)
    (repo / "report.py").write_text(REPORT)
    (repo / "params.yaml").write_text("tau: 0.1\n")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": STAGES}))
    _dvc("repro", "-q", cwd=repo)
    # The README's policy: a run's dvc.lock and small results are committed, so experiments have a baseline.
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "run"], repo)
    _dvc("exp", "run", "-q", "-S", "tau=0.07", "-n", "tau007", cwd=repo)
    return repo


def _facekd(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return _run([str(BIN / "facekd"), *args], cwd, check)


def _rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split()[1:] for line in text.splitlines()[3:] if line.strip()}


def test_compare_two_experiments_by_name_and_revision(experiments: Path) -> None:
    out = _facekd("compare", "main", "tau007", cwd=experiments).stdout
    assert out.splitlines()[0].startswith(f"gate metric {GATE}, percent [95% interval]; A = main, B = tau007")
    rows = _rows(out)
    assert list(rows) == ["teacher", "qud", "none"]  # teacher first, then B's best first
    assert rows["qud"] == ["8.00", "[4.00,", "18.00]", "6.00", "[2.00,", "16.00]", "-2.00"]
    assert rows["teacher"][-1] == "+0.00" and rows["none"][-1] == "+0.00"
    # B defaults to the workspace (the experiment's results were applied to it); A may be a file.
    (experiments / "baseline.json").write_text(_run(["git", "show", "main:metrics/headline.json"], experiments).stdout)
    assert _rows(_facekd("compare", "baseline.json", cwd=experiments).stdout)["qud"][-1] == "-2.00"
    lfw = _rows(_facekd("compare", "HEAD", "tau007", "--metric", "lfw_acc", cwd=experiments).stdout)
    assert lfw["qud"] == ["90.00", "90.00", "+0.00"]


def test_compare_errors_name_the_source(experiments: Path) -> None:
    unknown = _facekd("compare", "no-such-exp", cwd=experiments, check=False)
    assert unknown.returncode == 2 and "'no-such-exp'" in unknown.stderr and "dvc exp show" in unknown.stderr
    other = {"gate_metric": "ijb.tar@far=1e-4", "qud": {"gate": 0.01}}
    (experiments / "other.json").write_text(json.dumps(other))
    mixed = _facekd("compare", "main", "other.json", cwd=experiments, check=False)
    assert mixed.returncode == 2 and "gates on ijb.tar@far=1e-3" in mixed.stderr
    with pytest.raises(DataError, match="not a facekd headline"):
        headline.parse({"qud": {"gate": 1}}, "x.json")
    with pytest.raises(DataError, match="cannot compare 'rank1'"):
        compare.table(compare.Side("a", other), compare.Side("b", other), "rank1")


def test_dvc_shows_only_the_headline_numbers_that_changed(experiments: Path) -> None:
    table = list(csv.reader(io.StringIO(_dvc("exp", "show", "--only-changed", "--csv", cwd=experiments))))
    header = table[0]
    assert {"qud.gate", "qud.gate_low", "qud.gate_high", "tau"} <= set(header)
    assert not [h for h in header if h.startswith(("teacher.", "none.")) or h.endswith("lfw_acc")], header
    assert "models/qud" in header  # DVC adds a 32-character hash column for each changed stage input
    diff = json.loads(_dvc("metrics", "diff", "main", "tau007", "--json", cwd=experiments))
    assert diff["metrics/headline.json"]["qud.gate"]["diff"] == pytest.approx(-0.02)


def test_readme_exp_show_fits_a_screen_and_shows_the_gate_change(experiments: Path) -> None:
    command = next(c.split(" #")[0] for c in readme_commands((ROOT / "README.md").read_text())
                   if c.startswith("dvc exp show --only-changed"))
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "1000", "DVC_NO_ANALYTICS": "1"}
    shown = subprocess.run(shlex.split(command) + ["--no-pager"], cwd=experiments, env=env, capture_output=True,
                           text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 120, shown.stdout
    header = lines[1].split()
    assert {"qud.gate", "qud.gate_low", "qud.gate_high", "tau"} <= set(header) and "models/qud" not in header
    assert any("tau007" in line and "0.06" in line and "0.07" in line for line in lines), shown.stdout
