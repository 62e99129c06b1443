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
