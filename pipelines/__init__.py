"""Prefect orchestration for facekd: *when* the pipeline runs, never *what* is stale.

DVC decides what is stale (hashes of deps, params, outs) and Prefect decides when to run,
how often to retry and what to do after. Every flow here talks to the project only through
subprocesses (``dvc ...`` and the ``facekd`` console script of the same environment), so this
package never imports torch and does no task caching of its own.

Flows (each module also runs as ``python -m pipelines.<name> --help``):

- :func:`pipelines.reproduce.reproduce` - one task per DVC stage in DAG order.
- :func:`pipelines.retrain.retrain` - new training data -> reproduce -> promote.
- :func:`pipelines.promote.promote` - the champion/challenger gate (``facekd promote``).
- :mod:`pipelines.serve` - serves ``retrain`` on the cron schedule from ``params.yaml``.
"""

import os

# Prefect's server phones home on start-up (and its client reports usage); offline that logs
# ERROR tracebacks that are not errors of the flow. Set before any flow module imports Prefect
# (they all import this package first); a user's own setting wins.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
# The temporary server's start-up (its database is migrated beforehand, pipelines.localserver) can
# still take more than Prefect's 20 s default on a busy 2-core machine.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
