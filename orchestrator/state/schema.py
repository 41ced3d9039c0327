"""The ledger's tables, and bringing a ledger written by an older gpurun up to date.

Versions (PRAGMA user_version): 2 added runs.end_reason and runs.job_exit_code; 3 the provider's
billed figure (reconciliation); 4 runs.ending, the typed `Ending` of end_reason.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from orchestrator.state.endings import Ending
from orchestrator.state.values import LedgerError

SCHEMA_VERSION = 4

TABLES = """
CREATE TABLE IF NOT EXISTS runs (
    run_id            TEXT PRIMARY KEY,
    provider          TEXT NOT NULL,
    phase             TEXT NOT NULL,
    created_at        REAL NOT NULL,
    updated_at        REAL NOT NULL,
    max_usd           REAL NOT NULL,
    usd_per_hour      REAL,
    clock_start_epoch REAL,
    deadline_epoch    REAL,
    stop_at_epoch     REAL,
    cost_usd          REAL,
    settled           INTEGER NOT NULL DEFAULT 0,
    run_dir           TEXT NOT NULL DEFAULT '',
    plan              TEXT NOT NULL DEFAULT '{}',
    error             TEXT,
    controller_pid    INTEGER,
    end_reason        TEXT,
    job_exit_code     INTEGER,
    billed_usd        REAL,
    billed_source     TEXT,
    billed_complete   INTEGER,
    reconciled_at     REAL,
    ending            TEXT
);
CREATE INDEX IF NOT EXISTS runs_created ON runs(created_at);

CREATE TABLE IF NOT EXISTS events (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id   TEXT NOT NULL,
    time     REAL NOT NULL,
    phase    TEXT NOT NULL,          -- a phase name, or the kind of a non-phase event
    is_phase INTEGER NOT NULL,
    payload  TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_run ON events(run_id, id);

CREATE TABLE IF NOT EXISTS instances (
    instance_id   TEXT PRIMARY KEY,
    run_id        TEXT NOT NULL,
    provider      TEXT NOT NULL,
    state         TEXT NOT NULL,
    info          TEXT NOT NULL DEFAULT '{}',
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL,
    host_key_type TEXT,
    host_key      TEXT
);
CREATE INDEX IF NOT EXISTS instances_run ON instances(run_id);

-- One row per run that reserved money: the open hold until settled, then the actual cost.
CREATE TABLE IF NOT EXISTS holds (
    run_id      TEXT PRIMARY KEY,
    provider    TEXT NOT NULL,
    held_usd    REAL NOT NULL,
    created_at  REAL NOT NULL,
    settled_usd REAL,
    settled_at  REAL
);
CREATE INDEX IF NOT EXISTS holds_created ON holds(created_at);

CREATE TABLE IF NOT EXISTS proofs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id      TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    path        TEXT NOT NULL,
    prev_sha256 TEXT,
    created_at  REAL NOT NULL
);
"""

# Columns added after schema 1: a ledger written before them gets them on open (NULL for old runs).
ADDED_RUN_COLUMNS = (("end_reason", "TEXT"), ("job_exit_code", "INTEGER"), ("billed_usd", "REAL"),
                     ("billed_source", "TEXT"), ("billed_complete", "INTEGER"), ("reconciled_at", "REAL"),
                     ("ending", "TEXT"))


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Create what is missing and bring an older ledger to SCHEMA_VERSION (inside the caller's transaction)."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LedgerError(f"{path} was written by a newer gpurun (schema {version}): upgrade gpurun")
    for stmt in TABLES.split(";"):
        if stmt.strip():
            conn.execute(stmt)
    _add_missing_columns(conn)
    if version < 4:
        _fill_endings(conn)
    if version < SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    have = {row["name"] for row in conn.execute("PRAGMA table_info(runs)").fetchall()}
    for name, kind in ADDED_RUN_COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")


def _fill_endings(conn: sqlite3.Connection) -> None:
    """Schema 3 -> 4, once: runs that ended before runs.ending existed get it from end_reason's
    leading words (the last place a reason's text is read back as an Ending)."""
    rows = conn.execute("SELECT run_id, end_reason FROM runs WHERE ending IS NULL AND end_reason IS NOT NULL")
    for row in rows.fetchall():
        ending = _ending_of_reason(row["end_reason"])
        if ending is not None:
            conn.execute("UPDATE runs SET ending = ? WHERE run_id = ?", (ending.value, row["run_id"]))


def _ending_of_reason(end_reason: str | None) -> Ending | None:
    """The Ending a schema-3 end_reason starts with: the one-time migration to runs.ending reads the
    words those ledgers kept; nothing else reads an ending out of a reason."""
    for ending in Ending:
        if end_reason and end_reason.startswith(ending.value):
            return ending
    return None
