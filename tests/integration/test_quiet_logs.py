"""A user sees facekd's own lines, not the libraries' bookkeeping (issue 19.6).

Each test runs the real console script (or imports the real flow package) the way a user does and
counts what reaches the terminal.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.test_registry import STUDENTS, _student

pytestmark = pytest.mark.slow

FACEKD = str(Path(sys.executable).parent / "facekd")
TINY_DATA = {"data": {"synthetic": {"train_identities": 4, "images_per_identity": 3, "eval_identities": 4,
                                    "eval_images_per_identity": 4, "pairs_per_set": 20, "workers": 1}}}


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", **extra}
    env.pop("MLFLOW_TRACKING_URI", None)  # the workspace's own mlflow.db (params tracking.uri)
    return env


def _facekd(*args: str, cwd: Path) -> list[str]:
    proc = subprocess.run([FACEKD, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return (proc.stdout + proc.stderr).splitlines()


def test_validate_prints_a_few_lines(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY_DATA))
    _facekd("prepare", cwd=tmp_path)
    lines = _facekd("validate", cwd=tmp_path)
    assert any("data validation passed" in line for line in lines), lines
    assert len(lines) < 20, "\n".join(lines)
    assert not [line for line in lines if "great_expectations" in line], "\n".join(lines)


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workspace with one exported, evaluated student registered as `candidate`."""
    from facekd.config import load_params
    from facekd.mlops.model_registry import register_candidate

    root = tmp_path_factory.mktemp("quiet-registry")
    (root / "params.yaml").write_text(yaml.safe_dump({
        "registry": {"model_name": "quiet"}, "distill": {"methods": ["none"]},
        "evaluate": {"models": ["teacher", "none"]}, "export": {"models": ["none"], "latency_runs": 2}}))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(root)
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        _student(root, *STUDENTS[0])
        register_candidate(load_params(root / "params.yaml"), "none")
    return root


def test_promote_prints_its_decision_once(registered: Path) -> None:
    promoted = _facekd("promote", cwd=registered)
    assert [line for line in promoted if "champion" in line] == [promoted[-1]], "\n".join(promoted)
    assert "promoted to champion" in promoted[-1]
    kept = _facekd("promote", cwd=registered)  # the same candidate again: a decision not to move
    assert [line for line in kept if "champion" in line] == [kept[-1]], "\n".join(kept)
    assert "champion stays" in kept[-1]


def test_registered_model_loads_on_cpu_without_provider_warnings(registered: Path) -> None:
    code = "import mlflow.pyfunc; mlflow.pyfunc.load_model('models:/quiet@candidate'); print('loaded')"
    proc = subprocess.run([sys.executable, "-c", code], cwd=registered, capture_output=True, text=True, timeout=300,
                          env=_env(MLFLOW_TRACKING_URI=f"sqlite:///{registered}/mlflow.db"))
    assert proc.returncode == 0 and "loaded" in proc.stdout, proc.stderr[-3000:]
    assert "ExecutionProvider" not in proc.stderr and "[W:onnxruntime" not in proc.stderr, proc.stderr[-3000:]


def test_flow_package_turns_prefect_analytics_off() -> None:
    code = ("import pipelines.reproduce; from prefect.settings import get_current_settings; "
            "print(get_current_settings().server.analytics_enabled)")
    env = {k: v for k, v in _env().items() if k not in {"PREFECT_SERVER_ANALYTICS_ENABLED", "DO_NOT_TRACK"}}
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**env, "PYTHONPATH": f"{root}{os.pathsep}{root / 'src'}"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False"
