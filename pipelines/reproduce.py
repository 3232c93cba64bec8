"""``reproduce``: run the DVC pipeline as one Prefect task per stage, in DAG order.

Each task runs ``dvc repro <stage>``: DVC decides whether the stage is stale (an up-to-date
stage does nothing), Prefect only orders, logs and retries. The stage list and order come from
``dvc dag``, so a new stage in ``dvc.yaml`` (or a new ``distill@<method>`` item) becomes a task
with no change here. A retry simply reruns ``dvc repro <stage>``; training stages keep
``checkpoints/`` (``persist: true``) and resume from the last one.

Retries and their delay come from ``params.yaml`` ``schedule.retries`` /
``schedule.retry_delay_seconds``. Run it with ``python -m pipelines.reproduce`` (see ``--help``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from pipelines import dvcstages, localserver


@task(name="dvc-repro", task_run_name="{stage}", cache_policy=NO_CACHE)
def run_stage(stage: str, repo: str) -> None:
    """``dvc repro <stage>`` with every output line sent to the Prefect run log as it comes."""
    logger = get_run_logger()
    dvcstages.run_checked(dvcstages.dvc_command("repro", stage), Path(repo), logger.info,
                          what=f"DVC stage '{stage}'")


@flow(name="facekd-reproduce")
def reproduce(repo: str = ".", stages: list[str] | None = None) -> list[str]:
    """Reproduce the DVC pipeline of ``repo`` (all stages, or ``stages`` and their foreach items).

    Returns the stages checked, in the order they ran. A stage that still fails after its
    retries fails the flow with that stage's last output lines in the error; a second flow on
    the same repository fails at once with "pipeline busy" (:func:`dvcstages.pipeline_lock`).
    """
    root = Path(repo).resolve()
    schedule = dvcstages.read_schedule(root)
    with dvcstages.pipeline_lock(root):
        selected = dvcstages.select_stages(dvcstages.stage_order(root), stages)
        get_run_logger().info("stages in order: %s", ", ".join(selected))
        stage_task = run_stage.with_options(retries=schedule.retries,
                                            retry_delay_seconds=schedule.retry_delay_seconds)
        for stage in selected:
            stage_task(stage, str(root))
    return selected


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.reproduce [--repo PATH] [--stage NAME ...]``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.reproduce",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=".", help="repository root with dvc.yaml (default: .)")
    parser.add_argument("--stage", action="append", dest="stages", metavar="NAME",
                        help="run only this stage (repeatable; a foreach name selects all items)")
    args = parser.parse_args(argv)
    localserver.prepare_database()  # a fresh PREFECT_HOME: migrate once, before the server starts
    state = reproduce(repo=args.repo, stages=args.stages, return_state=True)
    sys.exit(0 if state.is_completed() else 1)


if __name__ == "__main__":
    main()
