"""``retrain``: when the training data changed, reproduce the pipeline and run the promotion gate.

How "new data" is detected (the choice, and why): the flow asks DVC, with
``dvc status <data_stage> --json`` (``prepare`` by default), whether that stage's own inputs differ
from what ``dvc.lock`` recorded. For ``data.source: synthetic`` the data *is* the generator
params (``data.synthetic``), which the stage lists as params; for ``rec``/``folder`` it is the
files under ``data.path``, which the stage must list as a dep (DVC hashes their content). The
generator/reader code is a dep too, so changed code that changes the data counts as new data,
and a missing ``dvc.lock`` or missing prepared outputs count as "never prepared". This keeps the
rule "DVC decides what is stale": no second hashing scheme here that could disagree with DVC.

When nothing changed the flow ends COMPLETED with the state message ``no change``; otherwise it
runs :func:`pipelines.reproduce.reproduce` and then :func:`pipelines.promote.promote` as subflows.
Run it with ``python -m pipelines.retrain`` (see ``--help``); ``python -m pipelines.serve``
schedules it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from pipelines import dvcstages
from pipelines.promote import promote
from pipelines.reproduce import reproduce

NO_CHANGE = "no change"


@task(name="data-changes", cache_policy=NO_CACHE)
def data_changes(repo: str, data_stage: str) -> list:
    """DVC's list of changed deps/params/outs of ``data_stage``; empty when the data is as locked."""
    changes = dvcstages.stage_changes(Path(repo), data_stage)
    get_run_logger().info("dvc status %s: %s", data_stage, changes or "up to date")
    return changes


@flow(name="facekd-retrain")
def retrain(repo: str = ".", data_stage: str = "prepare", promote_model: bool = True) -> State:
    """Retrain (reproduce + promote) only if the inputs of ``data_stage`` changed.

    ``promote_model=False`` stops after reproduce (for repositories without a registry).
    """
    root = str(Path(repo).resolve())
    if not data_changes(root, data_stage):
        return Completed(message=NO_CHANGE)
    stages = reproduce(repo=root)
    if promote_model:
        promote(repo=root)
    return Completed(message=f"retrained: {len(stages)} stages checked"
                             + (", promotion gate run" if promote_model else ""))


def main(argv: list[str] | None = None) -> None:
    """``python -m pipelines.retrain [--repo PATH] [--data-stage NAME] [--no-promote]``."""
    parser = argparse.ArgumentParser(prog="python -m pipelines.retrain",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=".", help="repository root with dvc.yaml (default: .)")
    parser.add_argument("--data-stage", default="prepare",
                        help="the DVC stage whose inputs are the training data (default: prepare)")
    parser.add_argument("--no-promote", dest="promote_model", action="store_false",
                        help="stop after reproduce; do not run facekd promote")
    args = parser.parse_args(argv)
    state = retrain(repo=args.repo, data_stage=args.data_stage,
                    promote_model=args.promote_model, return_state=True)
    sys.exit(0 if state.is_completed() else 1)


if __name__ == "__main__":
    main()
