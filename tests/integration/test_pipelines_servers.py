"""End to end against REAL servers: `prefect server start` and `mlflow server` on local ports.

`python -m pipelines.serve` registers the cron deployment on the Prefect server and runs a
triggered `retrain`; the temp project's only stage logs an MLflow run, which must land on the
MLflow server (so MLFLOW_TRACKING_URI reaches the stage through Prefect and DVC). Then a direct
`python -m pipelines.retrain` against the same server finds nothing new ("no change").
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
CRON = "15 4 * * 2"
EXPERIMENT = "pipelines-e2e"
LOG_RUN = f'''\
"""The stage: log one MLflow run to wherever MLFLOW_TRACKING_URI points."""
import mlflow
mlflow.set_experiment("{EXPERIMENT}")
with mlflow.start_run() as run:
    mlflow.log_param("raw", open("raw.txt").read().strip())
    print("logged run", run.info.run_id, "to", mlflow.get_tracking_uri())
open("run_id.txt", "w").write(run.info.run_id)
'''
QUIET = {"DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
         "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> subprocess.Popen:
    """Start a server in its own process group (so it and its workers can be stopped together)."""
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL it if still alive after 15 s."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_for(check: Callable[[], object], what: str, log: Path, timeout: float = 180.0):
    """Poll ``check`` until it returns a truthy value; fail with the server log's tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if result := check():
                return result
        except (httpx.HTTPError, OSError, ValueError):
            pass
        time.sleep(1.0)
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:]) if log.exists() else ""
    pytest.fail(f"{what} not ready after {timeout:.0f} s; last log lines:\n{tail}")


def healthy(url: str) -> bool:
    return httpx.get(url, timeout=5).status_code == 200


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Prefect and MLflow servers on free ports; yields the environment that points at them."""
    tmp = tmp_path_factory.mktemp("servers")
    prefect_port, mlflow_port = free_port(), free_port()
    env = {**os.environ, **QUIET, "PREFECT_HOME": str(tmp / "prefect_home"),
           "PATH": os.pathsep.join([str(BIN), os.environ.get("PATH", "")])}
    env.pop("PREFECT_API_URL", None)
    procs = [
        start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
               "--port", str(prefect_port), "--no-ui"], tmp / "prefect.log", env, tmp),
        start([str(BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db",
               "--default-artifact-root", str(tmp / "artifacts"), "--host", "127.0.0.1",
               "--port", str(mlflow_port), "--workers", "1"], tmp / "mlflow.log", env, tmp),
    ]
    try:
        prefect_url = f"http://127.0.0.1:{prefect_port}/api"
        mlflow_url = f"http://127.0.0.1:{mlflow_port}"
        wait_for(lambda: healthy(f"{prefect_url}/health"), "prefect server", tmp / "prefect.log")
        wait_for(lambda: healthy(f"{mlflow_url}/health"), "mlflow server", tmp / "mlflow.log")
        yield {**env, "PREFECT_API_URL": prefect_url, "MLFLOW_TRACKING_URI": mlflow_url,
               "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    finally:
        for proc in procs:
            stop(proc)


def make_project(root: Path) -> Path:
    """A git+dvc repo whose single `prepare` stage logs an MLflow run."""
    root.mkdir(parents=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    (root / "log_run.py").write_text(LOG_RUN)
    (root / "raw.txt").write_text("raw-v1\n")
    (root / "params.yaml").write_text(yaml.safe_dump(
        {"data": {"n": 1}, "schedule": {"cron": CRON, "retries": 0, "retry_delay_seconds": 0}}))
    stage = {"cmd": "python log_run.py", "deps": ["log_run.py", "raw.txt"], "params": ["data"],
             "outs": [{"run_id.txt": {"cache": False}}]}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": stage}}))
    return root


@contextmanager
def prefect_client(api_url: str):
    """A sync Prefect client for the real server (settings scoped to the with-block)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), \
            get_client(sync_client=True) as client:
        yield client


def served_deployment(client):
    """The deployment `python -m pipelines.serve` registers, or None while it is not there yet."""
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name("facekd-retrain/scheduled")
    except ObjectNotFound:
        return None


def test_served_retrain_runs_on_the_real_servers(servers, tmp_path):
    from mlflow.tracking import MlflowClient

    repo = make_project(tmp_path / "repo")
    log = tmp_path / "serve.log"
    serve = start([sys.executable, "-m", "pipelines.serve", "--repo", str(repo), "--no-promote"],
                  log, servers, ROOT)
    try:
        with prefect_client(servers["PREFECT_API_URL"]) as client:
            deployment = wait_for(lambda: served_deployment(client), "served deployment", log)
            assert [s.schedule.cron for s in deployment.schedules] == [CRON]
            assert deployment.global_concurrency_limit.limit == 1
            run = client.create_flow_run_from_deployment(deployment.id)
            final = wait_for(lambda: (state := client.read_flow_run(run.id).state).is_final()
                             and state, "served flow run", log)
        assert final.is_completed(), f"{final.type}: {final.message}\n{log.read_text()[-3000:]}"
        assert final.message.startswith("retrained")
    finally:
        stop(serve)

    run_id = (repo / "run_id.txt").read_text()
    mlflow_run = MlflowClient(servers["MLFLOW_TRACKING_URI"]).get_run(run_id)
    experiment = MlflowClient(servers["MLFLOW_TRACKING_URI"]).get_experiment(
        mlflow_run.info.experiment_id)
    assert experiment.name == EXPERIMENT
    assert mlflow_run.data.params["raw"] == "raw-v1"

    # A direct run of the flow against the same server: the data is as locked -> "no change".
    direct = subprocess.run([sys.executable, "-m", "pipelines.retrain", "--repo", str(repo),
                             "--no-promote"], cwd=ROOT, env=servers, capture_output=True,
                            text=True, timeout=300)
    assert direct.returncode == 0, direct.stdout + direct.stderr
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with prefect_client(servers["PREFECT_API_URL"]) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["facekd-retrain"])),
                                     sort=FlowRunSort.START_TIME_DESC)
    assert [r.state.message for r in runs if r.state.is_completed()][:2] == [
        "no change", final.message]
