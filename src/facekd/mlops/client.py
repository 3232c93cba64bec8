"""Where facekd's MLflow lives and how it is reached: one URI rule, one client that fails fast.

The URI is ``MLFLOW_TRACKING_URI`` when set, else ``tracking.uri`` (default ``sqlite:///mlflow.db``,
relative to the workspace). Every MLflow call goes through an explicit ``MlflowClient``: no global
tracking URI, no active run.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

from facekd.config import Params
from facekd.errors import RegistryError

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

# An unreachable server must fail in seconds, not after MLflow's default 7 retries with backoff.
FAST_FAIL_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def resolve_uri(configured: str) -> str:
    """The tracking and registry URI: ``MLFLOW_TRACKING_URI`` when set, else the configured one."""
    return os.environ.get("MLFLOW_TRACKING_URI") or configured


def tracking_uri(params: Params) -> str:
    return resolve_uri(params.tracking.uri)


@contextlib.contextmanager
def _fast_fail_env() -> Iterator[None]:
    """Set the fast-fail HTTP settings for the duration (a user's own values win)."""
    added = [key for key in FAST_FAIL_ENV if key not in os.environ]
    os.environ.update({key: FAST_FAIL_ENV[key] for key in added})
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


@contextlib.contextmanager
def open_registry(params: Params) -> Iterator[MlflowClient]:
    """A client on the tracking/registry URI, checked reachable; MLflow errors become RegistryError."""
    uri = tracking_uri(params)
    with _fast_fail_env():
        from mlflow.exceptions import MlflowException
        from mlflow.tracking import MlflowClient

        try:
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_registered_models(max_results=1)
        except Exception as err:  # noqa: BLE001 - connection, SQL and HTTP failures all mean "unreachable"
            raise RegistryError(
                f"cannot reach MLflow at {uri} ({_short(err)}); start the tracking server or fix "
                "MLFLOW_TRACKING_URI / tracking.uri in params.yaml. The champion was not changed."
            ) from None
        try:
            yield client
        except MlflowException as err:
            raise RegistryError(f"MLflow at {uri}: {_short(err)}. The champion was not changed.") from None


def _short(err: BaseException, limit: int = 400) -> str:
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    first = text.strip().splitlines()[0] if text.strip() else text
    return first[:limit]
