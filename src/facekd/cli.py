"""The ``facekd`` command: one subcommand per DVC stage, plus promote/rollback/info tools.

Each subcommand is thin: it loads ``params.yaml`` into the typed config and calls the
library. Heavy imports (torch, mlflow, great_expectations) happen inside the commands so
``facekd --help`` stays instant. A :class:`~facekd.errors.FacekdError` is printed as one
readable message and exits with code 2.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from facekd import __version__
from facekd.errors import FacekdError

log = logging.getLogger("facekd")


def _params(ctx: click.Context):
    from facekd.config import load_params

    return load_params(ctx.obj["params_path"])


class FacekdGroup(click.Group):
    """Turns user-facing errors into one clear message and exit code 2."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FacekdError as err:
            log.error("%s", err)
            sys.exit(2)


@click.group(cls=FacekdGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--params", "params_path", default="params.yaml", show_default=True,
              type=click.Path(dir_okay=False), help="Parameters file (the single source of truth).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(__version__, prog_name="facekd")
@click.pass_context
def cli(ctx: click.Context, params_path: str, verbose: bool) -> None:
    """Distil large face-recognition teachers into compact students, side by side.

    Run the whole pipeline with `dvc repro`; each subcommand below is one DVC stage
    (see dvc.yaml) and can be run alone from the repository root.
    """
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    ctx.ensure_object(dict)
    ctx.obj["params_path"] = params_path


@cli.command()
@click.pass_context
def prepare(ctx: click.Context) -> None:
    """Build data/prepared (train.rec/.idx + meta.json) and data/eval from the configured source."""
    from facekd.stages import prepare as stage

    stage.run(_params(ctx))


@cli.command()
@click.pass_context
def validate(ctx: click.Context) -> None:
    """Great Expectations gate over the prepared data; exits non-zero naming failed expectations."""
    from facekd.stages import validate as stage

    stage.run(_params(ctx))


@cli.command("train-teacher")
@click.pass_context
def train_teacher(ctx: click.Context) -> None:
    """Train (or resume training) the teacher -> models/teacher."""
    from facekd.stages import train_teacher as stage

    stage.run(_params(ctx))


@cli.group()
def data() -> None:
    """Inspect face datasets in their real formats."""


@data.command("info")
@click.argument("path", type=click.Path(exists=True))
def data_info(path: str) -> None:
    """Print a JSON summary of a .rec, .bin, IJB root, identity folder or unlabeled folder."""
    from facekd.data.info import describe

    click.echo(json.dumps(describe(Path(path)), indent=2))


@cli.command("info")
@click.pass_context
def info(ctx: click.Context) -> None:
    """Print the resolved configuration as JSON (after validation)."""
    click.echo(json.dumps(_params(ctx).model_dump(mode="json"), indent=2))


@cli.command()
def summary() -> None:
    """Print the newest pipeline result: the leaderboard, else the data validation summary."""
    for path in (Path("reports/leaderboard.md"), Path("reports/validation.md")):
        if path.is_file():
            click.echo(path.read_text())
            return
    raise FacekdError("no result yet: run `dvc repro` first (reports/leaderboard.md is written by the report stage)")


def main() -> None:
    cli(prog_name="facekd")
