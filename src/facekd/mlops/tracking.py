"""MLflow tracking for training stages: one run per stage run, reattached on resume.

Only rank 0 tracks (other ranks get a :class:`NullTracker`). No autolog: the loop logs exactly the
params (flat config), metrics per step, tags (git commit, DVC stage, facekd version) and
artifacts (the resolved config as ``config.json``, the final model folder) it means to.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else ``tracking.uri`` from params
(default ``sqlite:///mlflow.db``, relative to the working directory). Everything goes through an
explicit ``MlflowClient`` and run id, so nothing depends on MLflow's global "active run".
"""
from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import facekd
from facekd.mlops.client import resolve_uri

if TYPE_CHECKING:
    from facekd.config import TrackingParams

log = logging.getLogger(__name__)

STATUSES = ("FINISHED", "FAILED", "KILLED")
MAX_PARAM_CHARS = 6000  # MLflow rejects longer param values


def git_commit(cwd: str | Path | None = None) -> str | None:
    """HEAD's commit of the repository around ``cwd``, or None outside git / before a first commit."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# MLflow 3 opens an experiment in the view its kind names; untagged ones can open as GenAI "Traces".
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
RUNNING = "RUNNING"


def experiment_id(client: Any, name: str) -> str:
    """The id of experiment ``name``, created (and tagged as model training) when missing."""
    from mlflow.exceptions import MlflowException

    found = client.get_experiment_by_name(name)
    if found is None:
        try:
            return client.create_experiment(name, tags=EXPERIMENT_KIND)
        except MlflowException:  # another process created it between the two calls
            found = client.get_experiment_by_name(name)
    if found.tags.get("mlflow.experimentKind") is None:  # made by an older facekd
        client.set_experiment_tag(found.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
    return found.experiment_id


def reconcile_crashed_runs(client: Any, experiment: str) -> list[str]:
    """Mark FAILED every RUNNING run of this host whose process is gone; returns their ids.

    A segfault or the OOM killer ends a stage without its ``finally``, leaving the run RUNNING
    forever; the next start of any stage closes it, naming the process that owned it.
    """
    host = socket.gethostname()
    runs = client.search_runs([experiment], filter_string=f"attributes.status = '{RUNNING}'", max_results=1000)
    closed = []
    for run in runs:
        tags = run.data.tags
        pid = tags.get("facekd.pid", "")
        if tags.get("facekd.host") != host or not pid.isdigit() or _alive(int(pid)):
            continue
        client.set_tag(run.info.run_id, "facekd.reconciled",
                       f"process {pid} on {host} ended without closing this run (crash or kill)")
        client.set_terminated(run.info.run_id, status="FAILED")
        closed.append(run.info.run_id)
    if closed:
        log.warning("marked %d MLflow run(s) of crashed processes FAILED: %s", len(closed), ", ".join(closed))
    return closed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def default_tags(stage: str | None = None) -> dict[str, str]:
    """Provenance tags: facekd version, git commit, DVC stage (``DVC_STAGE`` is set by ``dvc repro``),
    and the host and process that own the run (to close it if that process dies)."""
    tags = {"facekd.version": facekd.__version__, "facekd.host": socket.gethostname(), "facekd.pid": str(os.getpid())}
    commit = git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    stage = stage or os.environ.get("DVC_STAGE")
    if stage:
        tags["dvc.stage"] = stage
    return tags


def metric_name(name: str) -> str:
    """MLflow-safe metric name: ``ijb.tar@far=1e-4`` -> ``ijb.tar_at_far_1e-4``."""
    return re.sub(r"[^\w\-. :/]", "_", name.replace("@", "_at_"))


class Tracker:
    """One MLflow run: start (or reattach), log, end with a status."""

    def __init__(self, uri: str, experiment: str, *, stage: str | None = None,
                 system_metrics: bool = False) -> None:
        self.uri = resolve_uri(uri)
        self.experiment = experiment
        self.stage = stage
        self.system_metrics = system_metrics
        self.run_id: str | None = None
        self._client: Any = None
        self._monitor: Any = None

    @classmethod
    def from_params(cls, params: "TrackingParams", *, stage: str | None = None,
                    system_metrics: bool = False) -> "Tracker":
        return cls(params.uri, params.experiment, stage=stage, system_metrics=system_metrics)

    def start(self, run_name: str, params_flat: dict[str, Any], tags: dict[str, str] | None,
              config_dict: dict[str, Any], resume_run_id: str | None = None) -> str:
        """Create a run (or reattach ``resume_run_id``), log params, tags and ``config.json``."""
        from mlflow.entities import Param
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        t0 = time.perf_counter()
        self._client = MlflowClient(tracking_uri=self.uri)
        experiment = experiment_id(self._client, self.experiment)
        reconcile_crashed_runs(self._client, experiment)
        all_tags = {**default_tags(self.stage), **(tags or {})}
        run = None
        if resume_run_id:
            try:
                run = self._client.get_run(resume_run_id)
            except MlflowException:
                log.warning("MLflow run %s of the checkpoint is not in %s; starting a new run",
                            resume_run_id, self.uri)
        if run is not None:
            self.run_id = run.info.run_id
            self._client.update_run(self.run_id, status="RUNNING")
            self.set_tags({**all_tags, "facekd.resumed": "true"})
        else:
            run = self._client.create_run(experiment, tags=all_tags, run_name=run_name)
            self.run_id = run.info.run_id
            params = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in sorted(params_flat.items())]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self._client.log_batch(self.run_id, params=params[i:i + 100])
            self._log_config(config_dict)
        self._start_system_metrics(resumed=resume_run_id is not None and run is not None)
        log.info("MLflow run %s (%s) at %s ready in %.1f s", self.run_id, run_name, self.uri,
                 time.perf_counter() - t0)
        return self.run_id

    def _log_config(self, config_dict: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "config.json"
            path.write_text(json.dumps(config_dict, indent=2, sort_keys=True, default=str) + "\n")
            self._client.log_artifact(self.run_id, str(path))

    def _start_system_metrics(self, resumed: bool) -> None:
        if not self.system_metrics:
            return
        try:
            import psutil  # noqa: F401  (the monitor needs it)
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
        except ImportError:
            log.info("psutil is not installed: no system metrics")
            return
        self._monitor = SystemMetricsMonitor(self.run_id, resume_logging=resumed, tracking_uri=self.uri)
        self._monitor.start()

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Log ``{name: value}`` at ``step`` in one batch."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(metric_name(k), float(v), now, int(step)) for k, v in metrics.items()]
        self._client.log_batch(self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a file, or every file of a folder (e.g. a model folder)."""
        path = Path(path)
        if path.is_dir():
            self._client.log_artifacts(self.run_id, str(path), artifact_path=artifact_path or path.name)
        else:
            self._client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self._client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def end(self, status: str = "FINISHED") -> None:
        """Terminate the run as FINISHED, FAILED or KILLED (idempotent)."""
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        if self.run_id is not None and self._client is not None:
            self._client.set_terminated(self.run_id, status=status)


class NullTracker:
    """Same API as :class:`Tracker`, records nothing (tests, ranks other than 0)."""

    run_id: str | None = None

    def start(self, run_name: str, params_flat: dict[str, Any], tags: dict[str, str] | None,
              config_dict: dict[str, Any], resume_run_id: str | None = None) -> str | None:
        return resume_run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Discard."""

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Discard."""

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Discard."""

    def end(self, status: str = "FINISHED") -> None:
        """Nothing to end."""
