"""Creating the SQLAlchemy engine for SQLite (embedded) or PostgreSQL (production)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def sqlalchemy_url(url: str) -> str:
    """Accept the URLs people write (postgres://, postgresql://) and pick the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def make_engine(url: str, *, sqlite_synchronous: str = "FULL", pool_size: int = 10) -> Engine:
    sa_url = make_url(sqlalchemy_url(url))
    if sa_url.get_backend_name() == "sqlite":
        return _sqlite_engine(sa_url.render_as_string(hide_password=False), sqlite_synchronous)
    return create_engine(
        sa_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        future=True,
    )


def _sqlite_engine(url: str, synchronous: str) -> Engine:
    """SQLite with WAL, foreign keys, and every transaction opened with BEGIN IMMEDIATE.

    BEGIN IMMEDIATE takes the single write lock up front: two processes never both hold a
    read snapshot and then fail to upgrade it (SQLITE_BUSY without waiting). That lock is the
    "single-writer lease" the work engine relies on instead of FOR UPDATE SKIP LOCKED.
    """
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'FULL' else 'NORMAL'}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine
