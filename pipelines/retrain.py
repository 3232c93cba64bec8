"""``retrain``: when the training data changed, reproduce the pipeline and run the promotion gate.

How "new data" is detected (the choice, and why): the flow asks DVC, with
``dvc status <data_stage> --json`` (``prepare`` by default), whether that stage's own inputs differ
from what ``dvc.lock`` recorded. For ``data.source: synthetic`` the data *is* the generator
params (``data.synthetic``), which the stage lists as params; for ``rec``/``folder`` it is the
content of ``data.path`` and ``data.eval_path``, which ``dvc.yaml`` lists as deps of ``prepare``
(``${data.path}``, ``${data.eval_path}``; by default the ``data/raw/train`` and ``data/raw/eval``
folders), so a new identity folder, a rewritten ``.rec`` or a new evaluation set is a changed dep.
The generator/reader code is a dep too, so changed code that changes the data counts as new data,
and a missing ``dvc.lock`` or missing prepared outputs count as "never prepared". This keeps the
rule "DVC decides what is stale": no second hashing scheme here that could disagree with DVC.
When only evaluation sets changed, ``dvc repro`` reruns ``prepare`` but the unchanged
``data/prepared`` keeps training stages cached, so only evaluation onwards recomputes.

Data that a previous retrain prepared but did not get through the pipeline (a stage failed, the
run was killed) counts as new too: ``prepare`` is then up to date, but ``dvc status`` reports the
stages built on its outputs with a changed dep. Without that check the next scheduled run would
say "no change" and leave the models on the old data for good.

When nothing changed the flow ends COMPLETED with the state message ``no change``; otherwise it
runs :func:`pipelines.reproduce.reproduce` and then :func:`pipelines.promote.promote` as subflows.
Run it with ``python -m pipelines.retrain`` (see ``--help``); ``python -m pipelines.serve``
schedules it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, State

from pipelines import dvcstages, localserver
from pipelines.promote import promote
from pipelines.reproduce import reproduce

NO_CHANGE = "no change"


@task(name="data-changes", cache_policy=NO_CACHE)
def data_changes(repo: str, data_stage: str) -> list:
    """What makes a retrain due: DVC's changes to ``data_stage`` itself, else the stages whose
    deps on its outputs changed (data not yet trained on); empty when there is nothing new."""
    root, logger = Path(repo), get_run_logger()
    changes = dvcstages.stage_changes(root, data_stage)
    logger.info("dvc status %s: %s", data_stage, changes or "up to date")
    if not changes:
        changes = stages_behind(root, data_stage)
        logger.info("stages not yet built on its outputs: %s", changes or "none")
    return changes


def stages_behind(root: Path, data_stage: str) -> list[dict]:
    """``[{stage: {path: change}}]`` for each stage whose deps among ``data_stage``'s locked
    outputs changed, from one ``dvc status --json`` of the whole pipeline."""
    outs = locked_outs(root, data_stage)
    status = dvcstages.capture(dvcstages.dvc_command("status", "--json"), root, "dvc status")
    behind = []
    for stage, entries in json.loads(status.strip() or "{}").items():
        for entry in entries:  # a dict of changes, or a string such as "changed command"
            deps = entry.get("changed deps", {}) if isinstance(entry, dict) else {}
            if changed := {path: what for path, what in deps.items() if path in outs}:
                behind.append({stage: changed})
    return behind


def locked_outs(root: Path, stage: str) -> set[str]:
    """The output paths ``dvc.lock`` records for ``stage`` (empty when it never ran)."""
    lock_file = root / "dvc.lock"
    lock = yaml.safe_load(lock_file.read_text()) if lock_file.exists() else None
    return {out["path"] for out in ((lock or {}).get("stages", {}).get(stage) or {}).get("outs", [])}


@flow(name="facekd-retrain")
def retrain(repo: str = ".", data_stage: str = "prepare", promote_model: bool = True) -> State:
    """Retrain (reproduce + promote) only if the inputs of ``data_stage`` changed, or its outputs
    changed since the stages built on them last ran (see :func:`data_changes`).

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
    localserver.prepare_database()  # a fresh PREFECT_HOME: migrate once, before the server starts
    state = retrain(repo=args.repo, data_stage=args.data_stage,
                    promote_model=args.promote_model, return_state=True)
    sys.exit(0 if state.is_completed() else 1)


if __name__ == "__main__":
    main()
