"""Schema 4, the last one SQLite's PRAGMA user_version numbered: the baseline of every ledger.

Creates what is missing, as gpurun's CREATE TABLE IF NOT EXISTS did: a new ledger (SQLite or
PostgreSQL) gets every table; a SQLite ledger written before Alembic (whose runs columns
`state.schema` brought to schema 4 first) gets only the tables its gpurun had not made yet.

Revision ID: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    have = set(sa.inspect(op.get_bind()).get_table_names())
    for name, make in (("runs", _runs), ("events", _events), ("instances", _instances), ("holds", _holds),
                       ("proofs", _proofs)):
        if name not in have:
            make()


def _runs() -> None:
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String, primary_key=True),
        sa.Column("provider", sa.String, nullable=False),
        sa.Column("phase", sa.String, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("max_usd", sa.Float, nullable=False),
        sa.Column("usd_per_hour", sa.Float),
        sa.Column("clock_start_epoch", sa.Float),
        sa.Column("deadline_epoch", sa.Float),
        sa.Column("stop_at_epoch", sa.Float),
        sa.Column("cost_usd", sa.Float),
        sa.Column("settled", sa.Integer, nullable=False, server_default="0"),
        sa.Column("run_dir", sa.Text, nullable=False, server_default=""),
        sa.Column("plan", sa.Text, nullable=False, server_default="{}"),
        sa.Column("error", sa.Text),
        sa.Column("controller_pid", sa.Integer),
        sa.Column("end_reason", sa.Text),
        sa.Column("job_exit_code", sa.Integer),
        sa.Column("billed_usd", sa.Float),
        sa.Column("billed_source", sa.Text),
        sa.Column("billed_complete", sa.Integer),
        sa.Column("reconciled_at", sa.Float),
        sa.Column("ending", sa.String),
    )
    op.create_index("runs_created", "runs", ["created_at"])


def _events() -> None:
    op.create_table(
        "events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String, nullable=False),
        sa.Column("time", sa.Float, nullable=False),
        sa.Column("phase", sa.String, nullable=False),
        sa.Column("is_phase", sa.Integer, nullable=False),
        sa.Column("payload", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_index("events_run", "events", ["run_id", "id"])


def _instances() -> None:
    op.create_table(
        "instances",
        sa.Column("instance_id", sa.String, primary_key=True),
        sa.Column("run_id", sa.String, nullable=False),
        sa.Column("provider", sa.String, nullable=False),
        sa.Column("state", sa.String, nullable=False),
        sa.Column("info", sa.Text, nullable=False, server_default="{}"),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("host_key_type", sa.String),
        sa.Column("host_key", sa.Text),
    )
    op.create_index("instances_run", "instances", ["run_id"])


def _holds() -> None:
    op.create_table(
        "holds",
        sa.Column("run_id", sa.String, primary_key=True),
        sa.Column("provider", sa.String, nullable=False),
        sa.Column("held_usd", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("settled_usd", sa.Float),
        sa.Column("settled_at", sa.Float),
    )
    op.create_index("holds_created", "holds", ["created_at"])


def _proofs() -> None:
    op.create_table(
        "proofs",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String, nullable=False),
        sa.Column("sha256", sa.String, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("prev_sha256", sa.String),
        sa.Column("created_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    for name in ("proofs", "holds", "instances", "events", "runs"):
        op.drop_table(name)
