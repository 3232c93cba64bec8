"""One home for output paths: what dvc.yaml declares is what facekd.layout says the stages write.

The stages' outs, with every ``foreach`` expanded by DVC itself, must each be a path the layout
produces for some model (and the layout's single files must all be declared), so a path renamed
on one side only fails here instead of as a stage whose output DVC never sees.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
from dvc.repo import Repo

from facekd import layout
from facekd.config import load_params
from tests.worktree import ROOT

SRC = ROOT / "src" / "facekd"


def _layout_paths(models: set[str]) -> set[Path]:
    """Every path the layout gives, for these models (and each one's INT8 copy) and the teachers."""
    teachers = {layout.TEACHER, layout.student_aware_teacher("shkd")}
    names = models | teachers
    per_model = [layout.model_dir, layout.checkpoint_dir, layout.train_metrics_file, layout.eval_metrics_file,
                 layout.scores_file, layout.onnx_path, layout.int8_path, layout.export_report,
                 layout.roc_points_file, layout.roc_image]
    paths = {f(n) for f in per_model for n in names | {layout.int8_name(m) for m in models}}
    paths |= {layout.features_dir(t) for t in teachers}
    return paths | {value for value in vars(layout).values() if isinstance(value, Path)}


def _declared_outs() -> set[Path]:
    with Repo(str(ROOT)) as repo:
        return {Path(out.def_path) for stage in repo.index.stages for out in stage.outs}


@pytest.mark.slow  # DVC loads and expands the pipeline: ~1 s
def test_every_declared_output_is_a_layout_path_and_every_report_is_declared():
    params = load_params(ROOT / "params.yaml")
    inputs = {Path(params.data.prepared_dir), Path(params.data.eval_dir)}  # params, not layout
    declared = _declared_outs() - inputs
    unknown = sorted(str(p) for p in declared - _layout_paths(set(params.evaluate.models)))
    assert not unknown, f"dvc.yaml declares outputs facekd.layout does not name: {unknown}"
    files = {v for k, v in vars(layout).items() if isinstance(v, Path) and v.suffix and k.isupper()}
    undeclared = sorted(str(p) for p in files - declared)
    assert not undeclared, f"facekd.layout names files no dvc.yaml stage declares: {undeclared}"


def _path_literals(tree: ast.AST) -> list[str]:
    roots = ("models/", "metrics/", "reports/", "exports", "features/", "checkpoints", "plots/")
    return [node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value.startswith(roots) and "\n" not in node.value and " " not in node.value]


def test_no_module_but_the_layout_spells_an_output_path():
    spelled = {str(path.relative_to(ROOT)): found for path in sorted(SRC.rglob("*.py"))
               if path != SRC / "layout.py" and (found := _path_literals(ast.parse(path.read_text())))}
    assert not spelled, f"output paths outside facekd/layout.py: {spelled}"


def test_no_library_module_imports_a_stage_and_no_stage_imports_another():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        here = ".".join(path.relative_to(SRC.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text())):
            target = node.module if isinstance(node, ast.ImportFrom) else None
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [target or ""]
            for name in names:
                crosses = name.startswith("facekd.stages.") and name != here
                if crosses and not here.startswith("facekd.cli"):
                    offenders.append(f"{here} imports {name}")
    assert not offenders, offenders
