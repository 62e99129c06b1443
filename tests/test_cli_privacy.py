"""`herald suppressions import|export` and `herald contacts export|erase`, run as real processes
as an operator would, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from herald.db.engine import make_engine
from herald.domain.auth import Principal
from herald.services import contacts, workspaces
from tests.conftest import TEST_SECRET

HERALD = [sys.executable, "-m", "herald.cli"]


def run(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*HERALD, *args], env=env, capture_output=True, text=True, timeout=120, check=False)
    if ok:
        assert proc.returncode == 0, f"herald {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def cli_env(database_url: str) -> dict[str, str]:
    env = {**os.environ, "HERALD_DATABASE_URL": database_url, "HERALD_SECRET_KEY": TEST_SECRET,
           "HERALD_SQLITE_SYNCHRONOUS": "NORMAL", "HERALD_LOG_LEVEL": "warning"}
    run(env, "migrate")
    run(env, "workspace", "create", "--name", "Shop", "--slug", "shop")
    return env


def test_suppressions_import_export_round_trip(cli_env: dict[str, str], tmp_path: Path) -> None:
    source = tmp_path / "list.csv"
    source.write_text("address,reason\nana@example.com,unsubscribed\nnot-an-email,\nbruno@example.com,\n",
                      encoding="utf-8")
    failed = run(cli_env, "suppressions", "import", str(source), "--workspace", "shop", ok=False)
    assert failed.returncode == 1
    assert "line 3:" in failed.stderr and "2 added, 0 already listed, 1 failed" in failed.stdout
    again = json.loads(run(cli_env, "suppressions", "import", str(source), "--workspace", "shop", "--json",
                           ok=False).stdout)
    assert (again["added"], again["unchanged"], again["failed"]) == (0, 2, 1)
    out_file = tmp_path / "export.csv"
    run(cli_env, "suppressions", "export", "--workspace", "shop", "--out", str(out_file))
    rows = list(csv.DictReader(out_file.open(encoding="utf-8", newline="")))
    assert [(r["address"], r["reason"], r["source"]) for r in rows] == [
        ("ana@example.com", "unsubscribed", "cli"), ("bruno@example.com", "manual", "cli")]
    printed = run(cli_env, "suppressions", "export", "--workspace", "shop").stdout
    assert printed == out_file.read_text(encoding="utf-8")
    reimport = json.loads(run(cli_env, "suppressions", "import", str(out_file), "--workspace", "shop",
                              "--json").stdout)
    assert (reimport["added"], reimport["unchanged"], reimport["failed"]) == (0, 2, 0)
    missing = run(cli_env, "suppressions", "import", str(tmp_path / "nope.csv"), "--workspace", "shop", ok=False)
    assert missing.returncode == 1 and "cannot read" in missing.stderr


def test_contacts_export_and_erase(cli_env: dict[str, str], database_url: str, tmp_path: Path) -> None:
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            ws = workspaces.find_workspace(conn, "shop")["id"]
            contact = contacts.create_contact(conn, Principal("t", ws, None),
                                              {"email": "ana@example.com", "phone": "+14155550111"},
                                              datetime.now(UTC))["id"]
    finally:
        engine.dispose()
    doc = json.loads(run(cli_env, "contacts", "export", contact, "--workspace", "shop").stdout)
    assert doc["contact"]["email"] == "ana@example.com"
    refused = run(cli_env, "contacts", "erase", contact, "--workspace", "shop", ok=False)
    assert refused.returncode == 1 and "--yes" in refused.stderr
    done = json.loads(run(cli_env, "contacts", "erase", contact, "--workspace", "shop", "--yes", "--json").stdout)
    assert done["contact_id"] == contact and done["tombstones"] == 3 and done["removed"]["contacts"] == 1
    again = run(cli_env, "contacts", "erase", contact, "--workspace", "shop", "--yes", ok=False)
    assert again.returncode == 1 and "no contact" in again.stderr
    exported = tmp_path / "list.csv"
    run(cli_env, "suppressions", "export", "--workspace", "shop", "--out", str(exported))
    text = exported.read_text(encoding="utf-8")
    assert "ana@example.com" not in text and "+14155550111" not in text
    assert [r["reason"] for r in csv.DictReader(text.splitlines())] == ["erased"] * 3
