"""Shared fixtures. Every database test runs on SQLite and on PostgreSQL.

PostgreSQL tests read HERALD_TEST_DATABASE_URL; without it they skip with the reason, unless
HERALD_REQUIRE_SERVICES=1 (set by .ci/run), where the missing service fails the test instead.
Each test process gets its own PostgreSQL schema, migrated once and truncated between tests.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import Engine, text

from herald.bootstrap import Container, build
from herald.db.engine import make_engine
from herald.db.migrate import upgrade
from herald.db.tables import metadata
from herald.domain.clock import ShiftedClock
from herald.settings import Settings

TEST_SECRET = "test-secret-" + "0" * 52


def require_service(env_var: str, what: str) -> str:
    """The service URL, or skip (fail under HERALD_REQUIRE_SERVICES=1) saying what is missing."""
    url = os.environ.get(env_var, "")
    if url:
        return url
    reason = f"{what} not configured: set {env_var} to run this test"
    if os.environ.get("HERALD_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} (HERALD_REQUIRE_SERVICES=1 forbids skipping)")
    pytest.skip(reason)


def with_search_path(url: str, schema: str) -> str:
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "herald.db"
    engine = make_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    base = require_service("HERALD_TEST_DATABASE_URL", "PostgreSQL")
    schema = f"herald_t_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = make_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = with_search_path(base, schema)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.begin() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def _truncate_all(engine: Engine) -> None:
    names = ", ".join(f'"{t.name}"' for t in metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated, empty database, on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "herald.db"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    url: str = request.getfixturevalue("postgres_url")
    engine = make_engine(url)
    _truncate_all(engine)
    engine.dispose()
    yield url


def make_settings(database_url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {"database_url": database_url, "secret_key": TEST_SECRET,
                                 "sqlite_synchronous": "NORMAL", **overrides}
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> ShiftedClock:
    return ShiftedClock()


@pytest.fixture
def container(database_url: str, clock: ShiftedClock) -> Iterator[Container]:
    c = build(make_settings(database_url), clock=clock)
    yield c
    c.close()


@pytest.fixture
def engine(container: Container) -> Engine:
    return container.engine
