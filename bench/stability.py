"""Issue 16: does the leaderboard's order survive another floating-point order and other seeds?

The embedded study is run three times, each a cold ``dvc repro`` in a temporary copy of the
repository (as ``pipeline_wall`` makes it): as configured; with ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's
AVX2 kernels sum in another order; on an AVX2-only machine this run equals the first, and the line
says so); and with ``seed`` + 1 (other weight inits, batch orders and augmentations). From the
first run's ``metrics/headline.json``, every pair of models whose 95% gate intervals do not overlap
is a claimed order; each rerun must keep every claimed order (the point values in that order).
Pairs whose intervals overlap are ties: the leaderboard does not rank them, so neither does this.

Target: 0 claimed orders broken in each rerun. Three cold runs take about three times
``pipeline_wall``'s cold figure: run it on purpose (``python -m bench --only stability``), or
``python -m bench.stability --reference DIR`` to take the first run's headline from a finished
``make run`` of the same commit in DIR (two cold runs). ``--quick`` checks the comparison and the
copies' set-up without running the pipeline.
"""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bench import common
from bench.pipeline_wall import copy_repo, measure

Headline = dict[str, Any]


def claimed_orders(headline: Headline) -> list[tuple[str, str]]:
    """(better, worse) for every pair whose gate intervals do not overlap."""
    rows = {name: row for name, row in headline.items() if isinstance(row, dict) and "gate_low" in row}
    return [(a, b) if rows[a]["gate"] > rows[b]["gate"] else (b, a)
            for a, b in itertools.combinations(sorted(rows), 2)
            if rows[a]["gate_low"] > rows[b]["gate_high"] or rows[b]["gate_low"] > rows[a]["gate_high"]]


def broken(orders: list[tuple[str, str]], rerun: Headline) -> list[str]:
    """The claimed orders a rerun reverses (or ties), as 'a > b: 0.12 vs 0.15'."""
    out = []
    for better, worse in orders:
        a, b = rerun.get(better, {}).get("gate"), rerun.get(worse, {}).get("gate")
        if a is None or b is None or not a > b:
            out.append(f"{better} > {worse}: {a} vs {b}")
    return out


def _variant(repo: Path, variant: str) -> dict[str, str]:
    """Set the copy up for ``variant``; the extra environment its dvc repro runs with."""
    if variant == "seed+1":
        params = repo / "params.yaml"
        text = params.read_text()
        seed = int(yaml.safe_load(text)["seed"])
        params.write_text(text.replace(f"\nseed: {seed}\n", f"\nseed: {seed + 1}\n", 1))
        assert yaml.safe_load(params.read_text())["seed"] == seed + 1, "params.yaml's top-level seed line not found"
        return {}
    return {"ONEDNN_MAX_CPU_ISA": "AVX2"} if variant == "avx2" else {}


def _study(tmp: Path, variant: str) -> Headline:
    repo = copy_repo(tmp / variant)
    env = _variant(repo, variant)
    run = measure([sys.executable, "-m", "dvc", "repro"], repo, tmp / f"{variant}.log", extra_env=env)
    if run.returncode != 0:
        raise RuntimeError(f"dvc repro ({variant}) failed: {run.log.read_text()[-3000:]}")
    common.note(f"{variant}: cold dvc repro {run.seconds:.0f} s, {common.load_average()}")
    return json.loads((repo / "metrics/headline.json").read_text())


def _has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _quick_check() -> list[common.Result]:
    """The comparison on made-up headlines, and each variant's set-up in a copy (no pipeline run)."""
    first = {"gate_metric": "g", "teacher": {"gate": 0.3, "gate_low": 0.2, "gate_high": 0.4},
             "qud": {"gate": 0.1, "gate_low": 0.05, "gate_high": 0.15}, "none": {"gate": 0.08, "gate_low": 0.0,
                                                                                "gate_high": 0.12}}
    orders = claimed_orders(first)
    assert orders == [("teacher", "none"), ("teacher", "qud")], orders  # qud vs none overlap: a tie
    assert broken(orders, {**first, "qud": {"gate": 0.35}}) == ["teacher > qud: 0.3 vs 0.35"]
    with common.scratch_dir("stability") as tmp:
        repo = copy_repo(tmp / "seed")
        seed = yaml.safe_load((repo / "params.yaml").read_text())["seed"]
        _variant(repo, "seed+1")
        assert yaml.safe_load((repo / "params.yaml").read_text())["seed"] == seed + 1
        status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=repo, capture_output=True, text=True)
        assert status.returncode == 0, status.stderr
    detail = "machinery only: claimed orders of a made-up headline found and a reversal caught; seed+1 copy set up"
    return [common.emit(common.Result("stability", "quick", detail, len(orders), what="orders", op="",
                                      identical=True, note="quick: no pipeline run"))]


def run(quick: bool = False, reference: Path | None = None) -> list[common.Result]:
    if quick:
        return _quick_check()
    variants = ["avx2", "seed+1"] if _has_avx512() else ["seed+1"]
    with common.scratch_dir("stability") as tmp:
        if reference is not None:
            first = json.loads((reference / "metrics/headline.json").read_text())
            common.note(f"as-configured: the finished run in {reference}")
        else:
            first = _study(tmp, "as-configured")
        orders = claimed_orders(first)
        common.note(f"claimed orders (intervals apart): {', '.join(f'{a}>{b}' for a, b in orders) or 'none'}")
        results = []
        for variant in variants:
            lost = broken(orders, _study(tmp, variant))
            detail = f"{variant}: {len(orders) - len(lost)} of {len(orders)} claimed orders kept"
            results.append(common.emit(common.Result("stability", variant, detail + (f" (broken: {'; '.join(lost)})"
                                                     if lost else ""), len(lost), what="broken", op="<=", limit=0)))
    if "avx2" not in variants:
        common.note("no AVX-512 here: the AVX2 rerun would repeat the first run's floating-point order; skipped")
    return results


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="check the machinery only (seconds)")
    parser.add_argument("--reference", type=Path, help="a finished `make run` of this commit: its headline is run 1")
    args = parser.parse_args()
    results = run(args.quick, args.reference)
    print("\n" + common.summary_table(results))


if __name__ == "__main__":
    main()
