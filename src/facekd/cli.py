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

from facekd import __version__, layout
from facekd.errors import FacekdError

log = logging.getLogger("facekd")


def _params(ctx: click.Context):
    from facekd.config import load_params
    from facekd.data.limits import set_limits

    params = load_params(ctx.obj["params_path"])
    set_limits(params.data.limits)  # every reader of this process refuses input past these
    return params


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
    """Train (or resume training) the teacher -> models/teacher (teacher.source onnx: import and check teacher.onnx.path instead)."""
    from facekd.stages import train_teacher as stage

    stage.run(_params(ctx))


@cli.command("teacher-features")
@click.option("--teacher", default="teacher", show_default=True,
              help="Which teacher's embeddings to cache: `teacher`, or `teacher_<method>` for a method of "
                   "distill.head_sharing (its student-aware teacher).")
@click.pass_context
def teacher_features(ctx: click.Context, teacher: str) -> None:
    """Cache the frozen teacher's embeddings of every training image and its flip -> features/<teacher>."""
    from facekd.stages import teacher_features as stage

    stage.run(_params(ctx), teacher)


class DistillCommand(click.Command):
    """``distill --help`` lists the registered methods, read from the registry only when asked
    (importing it imports torch, which would slow every other ``facekd`` command)."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from facekd.distill.registry import methods

        super().format_help_text(ctx, formatter)
        with formatter.section("Methods"):
            formatter.write_text(", ".join(sorted(methods())))


@cli.command(cls=DistillCommand)
@click.argument("method")
@click.pass_context
def distill(ctx: click.Context, method: str) -> None:
    """Train (or resume) the student with one distillation METHOD -> models/METHOD.

    A method of distill.head_sharing (`shkd`) needs its own teacher first
    (`facekd student-aware-teacher METHOD`, dvc.yaml's student_aware stages).
    """
    from facekd.distill.registry import method_class
    from facekd.stages import distill as stage

    method_class(method)  # an unknown name fails here, listing every registered method
    stage.run(_params(ctx), method)


@cli.command("student-aware-teacher")
@click.argument("method")
@click.pass_context
def student_aware_teacher(ctx: click.Context, method: str) -> None:
    """SH-KD step 2: fine-tune the teacher through the `none` student's frozen head -> models/teacher_METHOD."""
    from facekd.stages import student_aware_teacher as stage

    stage.run(_params(ctx), method)


@cli.command()
@click.argument("model")
@click.option("--int8", is_flag=True,
              help="Score MODEL's INT8 ONNX copy (exports/MODEL.int8.onnx) instead -> metrics/eval/MODEL.int8.json.")
@click.pass_context
def evaluate(ctx: click.Context, model: str, int8: bool) -> None:
    """Run every benchmark in data/eval for MODEL (teacher or a method) -> metrics/eval/MODEL.json."""
    from facekd.stages import evaluate as stage

    stage.run(_params(ctx), model, int8=int8)


@cli.command()
@click.pass_context
def report(ctx: click.Context) -> None:
    """Write the leaderboard (reports/leaderboard.md/.html/.png) and the combined ROC plot."""
    from facekd.stages import report as stage

    stage.run(_params(ctx))


@cli.command()
@click.argument("model")
@click.pass_context
def export(ctx: click.Context, model: str) -> None:
    """Export MODEL to exports/MODEL.onnx and check it (parity, MFR rules, latency) -> reports/export/MODEL.json."""
    from facekd.stages import export as stage

    stage.run(_params(ctx), model)


@cli.command()
@click.argument("model", required=False)
@click.pass_context
def register(ctx: click.Context, model: str | None) -> None:
    """Register the best student (or MODEL) in MLflow with alias `candidate` -> reports/registry.json."""
    from facekd.stages import register as stage

    stage.run(_params(ctx), model)


@cli.command()
@click.pass_context
def promote(ctx: click.Context) -> None:
    """Move alias `champion` to the candidate if it passed its checks and beats the champion."""
    from facekd.stages.promote import promote as gate

    gate(_params(ctx))  # logs its one-line decision


@cli.command()
@click.pass_context
def rollback(ctx: click.Context) -> None:
    """Return alias `champion` to the previous champion (recorded in the version tags)."""
    from facekd.stages.promote import rollback as undo

    undo(_params(ctx))  # logs its one-line summary


MODEL_OPTION = click.option(
    "--model", "source", default="champion", show_default=True,
    help="A registry alias of registry.model_name (MLflow), or a local .onnx file (e.g. exports/qud.onnx).")


@cli.command()
@click.argument("images", nargs=-1, required=True)
@MODEL_OPTION
@click.option("--out", default="embeddings.npy", show_default=True, type=click.Path(dir_okay=False),
              help="Where to write the (N, d) float32 array (.npy), one row per image in argument order.")
@click.pass_context
def embed(ctx: click.Context, images: tuple[str, ...], source: str, out: str) -> None:
    """Embed aligned 112x112 face crops (IMAGES) as L2-normalised vectors.

    Images must be aligned face crops (insightface's 5-point alignment), as in training.
    """
    from facekd.inference import embed_files

    loaded, emb = embed_files(_params(ctx), source, images, Path(out))
    click.echo(f"{out}: {emb.shape[0]} x {emb.shape[1]} unit embeddings from {loaded.label}")


@cli.command()
@click.argument("image_a")
@click.argument("image_b")
@MODEL_OPTION
@click.option("--threshold", type=float, default=None,
              help="Cosine threshold for 'same person' (default: the one the model's evaluation recorded "
                   "at registry.verify_far).")
@click.pass_context
def verify(ctx: click.Context, image_a: str, image_b: str, source: str, threshold: float | None) -> None:
    """Are two aligned 112x112 face crops the same person? Prints the cosine and the decision."""
    from facekd.inference import verify_files

    loaded, result = verify_files(_params(ctx), source, image_a, image_b, threshold)
    where = "given" if result.far is None else f"FAR {result.far:g}"
    verdict = "same person" if result.same else "different people"
    click.echo(f"cosine {result.score:.4f}, threshold {result.threshold:.4f} ({where}, {loaded.label}): {verdict}")


@cli.command("import-insightface")
@click.argument("backbone_pth", type=click.Path(exists=True, dir_okay=False))
@click.option("--arch", required=True, help="Backbone name, e.g. iresnet50 (see `facekd models`).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Model folder to write.")
@click.option("--embedding-size", default=512, show_default=True)
@click.option("--head-shard", "head_shards", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="PartialFC checkpoint_gpu_{rank}.pt files, in rank order (repeat the option).")
def import_insightface(backbone_pth: str, arch: str, out_dir: str, embedding_size: int, head_shards: tuple[str, ...]) -> None:
    """Import an insightface arcface_torch backbone.pth (and optional PartialFC head shards) as a model folder."""
    from facekd.models.insightface_import import import_insightface as do_import

    click.echo(json.dumps(do_import(backbone_pth, arch, out_dir, embedding_size=embedding_size,
                                    head_shards=head_shards), indent=2, default=str))


@cli.command()
@click.pass_context
def models(ctx: click.Context) -> None:
    """Parameters and GMACs at 112x112: the teacher and student as the parameters file configures
    them (when there is one), then every registered backbone at width 1.0, 512-d."""
    from facekd.models.registry import model_table

    params_path = Path(ctx.obj["params_path"])
    if params_path.is_file():
        params = _params(ctx)
        for role, backbone in (("teacher", params.teacher.backbone), ("student", params.distill.student)):
            click.echo(f"{role} ({params_path}: width {backbone.width}, {backbone.embedding_size}-d embedding)")
            click.echo(model_table([backbone.arch], embedding_size=backbone.embedding_size, width=backbone.width))
            click.echo()
    click.echo("every backbone (width 1.0, 512-d embedding)")
    click.echo(model_table())


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
    for path in (layout.LEADERBOARD_TEXT, layout.VALIDATION_MD):
        if path.is_file():
            click.echo(path.read_text())
            return
    raise FacekdError("no result yet: run `dvc repro` first (reports/leaderboard.txt is written by the report stage)")


@cli.command()
@click.argument("a")
@click.argument("b", default="workspace")
@click.option("--metric", default="gate", show_default=True, type=click.Choice(["gate", "lfw_acc"]),
              help="Headline number to compare: the gate metric (registry.gate_metric) or LFW-style accuracy.")
@click.option("--repo", default=".", show_default=True, type=click.Path(file_okay=False, exists=True),
              help="DVC repository in which revisions and experiment names are read.")
def compare(a: str, b: str, metric: str, repo: str) -> None:
    """Two runs' leaderboards side by side: each model's gate metric in A, in B, and B - A.

    A and B: a metrics/headline.json file, `workspace`, a git revision (HEAD, main, a tag) or an
    experiment name from `dvc exp show`. B defaults to the workspace, so `facekd compare HEAD`
    shows what the current run changed.
    """
    from facekd.evaluation.compare import load, table

    click.echo(table(load(a, Path(repo)), load(b, Path(repo)), metric), nl=False)


@cli.command()
@click.argument("revisions", nargs=-1)
@click.option("--out", default="dvc_plots", show_default=True, type=click.Path(file_okay=False),
              help="Folder for the page (DVC's -o).")
def plots(revisions: tuple[str, ...], out: str) -> None:
    """`dvc plots show` (or `dvc plots diff REVISIONS...`) as a page that works offline.

    One ROC per benchmark with every model on it, TAR against a log FAR (dvc.yaml's `plots:`
    section). The Vega libraries are written into the page, so it renders without a network.
    """
    from facekd.evaluation.dvcplots import render

    click.echo(f"{render(revisions, Path(out))}: open it in a browser (no network needed)")


def main() -> None:
    cli(prog_name="facekd")
