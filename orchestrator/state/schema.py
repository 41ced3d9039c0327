"""Bringing a ledger written by an older gpurun up to date, on SQLite or PostgreSQL.

The tables are `state.tables` (one definition for both engines); the steps between versions are
Alembic revisions in `state/migrations/versions/`, named by the schema number they reach. A SQLite
ledger written before Alembic (PRAGMA user_version 1..4: 2 added runs.end_reason and
runs.job_exit_code; 3 the provider's billed figure; 4 runs.ending, the typed `Ending` of end_reason)
has its runs columns brought to schema 4 here, the way gpurun always did; the baseline revision
(0004) then creates only what such a ledger lacks, and it is upgraded like any other. SQLite's user_version keeps mirroring the schema number, so an older gpurun
refuses a ledger it cannot read instead of misreading it.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Connection, inspect, text

from orchestrator.state.endings import Ending
from orchestrator.state.values import LedgerError

SCHEMA_VERSION = 5
HEAD_REVISION = f"{SCHEMA_VERSION:04d}"  # the newest file in migrations/versions/
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Two processes opening a new shared ledger at once: one migrates, the other waits (PostgreSQL).
_PG_MIGRATION_LOCK = 0x67707275  # "gpru"

# Columns the pre-Alembic SQLite ledgers gained after schema 1 (NULL for old runs).
_LEGACY_RUN_COLUMNS = (("end_reason", "TEXT"), ("job_exit_code", "INTEGER"), ("billed_usd", "REAL"),
                       ("billed_source", "TEXT"), ("billed_complete", "INTEGER"), ("reconciled_at", "REAL"),
                       ("ending", "TEXT"))


def migrate(conn: Connection, where: str) -> None:
    """Create what is missing and bring the ledger to HEAD_REVISION (inside the caller's transaction)."""
    sqlite = conn.dialect.name == "sqlite"
    if sqlite:
        version = conn.exec_driver_sql("PRAGMA user_version").scalar() or 0
        if version > SCHEMA_VERSION:
            raise LedgerError(f"{where} was written by a newer gpurun (schema {version}): upgrade gpurun")
    else:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
    current = current_revision(conn)
    if current == HEAD_REVISION:
        return
    if current is not None and (not current.isdigit() or int(current) > SCHEMA_VERSION):
        raise LedgerError(f"{where} was written by a newer gpurun (schema {current}): upgrade gpurun")
    # Imported only here: an up-to-date ledger (every open but the first) never pays for Alembic.
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = conn
    if current is None and inspect(conn).has_table("runs"):
        if not sqlite:
            raise LedgerError(f"{where} has gpurun's tables but no schema revision: it was not made by gpurun")
        _legacy_sqlite_to_4(conn)  # a ledger from before Alembic: the baseline adds its missing tables
    command.upgrade(config, "head")
    if sqlite:
        conn.exec_driver_sql(f"PRAGMA user_version = {SCHEMA_VERSION}")


def current_revision(conn: Connection) -> str | None:
    """The ledger's Alembic revision, None for a ledger Alembic never touched (new, or pre-Alembic)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    return conn.execute(text("SELECT version_num FROM alembic_version")).scalar()


def _legacy_sqlite_to_4(conn: Connection) -> None:
    """A pre-Alembic SQLite ledger (schema 1..4) to schema 4, as gpurun did before schema 5."""
    version = conn.exec_driver_sql("PRAGMA user_version").scalar() or 0
    have = {row[1] for row in conn.exec_driver_sql("PRAGMA table_info(runs)").fetchall()}
    for name, kind in _LEGACY_RUN_COLUMNS:
        if name not in have:
            conn.exec_driver_sql(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
    if version < 4:
        _fill_endings(conn)


def _fill_endings(conn: Connection) -> None:
    """Schema 3 -> 4, once: runs that ended before runs.ending existed get it from end_reason's
    leading words (the last place a reason's text is read back as an Ending)."""
    rows = conn.exec_driver_sql(
        "SELECT run_id, end_reason FROM runs WHERE ending IS NULL AND end_reason IS NOT NULL").fetchall()
    for run_id, end_reason in rows:
        ending = _ending_of_reason(end_reason)
        if ending is not None:
            conn.exec_driver_sql("UPDATE runs SET ending = ? WHERE run_id = ?", (ending.value, run_id))


def _ending_of_reason(end_reason: str | None) -> Ending | None:
    """The Ending a schema-3 end_reason starts with: the one-time migration to runs.ending reads the
    words those ledgers kept; nothing else reads an ending out of a reason."""
    for ending in Ending:
        if end_reason and end_reason.startswith(ending.value):
            return ending
    return None
