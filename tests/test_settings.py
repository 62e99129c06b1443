from __future__ import annotations

from pathlib import Path

import pytest

from herald.bootstrap import load_master_key
from herald.settings import SettingsError, load_settings


def test_defaults_are_the_embedded_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HERALD_DATABASE_URL", "HERALD_PORT"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.is_sqlite and s.port == 8000


def test_every_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERALD_PORT", "eighty")
    monkeypatch.setenv("HERALD_DATABASE_URL", "mysql://x")
    monkeypatch.setenv("HERALD_WORKER_CONCURRENCY", "0")
    with pytest.raises(SettingsError) as err:
        load_settings()
    text = str(err.value)
    assert "HERALD_PORT" in text and "'eighty'" in text
    assert "HERALD_DATABASE_URL" in text and "postgresql://" in text
    assert "HERALD_WORKER_CONCURRENCY" in text


def test_master_key_is_generated_once_for_sqlite(tmp_path: Path) -> None:
    s = load_settings(database_url=f"sqlite:///{tmp_path}/h.db", secret_key_file=tmp_path / "k" / "secret.key")
    first = load_master_key(s)
    assert len(first) == 64
    assert (tmp_path / "k" / "secret.key").stat().st_mode & 0o777 == 0o600
    assert load_master_key(s) == first


def test_postgres_requires_an_explicit_master_key() -> None:
    s = load_settings(database_url="postgresql://127.0.0.1/x", secret_key="")
    with pytest.raises(SettingsError, match="HERALD_SECRET_KEY"):
        load_master_key(s)
    with pytest.raises(SettingsError, match="at least 32"):
        load_master_key(load_settings(database_url="postgresql://127.0.0.1/x", secret_key="short"))
