"""Alembic's entry point: migrate the connection `state.schema.migrate` hands over, inside its transaction."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():  # joins the caller's open transaction (a no-op begin)
    context.run_migrations()
