"""Serve ``retrain`` as a deployment on the cron schedule from ``params.yaml`` (``schedule.cron``).

    python -m pipelines.serve [--repo PATH] [--name scheduled] [--no-promote]

This registers the deployment ``facekd-retrain/<name>`` and keeps polling for its scheduled runs
until stopped (Ctrl-C pauses the schedule). Runs never overlap: the deployment has a concurrency
limit of 1 (a tick that fires while a retrain is still running is queued, and then finds the data
already handled) and this runner executes at most one run at a time. The cron is read in UTC.

Where it runs: with ``PREFECT_API_URL`` set (e.g. ``http://127.0.0.1:4200/api`` from
``prefect server start``), against that server - the normal setup, whose UI shows the schedule
and every run's stage logs. Without it Prefect starts a temporary local server in this process
(its SQLite database under ``PREFECT_HOME``, default ``~/.prefect``); that works for trying it out
but the server lives only as long as this process. On a fresh ``PREFECT_HOME`` set
``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=180`` (the 20 s default can be too short).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.deployments.runner import RunnerDeployment

from pipelines import dvcstages, localserver
from pipelines.retrain import retrain

DEPLOYMENT_NAME = "scheduled"


def build_deployment(repo: Path, name: str = DEPLOYMENT_NAME,
                     promote_model: bool = True) -> RunnerDeployment:
    """The scheduled, non-overlapping ``retrain`` deployment for the repository at ``repo``."""
    root = repo.resolve()
    schedule = dvcstages.read_schedule(root)
    return retrain.to_deployment(
        name=name,
        cron=schedule.cron,
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE),
        parameters={"repo": str(root), "promote_model": promote_model},
        description=f"Retrain {root} when its training data changes (cron {schedule.cron!r}, UTC).",
        tags=["facekd"],
    )


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and serve the deployment until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.serve",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=".", help="repository root with params.yaml (default: .)")
    parser.add_argument("--name", default=DEPLOYMENT_NAME,
                        help=f"deployment name (default: {DEPLOYMENT_NAME})")
    parser.add_argument("--no-promote", dest="promote_model", action="store_false",
                        help="retrain without running facekd promote (no model registry)")
    args = parser.parse_args(argv)
    localserver.prepare_database()  # a fresh PREFECT_HOME: migrate once, before the server starts
    serve(build_deployment(Path(args.repo), args.name, args.promote_model), limit=1)


if __name__ == "__main__":
    main()
