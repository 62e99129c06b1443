"""The Alembic migrations produce exactly the schema in db/tables.py, on both backends,
and can be rolled back and re-applied."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, inspect

from herald.db.migrate import current_revision, downgrade, head_revision, is_up_to_date, upgrade
from herald.db.tables import metadata


def schema_diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata))


def test_migrations_match_the_tables(engine: Engine) -> None:
    assert current_revision(engine) == head_revision()
    assert is_up_to_date(engine)
    assert schema_diff(engine) == []


def test_downgrade_to_base_and_back(engine: Engine) -> None:
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    assert not is_up_to_date(engine)
    upgrade(engine)
    assert schema_diff(engine) == []
