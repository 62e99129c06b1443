"""Alembic environment. Run through `herald migrate` (db/migrate.py), which passes a connection."""

from __future__ import annotations

from alembic import context

from herald.db.tables import metadata

config = context.config


def run() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `herald migrate` (it supplies the connection)")
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite needs table rebuilds for ALTER
        compare_type=True,
        user_module_prefix="herald.db.types.",
    )
    with context.begin_transaction():
        context.run_migrations()


run()
