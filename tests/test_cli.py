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
