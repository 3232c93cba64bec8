"""Every facekd module a DVC stage's command runs is among that stage's deps (issue 15, item 4).

Otherwise an edit to, say, ``models/mobilefacenet.py`` makes no student stale: a staleness hole.
The modules a command runs are found statically: the imports inside its click function in
``cli.py``, then every ``facekd`` import anywhere in those modules (function-level ones too, so
the set is a superset of what one run imports), transitively, plus each imported package's
``__init__``. The stages come from DVC itself (foreach and ``${...}`` resolved).
"""
from __future__ import annotations

import ast
import shlex
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
# cli.py is analysed per command (the function body of each subcommand), not as a whole: its
# other commands' imports are not what a stage runs.
CLI = SRC / "facekd" / "cli.py"


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(nodes: list[ast.AST], package: str) -> set[str]:
    names: set[str] = set()
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Import):
                names |= {alias.name for alias in sub.names}
            elif isinstance(sub, ast.ImportFrom):
                base = sub.module or ""
                if sub.level:  # relative import: resolve against this module's package
                    parts = package.split(".")[: len(package.split(".")) - sub.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                names.add(base)
                names |= {f"{base}.{alias.name}" for alias in sub.names}  # `from pkg import module`
    return {n for n in names if n.split(".")[0] == "facekd" and _module_file(n)}


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


# Imports that only build params.yaml's schema: facekd.config loads the method registry to type the
# distill.<method> sections, so that every stage refuses a bad method section before it computes.
# No stage output depends on another method's code through it (a student stage lists
# src/facekd/distill itself); as deps they would make an edit to one loss retrain the teacher.
SCHEMA_ONLY = {"facekd.config": "_registry"}


def _without_schema_only(tree: ast.Module, name: str) -> list[ast.AST]:
    skip = SCHEMA_ONLY.get(name)
    return [node for node in tree.body if not (isinstance(node, ast.FunctionDef) and node.name == skip)]


@cache
def _imports_of(name: str) -> frozenset[str]:
    path = _module_file(name)
    assert path is not None
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    return frozenset(_imported_names(_without_schema_only(ast.parse(path.read_text()), name), package))


def _closure(start: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = [p for name in start for p in _with_parents(name)]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo += [p for dep in _imports_of(name) for p in _with_parents(dep)]
    return seen


def _command_function(subcommand: str) -> ast.FunctionDef:
    tree = ast.parse(CLI.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(_command_name(d, node.name) == subcommand
                                                     for d in node.decorator_list):
            return node
    raise AssertionError(f"cli.py has no command {subcommand!r}")


def _command_name(decorator: ast.expr, function: str) -> str | None:
    """``@cli.command()`` -> click's default name (underscores as dashes); ``command("x")`` -> x."""
    if not (isinstance(decorator, ast.Call) and isinstance(decorator.func, ast.Attribute)
            and decorator.func.attr == "command"):
        return None
    if decorator.args and isinstance(decorator.args[0], ast.Constant):
        return decorator.args[0].value
    return function.replace("_", "-")


def command_modules(cmd: str) -> set[Path]:
    """Source files of every facekd module the stage command ``cmd`` can run (cli.py excluded)."""
    words = shlex.split(cmd)
    assert words[0] == "facekd", f"stage command does not run facekd: {cmd}"
    start = _imported_names([_command_function(words[1])], "facekd")
    start |= _imported_names([n for n in ast.parse(CLI.read_text()).body if isinstance(n, ast.ImportFrom)], "facekd")
    return {_module_file(name) for name in _closure(start) if _module_file(name) != CLI}


def _stages() -> list[tuple[str, str, list[str]]]:
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        return [(stage.addressing, stage.cmd, [str(d.def_path) for d in stage.deps]) for stage in repo.index.stages]


STAGES = _stages()


@pytest.mark.parametrize(("stage", "cmd", "deps"), STAGES, ids=[s[0] for s in STAGES])
def test_stage_deps_cover_every_module_its_command_runs(stage, cmd, deps):
    covered = [ROOT / d for d in deps]
    missing = sorted(str(path.relative_to(ROOT)) for path in command_modules(cmd)
                     if not any(path == dep or dep in path.parents for dep in covered))
    assert not missing, f"dvc.yaml stage {stage} ({cmd}) runs these modules but does not list them as deps: {missing}"
    gone = [d for d in deps if d.startswith(("src/", "pipelines/")) and not (ROOT / d).exists()]
    assert not gone, f"dvc.yaml stage {stage} depends on source paths that do not exist (DVC stops on them): {gone}"


def test_the_analysis_follows_lazy_and_relative_imports():
    modules = {str(p.relative_to(SRC)) for p in command_modules("facekd distill none")}
    assert "facekd/stages/distill.py" in modules  # imported inside the click function
    assert "facekd/models/mobilefacenet.py" in modules  # imported inside a registry builder
    assert "facekd/distill/__init__.py" in modules and "facekd/__init__.py" in modules
    assert "facekd/cli.py" not in modules


def test_the_schema_only_exemption_is_one_import_of_the_method_registry():
    tree = ast.parse((SRC / "facekd" / "config.py").read_text())
    (function,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == SCHEMA_ONLY["facekd.config"]]
    assert _imported_names([function], "facekd") == {"facekd.distill", "facekd.distill.registry"}
