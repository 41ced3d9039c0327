"""Alembic migrations of the ledger (run by `orchestrator.state.schema.migrate`, never by hand)."""
