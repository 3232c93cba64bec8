"""The orchestration layer's rules (no torch, no task caching, runnable modules) and its helpers."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from facekd.errors import ConfigError
from pipelines import dvcstages

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted((ROOT / "pipelines").glob("*.py"))
FLOW_MODULES = ("reproduce", "retrain", "promote", "serve")
# facekd modules light enough for the orchestration layer (pydantic/yaml only, no torch).
ALLOWED_FACEKD = {"facekd.config", "facekd.errors"}
DOT = '''strict digraph {
"report";
"c";
"m@x";
"a";
"m@y";
"a" -> "m@x";
"a" -> "m@y";
"m@x" -> "c";
"m@y" -> "c";
"c" -> "report";
}
'''


def imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_pipelines_package_has_its_modules():
    assert {p.stem for p in MODULES} >= {"__init__", "dvcstages", *FLOW_MODULES}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_torch_and_only_light_facekd_imports(path):
    names = imported_modules(path)
    assert not {n for n in names if n == "torch" or n.startswith("torch.")}
    assert {n for n in names if n == "facekd" or n.startswith("facekd.")} <= ALLOWED_FACEKD


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_every_task_opts_out_of_prefect_caching(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            name = deco.func if isinstance(deco, ast.Call) else deco
            if isinstance(name, ast.Name) and name.id == "task":
                assert isinstance(deco, ast.Call), f"{node.name}: bare @task caches by default"
                policy = {k.arg: k.value for k in deco.keywords}.get("cache_policy")
                assert isinstance(policy, ast.Name) and policy.id == "NO_CACHE", node.name


@pytest.mark.parametrize("module", FLOW_MODULES)
def test_flow_modules_run_as_scripts(module):
    source = (ROOT / "pipelines" / f"{module}.py").read_text()
    assert 'if __name__ == "__main__":' in source and "argparse" in source


def test_allowed_facekd_modules_do_not_pull_in_torch():
    code = ("import sys, pipelines.dvcstages, " + ", ".join(sorted(ALLOWED_FACEKD))
            + "; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                   env={"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin"})


@pytest.mark.slow
def test_importing_every_flow_module_leaves_torch_unloaded(tmp_path):
    code = ("import sys; " + "; ".join(f"import pipelines.{m}" for m in FLOW_MODULES)
            + "; assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True,
                   env={"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "PATH": "/usr/bin:/bin",
                        "HOME": str(tmp_path), "PREFECT_HOME": str(tmp_path / "prefect")})


def test_parse_dot_reads_nodes_and_edges():
    nodes, edges = dvcstages.parse_dot(DOT)
    assert nodes == ["report", "c", "m@x", "a", "m@y"]
    assert ("a", "m@x") in edges and ("c", "report") in edges and len(edges) == 5


def test_topological_order_follows_edges_then_printed_order():
    nodes, edges = dvcstages.parse_dot(DOT)
    assert dvcstages.topological_order(nodes, edges) == ["a", "m@x", "m@y", "c", "report"]


def test_topological_order_rejects_a_cycle():
    with pytest.raises(dvcstages.CommandFailed, match="cycle"):
        dvcstages.topological_order(["a", "b"], [("a", "b"), ("b", "a")])


def test_select_stages_keeps_dag_order_and_expands_foreach():
    order = ["a", "m@x", "m@y", "c", "report"]
    assert dvcstages.select_stages(order, None) == order
    assert dvcstages.select_stages(order, ["report", "m"]) == ["m@x", "m@y", "report"]
    assert dvcstages.select_stages(order, ["m@y"]) == ["m@y"]
    with pytest.raises(ConfigError, match="nosuch.*a, m@x, m@y, c, report"):
        dvcstages.select_stages(order, ["nosuch"])


def test_read_schedule_defaults_values_and_errors(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: 0\n")
    assert dvcstages.read_schedule(tmp_path).retries == 2
    (tmp_path / "params.yaml").write_text("schedule: {cron: '1 2 * * *', retries: 5}\n")
    schedule = dvcstages.read_schedule(tmp_path)
    assert (schedule.cron, schedule.retries) == ("1 2 * * *", 5)
    (tmp_path / "params.yaml").write_text("schedule: {retries: -1}\n")
    with pytest.raises(ConfigError, match="schedule.retries"):
        dvcstages.read_schedule(tmp_path)
    with pytest.raises(ConfigError, match="cannot read"):
        dvcstages.read_schedule(tmp_path / "missing")


def test_run_streaming_hands_over_every_line_and_keeps_the_tail(tmp_path):
    seen: list[str] = []
    code = "import sys\nfor i in range(40): print(f'line {i}')\nprint('oops', file=sys.stderr)"
    result = dvcstages.run_streaming([sys.executable, "-c", code], tmp_path, seen.append)
    assert result.returncode == 0
    assert seen[:2] == ["line 0", "line 1"] and "oops" in seen and len(seen) == 41
    assert len(result.tail) == dvcstages.TAIL_LINES and result.tail[-1] == seen[-1]


def test_run_streaming_child_sees_this_venv_first_on_path(tmp_path):
    seen: list[str] = []
    code = "import os; print(os.environ['PATH'].split(os.pathsep)[0])"
    dvcstages.run_streaming([sys.executable, "-c", code], tmp_path, seen.append)
    assert seen == [str(Path(sys.executable).parent)]


def test_run_checked_failure_names_the_step_and_shows_its_last_lines(tmp_path):
    code = "print('context line'); print('the real reason'); raise SystemExit(4)"
    with pytest.raises(dvcstages.CommandFailed) as err:
        dvcstages.run_checked([sys.executable, "-c", code], tmp_path, lambda _: None,
                              what="DVC stage 'x'")
    message = str(err.value)
    assert "DVC stage 'x' failed with exit code 4" in message
    assert message.endswith("context line\nthe real reason")
