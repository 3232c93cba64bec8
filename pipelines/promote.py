"""``promote``: the champion/challenger gate as a Prefect flow.

The decision itself lives in ``facekd promote`` (the registry code): alias ``champion`` moves to
the ``candidate`` only if it beats the champion on the gate metric and passed its export checks.
This flow runs that command in the repository, streams its output into the Prefect log and
retries it like a stage (``schedule.retries``), since the gate is idempotent. Run it with
``python -m pipelines.promote`` (see ``--help``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipelines import dvcstages, localserver


@task(name="facekd-promote", cache_policy=NO_CACHE)
def run_promote(repo: str) -> None:
    """``facekd promote`` in ``repo`` with its output sent to the Prefect run log."""
    logger = get_run_logger()
    dvcstages.run_checked(dvcstages.facekd_command("promote"), Path(repo), logger.info,
                          what="facekd promote")


@flow(name="facekd-promote")
def promote(repo: str = ".") -> None:
    """Run the promotion gate for the repository at ``repo`` (MLflow from its params/env)."""
    root = Path(repo).resolve()
    schedule = dvcstages.read_schedule(root)
    run_promote.with_options(retries=schedule.retries,
                             retry_delay_seconds=schedule.retry_delay_seconds)(str(root))


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.promote [--repo PATH]``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.promote",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=".", help="repository root with params.yaml (default: .)")
    args = parser.parse_args(argv)
    localserver.prepare_database()  # a fresh PREFECT_HOME: migrate once, before the server starts
    state = promote(repo=args.repo, return_state=True)
    sys.exit(0 if state.is_completed() else 1)


if __name__ == "__main__":
    main()
