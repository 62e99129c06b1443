"""The `herald` command, run as a real process, as an operator would."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import TEST_SECRET

HERALD = [sys.executable, "-m", "herald.cli"]


def run(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*HERALD, *args], env=env, capture_output=True, text=True, timeout=120, check=False)
    if ok:
        assert proc.returncode == 0, f"herald {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HERALD_DATABASE_URL": database_url, "HERALD_SECRET_KEY": TEST_SECRET,
            "HERALD_SQLITE_SYNCHRONOUS": "NORMAL", "HERALD_LOG_LEVEL": "warning"}


def test_demo_apikey_and_revoke(cli_env: dict[str, str]) -> None:
    assert "schema" in run(cli_env, "migrate").stdout
    demo = json.loads(run(cli_env, "demo", "--json").stdout)
    assert demo["loaded"]["contacts"] == 300 and len(demo["loaded"]["store_ids"]) == 2
    again = json.loads(run(cli_env, "demo", "--json").stdout)
    assert again["loaded"] is None and again["workspace_id"] == demo["workspace_id"]  # loaded once
    key = json.loads(run(cli_env, "apikey", "create", "--workspace", "demo", "--json").stdout)
    assert key["key"].startswith("hsk_") and key["store_id"] is None
    store = demo["loaded"]["store_ids"][0]
    scoped = json.loads(run(cli_env, "apikey", "create", "--workspace", "demo", "--store", store, "--json").stdout)
    assert scoped["store_id"] == store
    assert "revoked" in run(cli_env, "apikey", "revoke", scoped["id"]).stdout


def test_clear_errors(cli_env: dict[str, str]) -> None:
    proc = run(cli_env, "apikey", "create", "--workspace", "nope", ok=False)
    assert proc.returncode == 1 and "no workspace with id or slug 'nope'" in proc.stderr
    proc = run({**cli_env, "HERALD_PORT": "x"}, "jobs", "stats", ok=False)
    assert proc.returncode == 2 and "HERALD_PORT" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unmigrated_database_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "HERALD_DATABASE_URL": f"sqlite:///{tmp_path}/fresh.db", "HERALD_SECRET_KEY": TEST_SECRET}
    proc = run(env, "serve", ok=False)
    assert proc.returncode == 2 and "herald migrate" in proc.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_serve_answers_with_the_demo_key_and_stops_cleanly(cli_env: dict[str, str], tmp_path: Path) -> None:
    """What the README promises: migrate, demo, serve; curl with the printed key lists contacts."""
    run(cli_env, "migrate")
    key = json.loads(run(cli_env, "demo", "--json").stdout)["api_key"]
    port = free_port()
    log = (tmp_path / "serve.log").open("w+")
    env = {**cli_env, "HERALD_LOG_LEVEL": "info"}
    proc = subprocess.Popen([*HERALD, "serve", "--port", str(port)], env=env, stdout=log, stderr=log)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        headers = {"Authorization": f"Bearer {key}"}
        page = httpx.get(f"{base}/api/v1/contacts", headers=headers, timeout=10)
        assert page.status_code == 200, page.text
        assert len(page.json()["data"]) == 50 and page.json()["next_cursor"]
        made = httpx.post(f"{base}/api/v1/contacts", headers={**headers, "Idempotency-Key": "e2e"},
                          json={"email": "e2e@example.com"}, timeout=10)
        assert made.status_code == 201
        assert httpx.get(f"{base}/readyz", timeout=5).json() == {"status": "ready"}
        proc.send_signal(signal.SIGTERM)
        # uvicorn shuts down gracefully, then re-raises SIGTERM so supervisors see why it exited
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        log.seek(0)
        output = log.read()
    assert "worker started" in output and "worker stopped" in output, output  # drained, not killed
    assert "Application shutdown complete" in output, output


def test_contacts_show_and_merge(cli_env: dict[str, str], database_url: str) -> None:
    from datetime import UTC, datetime

    from sqlalchemy import insert

    from herald.db.engine import make_engine
    from herald.db.tables import orders
    from herald.domain.auth import Principal
    from herald.services import contacts, identity

    run(cli_env, "migrate")
    ws = json.loads(run(cli_env, "workspace", "create", "--name", "Shop", "--slug", "shop", "--json").stdout)["id"]
    store = json.loads(run(cli_env, "stores", "add", "--workspace", "shop", "--name", "US", "--platform", "custom",
                           "--currency", "USD", "--json").stdout)["id"]
    now = datetime.now(UTC)
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            who = Principal("test", ws, store)
            keep = contacts.create_contact(conn, who, {"email": "keep@example.com", "first_name": "Kim"}, now)["id"]
            gone = contacts.create_contact(conn, who, {"phone": "+14155550111", "external_ids": {"crm": "9"}},
                                           now)["id"]
            conn.execute(insert(orders).values(id="ord_cli_1", workspace_id=ws, store_id=store, contact_id=gone,
                                               external_id="1001", currency="USD", total_minor=4999,
                                               placed_at=now, created_at=now, updated_at=now))
            identity.recompute_aggregates(conn, [gone], now)
    finally:
        engine.dispose()

    shown = json.loads(run(cli_env, "contacts", "show", gone, "--json").stdout)
    assert (shown["orders_count"], shown["total_spent"], shown["external_ids"]) == (1, {"USD": "49.99"}, {"crm": "9"})
    proc = run(cli_env, "contacts", "merge", keep, gone, ok=False)
    assert proc.returncode == 2 and "--reason" in proc.stderr  # a merge always says why
    merged = json.loads(run(cli_env, "contacts", "merge", keep, gone, "--reason", "same buyer", "--json").stdout)
    assert merged["id"] == keep and merged["phone"] == "+14155550111" and merged["external_ids"] == {"crm": "9"}
    assert (merged["orders_count"], merged["total_spent"], merged["total_spent_minor"]) == (
        1, {"USD": "49.99"}, {"USD": 4999})
    text = run(cli_env, "contacts", "show", keep).stdout
    assert "USD 49.99" in text and f"merged in: {gone}" in text and "by cli: same buyer" in text
    proc = run(cli_env, "contacts", "show", gone, ok=False)
    assert proc.returncode == 1 and f"merged into {keep!r}" in " ".join(proc.stderr.split())
    assert "Traceback" not in proc.stderr
    proc = run(cli_env, "contacts", "merge", keep, keep, "--reason", "x", ok=False)
    assert proc.returncode == 1 and "itself" in proc.stderr


# ---- CSV imports (issue 3) ----------------------------------------------------------------------
def _import_setup(cli_env: dict[str, str], slug: str) -> str:
    run(cli_env, "migrate")
    run(cli_env, "workspace", "create", "--name", "Importer", "--slug", slug)
    added = run(cli_env, "stores", "add", "--workspace", slug, "--name", "Shop", "--platform", "shopify",
                "--currency", "USD", "--json")
    return str(json.loads(added.stdout)["id"])


def test_import_contacts_errors_and_rerun(cli_env: dict[str, str], tmp_path: Path) -> None:
    store = _import_setup(cli_env, "importer")
    path = tmp_path / "customers.csv"
    path.write_bytes("Email,Phone,First Name,Accepts Marketing\r\n"
                     "ana@example.com,(415) 555-0181,Ána,yes\r\n"
                     "nope,,Bo,no\r\n"
                     "cy@example.com,,\"Cy\r\nCe\",\r\n".encode("cp1252"))
    first = json.loads(run(cli_env, "import", "contacts", str(path), "--store", store, "--default-country", "US",
                           "--json").stdout)
    assert (first["state"], first["encoding"], first["rows_ok"], first["rows_failed"]) == ("completed", "cp1252", 2, 1)
    report = tmp_path / "errors.csv"
    run(cli_env, "import", "errors", first["id"], "--out", str(report))
    lines = report.read_text().splitlines()
    assert lines[0] == "line,column,value,reason" and lines[1].startswith("3,Email,nope,")
    again = json.loads(run(cli_env, "import", "contacts", str(path), "--store", store, "--default-country", "US",
                           "--json").stdout)
    assert (again["rows_ok"], again["rows_unchanged"], again["rows_failed"]) == (0, 2, 1)
    shown = run(cli_env, "import", "status", first["id"]).stdout
    assert "completed: 2 contacts imported or updated, 0 unchanged, 1 failed" in " ".join(shown.split())
    proc = run(cli_env, "import", "contacts", str(path), "--store", store, "--map", "Nope=email", ok=False)
    assert proc.returncode == 1 and "not in the header" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_import_resumes_after_kill_9(cli_env: dict[str, str], tmp_path: Path) -> None:
    """SIGKILL in the middle of an import, then --resume: every row exactly once."""
    import sqlite3

    from sqlalchemy import func, select

    from herald.db.engine import make_engine
    from herald.db.tables import contacts, imports

    store = _import_setup(cli_env, "killed")
    rows = 3000
    path = tmp_path / "big.csv"
    path.write_text("email,first_name,accepts_marketing\n"
                    + "".join(f"u{i}@example.com,U{i},{'yes' if i % 2 else 'no'}\n" for i in range(rows)))
    url = cli_env["HERALD_DATABASE_URL"]
    engine = make_engine(url)

    def progress() -> tuple[str, str, int] | None:
        """Read without taking SQLite's write lock (the engine begins IMMEDIATE; a WAL reader waits for nobody)."""
        if url.startswith("sqlite:///"):
            con = sqlite3.connect(f"file:{url[len('sqlite:///'):]}?mode=ro", uri=True)
            try:
                return con.execute("SELECT id, state, rows_ok FROM imports").fetchone()  # type: ignore[no-any-return]
            finally:
                con.close()
        with engine.begin() as conn:
            found = conn.execute(select(imports.c.id, imports.c.state, imports.c.rows_ok)).first()
        return None if found is None else (found.id, found.state, found.rows_ok)

    proc = subprocess.Popen([*HERALD, "import", "contacts", str(path), "--store", store, "--batch-rows", "7",
                             "--json"], env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        seen = None
        while time.monotonic() < deadline and proc.poll() is None:
            seen = progress()
            if seen is not None and seen[2] >= 70:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the import ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed = progress()
        assert seen is not None and killed is not None
        assert killed[1] == "running" and 70 <= killed[2] < rows
        done = json.loads(run(cli_env, "import", "contacts", str(path), "--resume", seen[0], "--json").stdout)
        assert (done["state"], done["rows_ok"], done["rows_unchanged"], done["rows_failed"]) == (
            "completed", rows, 0, 0)
        with engine.begin() as conn:
            assert conn.execute(select(func.count()).select_from(contacts)).scalar_one() == rows
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        engine.dispose()
