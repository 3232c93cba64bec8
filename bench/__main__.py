"""``python -m bench``: run the benchmarks (all, or ``--only NAME``) and print a summary table.

Each benchmark prints one line per target as it finishes; the table at the end repeats them.
``pipeline_wall`` runs the whole embedded pipeline (about a quarter of an hour): ``--skip`` it
for a quick pass. ``--quick`` runs every benchmark at tiny sizes (what the smoke test does).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import platform

from bench import BENCHES, common


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHES)}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", type=_names, default=None, help=f"comma-separated, from: {', '.join(BENCHES)}")
    parser.add_argument("--skip", type=_names, default=[], help="comma-separated benchmarks to leave out")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that everything runs, not speed")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    chosen = [n for n in (args.only or BENCHES) if n not in args.skip]
    print(f"# facekd benchmarks {datetime.date.today()} on {platform.machine()}, {common.load_average()}"
          f"{' (quick sizes)' if args.quick else ''}", flush=True)
    results = []
    for name in chosen:
        print(f"## {name}", flush=True)
        results += importlib.import_module(f"bench.{name}").run(quick=args.quick)
    print("\n" + common.summary_table(results))
    return 1 if args.strict and any(r.passed is False for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
