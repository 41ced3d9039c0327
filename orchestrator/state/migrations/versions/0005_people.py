"""Schema 5: people and pools (runs.person, runs.pool, holds.person, holds.pool) and the ledger's lock row.

Revision ID: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ("runs", "holds"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("person", sa.String))
            batch.add_column(sa.Column("pool", sa.String))
    lock = op.create_table("ledger_lock", sa.Column("id", sa.Integer, primary_key=True, autoincrement=False))
    op.bulk_insert(lock, [{"id": 1}])


def downgrade() -> None:
    op.drop_table("ledger_lock")
    for table in ("holds", "runs"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("pool")
            batch.drop_column("person")
