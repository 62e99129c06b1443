"""`herald whatsapp templates sync|submit`, run as real processes against the local Graph API
(tests/channels/whatsapp/graphserver.py), on SQLite and PostgreSQL: the sync prints and records
Meta's statuses, the submit sends the variant and records pending, a bad body is one clear line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from herald.bootstrap import Container, build
from tests.channels.whatsapp.graphserver import FakeGraph, serve_graph
from tests.conftest import TEST_SECRET, make_settings
from tests.services.test_whatsapp_templates import meta_template, setup, stored

HERALD = [sys.executable, "-m", "herald.cli"]


def run(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*HERALD, *args], env=env, capture_output=True, text=True, timeout=120, check=False)
    if ok:
        assert proc.returncode == 0, f"herald {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def flat(text: str) -> str:
    """Console output with its line breaks and runs of spaces collapsed (rich wraps long lines)."""
    return " ".join(text.split())


@pytest.fixture
def graph() -> FakeGraph:
    return FakeGraph(page_size=2)


@pytest.fixture
def base_url(graph: FakeGraph) -> Iterator[str]:
    with serve_graph(graph) as url:
        yield url


@pytest.fixture
def local(database_url: str) -> Iterator[Container]:
    c = build(make_settings(database_url))
    yield c
    c.close()


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return {**os.environ, "HERALD_DATABASE_URL": database_url, "HERALD_SECRET_KEY": TEST_SECRET,
            "HERALD_SQLITE_SYNCHRONOUS": "NORMAL", "HERALD_LOG_LEVEL": "warning", "COLUMNS": "200"}


def test_sync_then_submit_from_the_command_line(env: dict[str, str], local: Container, graph: FakeGraph,
                                               base_url: str) -> None:
    shop = setup(local, base_url)
    graph.templates = [meta_template("order_update", "en_US", "APPROVED"),
                       meta_template("order_update", "pt_BR", "ARCHIVED")]
    synced = flat(run(env, "whatsapp", "templates", "sync", "--workspace", "seller").stdout)
    assert "Meta lists 2 template version(s); 2 used by Herald templates (1 changed)" in synced
    assert "order_update (en_US): approved" in synced and "order_update (pt_BR): paused" in synced
    assert "not at Meta: winback (es)" in synced
    assert stored(local, "order update")["approval_status"] == "paused"

    refused = run(env, "whatsapp", "templates", "submit", "winback", "--workspace", "seller", "--body",
                  "Hola {{1}} y {{2}}", ok=False)
    assert refused.returncode == 1
    assert flat(refused.stderr).startswith("error: body: uses {{1}}, {{2}}, but the variant has 1 parameter(s)")

    done = run(env, "whatsapp", "templates", "submit", "winback", "--workspace", "seller", "--body",
               "Hola {{1}}, te extrañamos", "--example", "María", "--json")
    answer = json.loads(done.stdout)
    assert (answer["name"], answer["language"], answer["meta_status"], answer["status"]) == (
        "winback", "es", "pending", "pending")
    body = next(seen for seen in graph.seen if seen.method == "POST").json()
    assert body["components"] == [{"type": "BODY", "text": "Hola {{1}}, te extrañamos",
                                   "example": {"body_text": [["María"]]}}]
    assert shop.workspace_id == stored(local, "winback")["workspace_id"]
