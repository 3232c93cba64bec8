"""Prefect's temporary local server, with its database made ready before a flow starts it.

Without ``PREFECT_API_URL`` a flow starts Prefect's temporary server, a subprocess whose first act
on a fresh ``PREFECT_HOME`` is to create and migrate its SQLite database: ~15 s on a 2-core machine,
against Prefect's 20 s default startup timeout, and done by every process that starts such a
server at the same time (two flows, a flow beside ``prefect server start``), each migrating the
same file. The losers of that race wait on SQLite's lock or fail with "database is locked", and a
server that times out is killed half-migrated.

:func:`prepare_database` does the migration once, in the flow's own process, before the server
starts, under an exclusive file lock beside the database (a second process waits for it, then
finds the database ready and does nothing). It also registers Prefect's block types, which each
server start would otherwise insert at the same moment. The temporary server's own start-up
migration and block registration then find nothing to do. A marker file beside the database records the Prefect version that migrated
it, so a later run skips all of this, and a Prefect upgrade migrates once more.
"""
from __future__ import annotations

import asyncio
import fcntl
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def local_database() -> Path | None:
    """The SQLite file the temporary server would use, or None (a real server, or not SQLite)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url:  # a real server: its database is its own business
        return None
    url = settings.server.database.connection_url.get_secret_value()
    if not url.startswith("sqlite") or ":memory:" in url or ":///" not in url:
        return None
    return Path(url.split(":///", 1)[1].split("?", 1)[0])


def _ready(database: Path, marker: Path, version: str) -> bool:
    return database.is_file() and marker.is_file() and marker.read_text().strip() == version


async def _migrate() -> None:
    """Create the tables, then register Prefect's block types and schemas: every server start does
    that too, and two servers starting together on a fresh database raced on the same inserts
    ("Failed to register block schema ..." with a traceback, seen beside a loaded CI run); with
    the rows already there, their start-up registration finds nothing to insert."""
    from prefect.server.database import provide_database_interface
    from prefect.server.models.block_registration import run_block_auto_registration

    database = provide_database_interface()
    await database.create_db()
    session = await database.session()
    async with session:
        await run_block_auto_registration(session=session)


def prepare_database() -> Path | None:
    """Create and migrate the temporary server's database now, once (see the module docstring).
    Returns the database file, or None when flows talk to a real server."""
    import prefect

    database = local_database()
    if database is None:
        return None
    marker = database.with_name(f"{database.name}.facekd-ready")
    version = prefect.__version__
    if _ready(database, marker, version):
        return database
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(f"{database.name}.facekd-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if not _ready(database, marker, version):  # another process may have done it while we waited
            log.info("preparing Prefect's local database %s (once per PREFECT_HOME)", database)
            asyncio.run(_migrate())
            marker.write_text(version + "\n")
    return database
