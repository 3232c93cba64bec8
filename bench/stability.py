"""Issue 16: does the leaderboard's order survive another floating-point order and other seeds?

The embedded study is run three times, each a cold ``dvc repro`` in a temporary copy of the
repository (as ``pipeline_wall`` makes it): as configured; on a narrower oneDNN path than the CPU's
own (``ONEDNN_MAX_CPU_ISA=AVX2`` on an AVX-512 CPU, ``SSE41`` on an AVX2-only one: narrower vectors
sum convolutions and matmuls in another order; on an AVX2-only EPYC a conv+BN+PReLU+linear
forward/backward gave other bits under SSE41 in the output and both weight gradients);
and under other seeds (``seed`` + ``distill.seeds``: the teacher, the data order and every student
seed new, none shared with the first run). The claimed orders are the leaderboard's own:
every pair where one model is *shown better* than the other (:mod:`facekd.evaluation.ranking`:
95% gate intervals apart and, with two seeds or more, a Welch t-test over seeds at 5%). Each rerun
must keep every claimed order, comparing the mean over seeds (the one value with one seed). Pairs
the leaderboard does not separate are ties, and so are not checked.

Target: 0 claimed orders broken in each rerun. ``--seeds N`` runs every copy with
``distill.seeds: N`` (the leaderboard's ``over seeds`` column; with 1 the intervals cover the
evaluation sample only, and training noise alone can reverse a claim). Three cold runs take about
three times ``pipeline_wall``'s cold figure: run it on purpose (``python -m bench --only
stability``), or ``python -m bench.stability --reference DIR`` to take the first run from a
finished ``make run`` of the same commit in DIR (two cold runs; its ``distill.seeds`` is used). The
SSE4.1 path is narrower than both the AVX2 and the AVX-512 ones, so its rerun is another order
whichever of them made the reference; ``--variant avx2`` on an AVX2-only CPU repeats the CPU's own path (a determinism
check, unless the reference came from an AVX-512 CPU). ``--variant`` picks reruns (repeatable).
``--quick`` checks the comparison and the copies' set-up without running the pipeline.
"""
from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from bench import common
from bench.pipeline_wall import copy_repo, measure
from facekd.evaluation.ranking import SEEDS_KEY, Evidence, seed_summary, shown_better

Board = dict[str, tuple[Evidence, float]]  # model -> (its evidence, the value the order is read on)


def board(headline: dict[str, Any], seeds: dict[str, tuple[float, ...]]) -> Board:
    """Every model with a gate interval: its evidence and its mean over seeds (else its gate value)."""
    out = {}
    for name, row in headline.items():
        if isinstance(row, dict) and "gate_low" in row:
            values = seeds.get(name, ())
            out[name] = (Evidence(row["gate_low"], row["gate_high"], values),
                         seed_summary(values)[0] if len(values) > 1 else row["gate"])
    return out


def claimed_orders(first: Board) -> list[tuple[str, str]]:
    """(better, worse) for every pair the leaderboard shows apart."""
    return [(a, b) if shown_better(first[a][0], first[b][0]) else (b, a)
            for a, b in itertools.combinations(sorted(first), 2)
            if shown_better(first[a][0], first[b][0]) or shown_better(first[b][0], first[a][0])]


def broken(orders: list[tuple[str, str]], rerun: Board) -> list[str]:
    """The claimed orders a rerun reverses (or ties), as 'a > b: 0.12 vs 0.15'."""
    out = []
    for better, worse in orders:
        a, b = (rerun[name][1] if name in rerun else None for name in (better, worse))
        if a is None or b is None or not a > b:
            out.append(f"{better} > {worse}: {a} vs {b}")
    return out


def read_board(repo: Path) -> Board:
    """The finished study in ``repo``: its headline and every student's gate metric over seeds."""
    headline = json.loads((repo / "metrics/headline.json").read_text())
    seeds = {}
    for name in headline:
        path = repo / "metrics/eval" / f"{name}.json"
        values = json.loads(path.read_text()).get(SEEDS_KEY) if path.is_file() else None
        if isinstance(values, dict):
            seeds[name] = tuple(float(v) for v in values.values() if isinstance(v, (int, float)))
    return board(headline, seeds)


def _set(params: Path, pattern: str, value: int, key: str) -> None:
    """Rewrite one ``key: N`` line of params.yaml (comments kept), checking the result parses to it."""
    text, n = re.subn(pattern, lambda m: f"{m.group(1)}{value}\n", params.read_text(), count=1)
    assert n == 1, f"params.yaml: no line for {key}"
    params.write_text(text)


def _params(repo: Path) -> dict[str, Any]:
    return yaml.safe_load((repo / "params.yaml").read_text())


# rerun -> ONEDNN_MAX_CPU_ISA: a narrower kernel path, hence another floating-point order
ISA_VARIANTS = {"avx2": "AVX2", "sse41": "SSE41"}
VARIANTS = [*ISA_VARIANTS, "other seeds"]


def default_variants(has_avx512: bool) -> list[str]:
    """One path narrower than this CPU's own (AVX2 below AVX-512, SSE4.1 below AVX2), and other seeds."""
    return ["avx2" if has_avx512 else "sse41", "other seeds"]


def _variant(repo: Path, variant: str, seeds: int | None) -> dict[str, str]:
    """Set the copy up for ``variant`` (and ``distill.seeds``); the extra environment its dvc repro runs with."""
    if seeds is not None:
        _set(repo / "params.yaml", r"(\n  seeds: )\d+\n", seeds, "distill.seeds")
    if variant == "other seeds":
        params = _params(repo)
        _set(repo / "params.yaml", r"(\nseed: )\d+\n", params["seed"] + params["distill"]["seeds"], "seed")
    return {"ONEDNN_MAX_CPU_ISA": ISA_VARIANTS[variant]} if variant in ISA_VARIANTS else {}


def _study(tmp: Path, variant: str, seeds: int | None) -> Board:
    repo = copy_repo(tmp / variant.replace(" ", "-"))
    env = _variant(repo, variant, seeds)
    run = measure([sys.executable, "-m", "dvc", "repro"], repo, tmp / f"{variant}.log", extra_env=env)
    if run.returncode != 0:
        raise RuntimeError(f"dvc repro ({variant}) failed: {run.log.read_text()[-3000:]}")
    common.note(f"{variant}: cold dvc repro {run.seconds:.0f} s, {common.load_average()}")
    rerun = read_board(repo)
    common.note(f"{variant}: gate (mean over seeds) {_values(rerun)}")
    return rerun


def _values(b: Board) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, (_, value) in sorted(b.items(), key=lambda kv: -kv[1][1]))


def _has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def _quick_check() -> list[common.Result]:
    """The comparison on made-up boards, and each variant's set-up in a copy (no pipeline run)."""
    head = {"gate_metric": "g", "teacher": {"gate": 0.3, "gate_low": 0.2, "gate_high": 0.4},
            "qud": {"gate": 0.1, "gate_low": 0.05, "gate_high": 0.15},
            "none": {"gate": 0.08, "gate_low": 0.0, "gate_high": 0.12}}
    orders = claimed_orders(board(head, {}))
    assert orders == [("teacher", "none"), ("teacher", "qud")], orders  # qud vs none overlap: a tie
    assert broken(orders, board({**head, "qud": {**head["qud"], "gate": 0.35}}, {})) == ["teacher > qud: 0.3 vs 0.35"]
    apart = {"a": {"gate": 0.3, "gate_low": 0.25, "gate_high": 0.35}, "b": {"gate": 0.1, "gate_low": 0.05,
                                                                           "gate_high": 0.15}}
    assert claimed_orders(board(apart, {"a": (0.3, 0.1, 0.2), "b": (0.1, 0.25, 0.05)})) == []  # seeds disagree
    # the order is read on the mean over seeds, not the first seed's value
    assert broken([("a", "b")], board(apart, {"a": (0.25, 0.125), "b": (0.5, 0.25)})) == ["a > b: 0.1875 vs 0.375"]
    with common.scratch_dir("stability") as tmp:
        repo = copy_repo(tmp / "seed")
        before = _params(repo)
        _variant(repo, "other seeds", 3)
        after = _params(repo)
        assert after["distill"]["seeds"] == 3 and after["seed"] == before["seed"] + 3, after
        status = subprocess.run([sys.executable, "-m", "dvc", "status"], cwd=repo, capture_output=True, text=True)
        assert status.returncode == 0, status.stderr
        assert _variant(repo, "sse41", None) == {"ONEDNN_MAX_CPU_ISA": "SSE41"}
    assert default_variants(True) == ["avx2", "other seeds"] and default_variants(False) == ["sse41", "other seeds"]
    detail = ("machinery only: claimed orders of made-up boards found (seeds that disagree claim none) and "
              "reversals caught; an other-seeds copy with distill.seeds 3 set up; the ISA reruns chosen per CPU")
    return [common.emit(common.Result("stability", "quick", detail, len(orders), what="orders", op="",
                                      identical=True, note="quick: no pipeline run"))]


def run(quick: bool = False, reference: Path | None = None, seeds: int | None = None,
        variants: list[str] | None = None) -> list[common.Result]:
    if quick:
        return _quick_check()
    variants = variants or default_variants(_has_avx512())
    with common.scratch_dir("stability") as tmp:
        if reference is not None:
            seeds = _params(reference)["distill"]["seeds"]
            first = read_board(reference)
            common.note(f"as-configured: the finished run in {reference} (distill.seeds {seeds})")
            common.note(f"as-configured: gate (mean over seeds) {_values(first)}")
        else:
            first = _study(tmp, "as-configured", seeds)
        orders = claimed_orders(first)
        common.note(f"claimed orders (shown better): {', '.join(f'{a}>{b}' for a, b in orders) or 'none'}")
        results = []
        for variant in variants:
            lost = broken(orders, _study(tmp, variant, seeds))
            detail = f"{variant}: {len(orders) - len(lost)} of {len(orders)} claimed orders kept"
            results.append(common.emit(common.Result("stability", variant, detail + (f" (broken: {'; '.join(lost)})"
                                                     if lost else ""), len(lost), what="broken", op="<=", limit=0)))
    if "avx2" in variants and not _has_avx512():
        common.note("this CPU has no AVX-512: the AVX2 rerun repeats its own floating-point order (another "
                    "order only against a reference made on an AVX-512 CPU)")
    return results


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="check the machinery only (seconds)")
    parser.add_argument("--reference", type=Path,
                        help="a finished `make run` of this commit: run 1 (its distill.seeds is used)")
    parser.add_argument("--seeds", type=int, help="distill.seeds for every run (default: params.yaml's)")
    parser.add_argument("--variant", action="append", choices=VARIANTS,
                        help="run only this rerun (repeatable; default: avx2 on an AVX-512 CPU, else sse41; "
                             "and other seeds)")
    args = parser.parse_args()
    results = run(args.quick, args.reference, args.seeds, args.variant)
    print("\n" + common.summary_table(results))


if __name__ == "__main__":
    main()
