"""``facekd promote`` / ``facekd rollback``: move the ``champion`` alias (not DVC stages: the
alias lives in the MLflow registry, outside the workspace).

Both return the registry's answer as a dict and a one-line summary for the CLI; every problem is a
:class:`~facekd.errors.RegistryError` and leaves the champion as it was.
"""
from __future__ import annotations

import logging
from typing import Any

from facekd.config import Params

log = logging.getLogger(__name__)


def promote(params: Params) -> dict[str, Any]:
    """Gate the current candidate against the champion; see :func:`facekd.mlops.model_registry.promote`."""
    from facekd.mlops.model_registry import promote as registry_promote

    result = registry_promote(params)
    result["summary"] = (
        f"{result['registered_model']}: version {result['candidate']} promoted to champion ({result['reason']})"
        if result["promoted"]
        else f"{result['registered_model']}: champion stays {result['champion'] or 'unset'} ({result['reason']})"
    )
    log.info(result["summary"])
    return result


def rollback(params: Params) -> dict[str, Any]:
    """Give ``champion`` back to the version it replaced; see :func:`facekd.mlops.model_registry.rollback`."""
    from facekd.mlops.model_registry import rollback as registry_rollback

    result = registry_rollback(params)
    result["summary"] = (
        f"{result['registered_model']}: champion rolled back from version {result['champion_before']} "
        f"to version {result['champion']}"
    )
    log.info(result["summary"])
    return result
