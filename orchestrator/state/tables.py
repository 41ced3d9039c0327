"""The ledger's tables, defined once for every engine (SQLAlchemy Core): SQLite and PostgreSQL alike.

This is the schema at the head revision; `state/migrations/` brings an older ledger there (Alembic),
and `state/schema.py` names the revisions. Money and times are floats (USD, epoch seconds), JSON
payloads are redacted text (`state.values.dumps`).
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, MetaData, String, Table, Text

metadata = MetaData()

runs = Table(
    "runs", metadata,
    Column("run_id", String, primary_key=True),
    Column("provider", String, nullable=False),
    Column("phase", String, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("max_usd", Float, nullable=False),
    Column("usd_per_hour", Float),
    Column("clock_start_epoch", Float),
    Column("deadline_epoch", Float),
    Column("stop_at_epoch", Float),
    Column("cost_usd", Float),
    Column("settled", Integer, nullable=False, server_default="0"),
    Column("run_dir", Text, nullable=False, server_default=""),
    Column("plan", Text, nullable=False, server_default="{}"),
    Column("error", Text),
    Column("controller_pid", Integer),
    Column("end_reason", Text),
    Column("job_exit_code", Integer),
    Column("billed_usd", Float),
    Column("billed_source", Text),
    Column("billed_complete", Integer),
    Column("reconciled_at", Float),
    Column("ending", String),
    # Schema 5: who launched it (GPURUN_USER, else the login name) and the pool it held against.
    Column("person", String),
    Column("pool", String),
    Index("runs_created", "created_at"),
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String, nullable=False),
    Column("time", Float, nullable=False),
    Column("phase", String, nullable=False),  # a phase name, or the kind of a non-phase event
    Column("is_phase", Integer, nullable=False),
    Column("payload", Text, nullable=False, server_default="{}"),
    Index("events_run", "run_id", "id"),
)

instances = Table(
    "instances", metadata,
    Column("instance_id", String, primary_key=True),
    Column("run_id", String, nullable=False),
    Column("provider", String, nullable=False),
    Column("state", String, nullable=False),
    Column("info", Text, nullable=False, server_default="{}"),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
    Column("host_key_type", String),
    Column("host_key", Text),
    Index("instances_run", "run_id"),
)

# One row per run that reserved money: the open hold until settled, then the actual cost.
holds = Table(
    "holds", metadata,
    Column("run_id", String, primary_key=True),
    Column("provider", String, nullable=False),
    Column("held_usd", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("settled_usd", Float),
    Column("settled_at", Float),
    Column("person", String),  # schema 5: the person and pool whose caps the hold counts against
    Column("pool", String),
    Index("holds_created", "created_at"),
)

proofs = Table(
    "proofs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String, nullable=False),
    Column("sha256", String, nullable=False),
    Column("path", Text, nullable=False),
    Column("prev_sha256", String),
    Column("created_at", Float, nullable=False),
)

# Schema 5: one row (id 1). Every write transaction on a shared (PostgreSQL) ledger locks it first
# (SELECT ... FOR UPDATE), so a cap check and its hold, or a proof and the chain head it names, are
# serialised across machines as SQLite's BEGIN IMMEDIATE serialises them on one.
ledger_lock = Table(
    "ledger_lock", metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
)
