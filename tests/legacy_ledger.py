"""A ledger as gpurun wrote it before Alembic (SQLite, PRAGMA user_version 4): the migration's input.

The DDL is the schema-4 `TABLES` text of orchestrator/state/schema.py as it was, kept verbatim here
so the tests keep a real old ledger to open after the code moved on.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

SCHEMA_4_DDL = """
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


def write_schema_4_ledger(path: Path, version: int = 4) -> sqlite3.Connection:
    """Create `path` as a pre-Alembic gpurun would have (its user_version = `version`); the caller adds rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(SCHEMA_4_DDL)
    conn.execute(f"PRAGMA user_version = {int(version)}")
    return conn
