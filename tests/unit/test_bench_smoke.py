"""Every benchmark runs at tiny sizes, prints its result lines, and facekd agrees with its reference.

Correctness only: no timing is asserted (the figures of a quick run mean nothing).
"""
from __future__ import annotations

import importlib
import math
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is a top-level package beside src/
    sys.path.insert(0, str(ROOT))

from bench import BENCHES  # noqa: E402

CUDA_ONLY = ("gpu_train",)
LINE = re.compile(r"^(\w+)\[([^\]]+)\]: .+ -> [\w -]+ (-?[0-9.]+(?:e[+-]?\d+)?|nan|inf) .*(PASS|FAIL|info)")


@pytest.mark.parametrize("name", BENCHES)
def test_bench_runs_quick_and_agrees(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    if name in CUDA_ONLY:
        import torch

        if not torch.cuda.is_available():
            assert importlib.import_module(f"bench.{name}").run(quick=True) == []
            pytest.skip("needs CUDA (checked that it measures nothing without it)")
    results = importlib.import_module(f"bench.{name}").run(quick=True)
    printed = capsys.readouterr().out.splitlines()
    assert results, f"{name} measured nothing"
    for result in results:
        assert result.line() in printed, f"{name} did not print: {result.line()}"
        assert LINE.match(result.line()), f"unexpected line format: {result.line()}"
        assert math.isfinite(result.value) and result.value > 0, result.line()
        assert result.identical is not False, f"reference and facekd disagree: {result.line()}"
    if name not in ("pipeline_wall",):
        assert any(r.identical for r in results), f"{name} checks no agreement with its reference"


def test_summary_table_lists_every_result() -> None:
    from bench.common import Result, summary_table

    results = [Result("a", "x", "d", 1.2, op="<=", limit=1.15), Result("b", "y", "d", 3.0, identical=True)]
    table = summary_table(results).splitlines()
    assert len(table) == 4
    assert "FAIL" in table[2] and "info" in table[3] and "yes" in table[3]


def test_main_runs_one_bench_and_rejects_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.__main__ import main

    assert main(["--only", "ijb_scoring", "--quick"]) == 0
    out = capsys.readouterr().out
    assert "## ijb_scoring" in out and "## verification" not in out and "verdict" in out
    with pytest.raises(SystemExit):
        main(["--only", "nonsense"])
