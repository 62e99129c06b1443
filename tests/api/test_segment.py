"""Segment-spec ingestion end to end, on SQLite and PostgreSQL: the official
`segment-analytics-python` and `rudder-sdk-python` clients, unchanged, talk to a real uvicorn
server on 127.0.0.1; then the `intake.events` processing resolves contacts.

Wire details checked against the Segment HTTP Tracking API docs (auth: Basic with the write
key as user name or a `writeKey` body field; 200 for accepted calls, 400 for malformed JSON;
messageId dedupe; timestamp/sentAt skew correction) and the clients' own request code
(segment/analytics/request.py posts {"batch", "sentAt", "writeKey"} to /v1/batch, gzip off by
default; rudderstack/analytics/request.py gzips by default).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from rudderstack.analytics import Client as RudderClient
from segment.analytics import Client as SegmentClient
from sqlalchemy import Engine, create_engine, select, update

from herald.api.app import create_app
from herald.bootstrap import Container
from herald.db.tables import contact_identities, contacts, events, jobs, stores
from herald.domain.auth import Principal
from herald.domain.clock import ShiftedClock
from herald.services import segment, workspaces
from herald.services.identity import store_namespace
from herald.worker.kinds import build_worker

WRITE_KEY = "wk_" + "A1b2C3d4" * 5 + "xyz"


# ---- a real server ---------------------------------------------------------------------------
@dataclass
class Server:
    url: str
    app: Any
    store_id: str
    workspace_id: str
    seen: list[tuple[str, str | None]] = field(default_factory=list)  # (path, content-encoding)

    def post(self, path: str, body: bytes, *, key: str | None = WRITE_KEY, **headers: str) -> httpx.Response:
        if key is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(f"{key}:".encode()).decode()
        return httpx.post(self.url + path, content=body, headers={"Content-Type": "application/json", **headers},
                          timeout=10)


def _store_with_write_key(container: Container) -> tuple[str, str]:
    now = container.clock.now()
    with container.engine.begin() as conn:
        ws = workspaces.create_workspace(conn, name="Seller", slug="seller", now=now)
        store = workspaces.create_store(conn, Principal("key_test", ws["id"], None), name="Aurora",
                                        platform="custom", currency="USD", timezone="UTC", domain=None, now=now)
        conn.execute(update(stores).where(stores.c.id == store["id"])
                     .values(write_key_hash=segment.hash_write_key(WRITE_KEY), write_key_prefix=WRITE_KEY[:11]))
    return ws["id"], store["id"]


@pytest.fixture
def server(container: Container) -> Iterator[Server]:
    ws, store_id = _store_with_write_key(container)
    app = create_app(container)
    srv = Server("", app, store_id, ws)

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            encoding = dict(scope["headers"]).get(b"content-encoding")
            srv.seen.append((scope["path"], encoding.decode() if encoding else None))
        await app(scope, receive, send)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    uv = uvicorn.Server(uvicorn.Config(recording, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=uv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert uv.started, "uvicorn did not start"
    srv.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    yield srv
    uv.should_exit = True
    thread.join(timeout=10)
    sock.close()


def _events(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [r._asdict() for r in conn.execute(select(events).order_by(events.c.id))]


def _contact(engine: Engine, contact_id: str) -> dict[str, Any]:
    with engine.connect() as conn:
        return conn.execute(select(contacts).where(contacts.c.id == contact_id)).one()._asdict()


def _process(container: Container) -> int:
    return segment.process_all(container.engine, container.clock.now)


def _run(client: Any) -> list[Any]:
    """Flush and stop a client; return what it reported through on_error."""
    client.flush()
    client.shutdown()
    return list(client.errors)


def _client(cls: Any, url: str, key: str = WRITE_KEY, **options: Any) -> Any:
    errors: list[Any] = []
    client = cls(key, host=url, max_retries=1, on_error=lambda exc, _batch: errors.append(exc), **options)
    client.errors = errors
    return client


# ---- the official clients ---------------------------------------------------------------------
@pytest.mark.parametrize("client_cls", [SegmentClient, RudderClient], ids=["segment", "rudder"])
def test_official_client_calls_land_as_events_and_contacts(server: Server, container: Container,
                                                           client_cls: Any) -> None:
    client = _client(client_cls, server.url)
    then = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    client.identify("u-1", {"email": "Ana.Souza@Example.COM", "phone": "+1 415-555-2671", "firstName": "Ana",
                            "lastName": "Souza", "address": {"country": "br"}, "language": "pt-BR",
                            "timezone": "America/Sao_Paulo", "plan": "pro"},
                    anonymous_id="anon-1", timestamp=then)
    client.track("u-1", "Order Completed", {"total": 129.9, "currency": "USD"}, timestamp=then)
    client.page("u-1", "Docs", "Pricing", {"url": "https://aurora.example/pricing"})
    client.screen("u-1", "App", "Cart", {"items": 2})
    client.group("u-1", "g-42", {"name": "Aurora Wholesale", "tier": "gold"})
    client.alias("anon-2", "u-1")
    assert _run(client) == []

    rows = _events(container.engine)
    assert [(r["kind"], r["name"]) for r in rows] == [
        ("identify", "identify"), ("track", "Order Completed"), ("page", "Pricing"), ("screen", "Cart"),
        ("group", "group"), ("alias", "alias")]
    assert all(r["source"] == "segment" and r["store_id"] == server.store_id and r["processed_at"] is None
               for r in rows)
    track = rows[1]
    assert track["user_id"] == "u-1" and track["properties"]["properties"] == {"total": 129.9, "currency": "USD"}
    assert abs(track["occurred_at"] - then) < timedelta(seconds=5)  # sentAt ~ receivedAt: little correction
    assert rows[0]["anonymous_id"] == "anon-1" and "writeKey" not in rows[0]["properties"]
    assert rows[2]["properties"]["properties"]["url"] == "https://aurora.example/pricing"

    assert _process(container) == 6
    rows = _events(container.engine)
    contact_ids = {r["contact_id"] for r in rows}
    assert len(contact_ids) == 1 and None not in contact_ids
    assert all(r["processed_at"] is not None for r in rows)
    person = _contact(container.engine, contact_ids.pop())
    assert (person["email"], person["phone"], person["first_name"], person["last_name"], person["country"],
            person["timezone"]) == ("Ana.Souza@example.com", "+14155552671", "Ana", "Souza", "BR",
                                    "America/Sao_Paulo")
    assert person["language"].lower().startswith("pt")
    assert person["attributes"]["plan"] == "pro"
    assert person["attributes"]["groups"] == {"g-42": {"name": "Aurora Wholesale", "tier": "gold"}}
    with container.engine.connect() as conn:
        externals = set(conn.execute(select(contact_identities.c.namespace, contact_identities.c.value)
                                     .where(contact_identities.c.kind == "external")).all())
    anon = segment.anonymous_namespace(server.store_id)
    assert externals == {(store_namespace(server.store_id), "u-1"), (anon, "anon-1"), (anon, "anon-2")}


def test_rudder_sends_gzip_and_segment_client_gzip_option_works(server: Server, container: Container) -> None:
    rudder = _client(RudderClient, server.url)
    rudder.track("u-9", "Signed Up")
    assert _run(rudder) == []
    seg = _client(SegmentClient, server.url, gzip=True)
    seg.track("u-9", "Logged In")
    assert _run(seg) == []
    assert ("/v1/batch", "gzip") in server.seen
    assert [e["name"] for e in _events(container.engine)] == ["Signed Up", "Logged In"]


def test_anonymous_events_stay_contactless_until_linked(server: Server, container: Container) -> None:
    client = _client(SegmentClient, server.url)
    client.track(event="Viewed Product", anonymous_id="visitor-7", properties={"sku": "TR-2"})
    assert _run(client) == []
    assert _process(container) == 1
    assert _events(container.engine)[0]["contact_id"] is None  # processed, nobody to attach it to

    client = _client(SegmentClient, server.url)
    client.identify("u-7", {"email": "leo@example.com"}, anonymous_id="visitor-7")
    client.page(anonymous_id="visitor-7", name="Checkout")
    assert _run(client) == []
    assert _process(container) == 2
    rows = _events(container.engine)
    assert rows[0]["contact_id"] is None  # already processed: not rewritten
    assert rows[1]["contact_id"] is not None and rows[2]["contact_id"] == rows[1]["contact_id"]


# ---- wire behaviour ---------------------------------------------------------------------------
def test_message_id_replay_is_accepted_and_stored_once(server: Server, container: Container) -> None:
    body = b'{"batch": [{"type": "track", "userId": "u-1", "event": "Paid", "messageId": "m-1"}]}'
    assert server.post("/v1/batch", body).json() == {"success": True}
    assert server.post("/v1/batch", body).json() == {"success": True}
    single = b'{"userId": "u-1", "event": "Paid", "messageId": "m-1"}'
    assert server.post("/v1/track", single).status_code == 200
    client = _client(SegmentClient, server.url)
    client.track("u-1", "Paid", message_id="m-1")
    client.track("u-1", "Paid", message_id="m-1")
    assert _run(client) == []
    assert [(e["name"], e["dedupe_key"]) for e in _events(container.engine)] == [("Paid", "m-1")]


def test_a_large_batch_spans_several_statements_and_keeps_every_event_once(server: Server,
                                                                          container: Container) -> None:
    messages = [{"type": "track", "userId": f"u-{i % 7}", "event": "Viewed", "messageId": f"big-{i}"}
                for i in range(segment.STATEMENT_ROWS * 2 + 17)]
    messages.append({**messages[3], "event": "Viewed again"})  # a replay inside the same batch
    body = orjson.dumps({"batch": messages})
    assert server.post("/v1/batch", body).json() == {"success": True}
    stored = _events(container.engine)
    assert len(stored) == segment.STATEMENT_ROWS * 2 + 17
    assert len({e["dedupe_key"] for e in stored}) == len(stored)
    assert {e["name"] for e in stored} == {"Viewed"}


def test_sent_at_corrects_the_device_clock(server: Server, container: Container) -> None:
    # The device clock is 1 hour ahead: it stamped the event at 13:00 and sent it at 13:05
    # device time; received "now" -> it happened 5 minutes before it was received.
    device_sent = datetime.now(UTC) + timedelta(hours=1)
    device_event = device_sent - timedelta(minutes=5)
    stamp = device_event.isoformat()
    body = (f'{{"batch": [{{"type": "track", "userId": "u-1", "event": "A", "timestamp": "{stamp}"}},'
            f'{{"type": "track", "userId": "u-1", "event": "B", "timestamp": "2024-01-01T00:00:00Z",'
            f' "sentAt": "2024-01-01T00:10:00Z"}},'
            f'{{"type": "track", "userId": "u-1", "event": "C"}}], "sentAt": "{device_sent.isoformat()}"}}')
    assert server.post("/v1/batch", body.encode()).json() == {"success": True}
    a, b, c = _events(container.engine)
    assert a["occurred_at"] == device_event + (a["received_at"] - device_sent)
    assert abs(a["occurred_at"] - (a["received_at"] - timedelta(minutes=5))) < timedelta(milliseconds=1)
    assert b["occurred_at"] == b["received_at"] - timedelta(minutes=10)  # its own sentAt wins
    assert c["occurred_at"] == c["received_at"]  # no timestamp: when we received it
    plain = b'{"userId": "u-1", "event": "D", "timestamp": "2023-06-01T10:00:00+02:00"}'
    assert server.post("/v1/track", plain).status_code == 200
    assert _events(container.engine)[-1]["occurred_at"] == datetime(2023, 6, 1, 8, 0, tzinfo=UTC)


def test_bad_or_missing_write_key_is_401(server: Server, container: Container) -> None:
    body = b'{"userId": "u-1", "event": "A"}'
    for response in (server.post("/v1/track", body, key="wk_wrong"), server.post("/v1/track", body, key=None),
                     server.post("/v1/batch", b'{"batch": [], "writeKey": "nope"}', key=None),
                     server.post("/v1/track", body, key=None, Authorization="Basic %%%")):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == 'Basic realm="herald"'
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 401
    client = _client(SegmentClient, server.url, key="wk_unknown")
    client.track("u-1", "A")
    assert [e.status for e in _run(client)] == [401]
    assert _events(container.engine) == []


def test_write_key_in_body_authenticates(server: Server, container: Container) -> None:
    body = f'{{"userId": "u-3", "event": "A", "writeKey": "{WRITE_KEY}"}}'.encode()
    assert server.post("/v1/track", body, key=None).status_code == 200
    (row,) = _events(container.engine)
    assert row["user_id"] == "u-3" and "writeKey" not in row["properties"]


def test_batch_with_invalid_messages_keeps_the_valid_ones(server: Server, container: Container) -> None:
    body = (b'{"batch": [{"type": "track", "userId": "u-1", "event": "Good"},'
            b'{"type": "track", "event": "No user"},'
            b'{"type": "fly", "userId": "u-1"},'
            b'{"type": "identify", "anonymousId": "a-1", "traits": {"email": "x@example.com"}},'
            b'{"type": "track", "userId": "u-1", "event": "Bad time", "timestamp": "yesterday"}]}')
    response = server.post("/v1/batch", body)
    assert response.status_code == 200
    rejected = response.json()["rejected"]
    assert [r["index"] for r in rejected] == [1, 2, 4]
    assert rejected[0]["reason"].startswith("userId:") and rejected[1]["reason"].startswith("type:")
    assert "timestamp" in rejected[2]["reason"]
    assert [e["name"] for e in _events(container.engine)] == ["Good", "identify"]


def test_single_call_with_invalid_message_is_400_naming_the_field(server: Server, container: Container) -> None:
    response = server.post("/v1/track", b'{"userId": "u-1"}')
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"field": "event", "reason": "required for track: the name of the action, e.g. 'Order Completed'"}]
    response = server.post("/v1/alias", b'{"userId": "u-1"}')
    assert response.status_code == 400 and response.json()["errors"][0]["field"] == "previousId"
    response = server.post("/v1/group", b'{"userId": "u-1", "traits": []}')
    assert response.json()["errors"][0]["field"] == "groupId"
    assert server.post("/v1/track", b'{"userId": "u-1", "event": "x\\u0000"}').status_code == 400
    assert server.post("/v1/track", b"{not json").status_code == 400
    assert _events(container.engine) == []


def test_gzip_bodies_and_bombs(server: Server, container: Container) -> None:
    body = gzip.compress(b'{"userId": "u-1", "event": "Zipped"}')
    assert server.post("/v1/track", body, **{"Content-Encoding": "gzip"}).status_code == 200
    bomb = gzip.compress(b'{"batch": [' + b" " * 20_000_000 + b"]}")
    assert len(bomb) < 100_000
    response = server.post("/v1/batch", bomb, **{"Content-Encoding": "gzip"})
    assert response.status_code == 413 and response.json()["status"] == 413
    assert server.post("/v1/track", b"not gzip", **{"Content-Encoding": "gzip"}).status_code == 400
    assert server.post("/v1/track", body[:-8], **{"Content-Encoding": "gzip"}).status_code == 400
    assert server.post("/v1/track", body, **{"Content-Encoding": "br"}).status_code == 415
    assert [e["name"] for e in _events(container.engine)] == ["Zipped"]


def test_database_failure_is_503_and_nothing_is_acknowledged(server: Server, container: Container,
                                                            tmp_path: Any) -> None:
    writer: segment.EventWriter = server.app.state.segment_writer
    broken = create_engine(f"sqlite:///{tmp_path}/no-such-dir/x.db")  # every connect fails
    good, writer.engine = writer.engine, broken
    try:
        response = server.post("/v1/track", b'{"userId": "u-1", "event": "Lost?"}')
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1" and response.json()["status"] == 503
        # The official client honours Retry-After: it keeps the batch and sends it again later.
        client = _client(SegmentClient, server.url)
        client.track("u-1", "Retried")
        deadline = time.monotonic() + 10
        while not any(path == "/v1/batch" for path, _ in server.seen) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert any(path == "/v1/batch" for path, _ in server.seen), "the client never tried"
        assert _events(container.engine) == []
    finally:
        writer.engine = good
        broken.dispose()
    flushing = threading.Thread(target=_run, args=(client,), daemon=True)
    flushing.start()
    flushing.join(timeout=15)
    assert not flushing.is_alive(), "the client did not deliver the retried batch"
    assert client.errors == []
    assert server.post("/v1/track", b'{"userId": "u-1", "event": "Back"}').status_code == 200
    assert sorted(e["name"] for e in _events(container.engine)) == ["Back", "Retried"]


def test_writer_enqueues_processing_and_the_worker_job_resolves(server: Server, container: Container,
                                                               clock: ShiftedClock) -> None:
    client = _client(SegmentClient, server.url)
    client.identify("u-5", {"email": "mia@example.com", "name": "Mia van Dijk"})
    client.track("u-5", "Added to Cart")
    assert _run(client) == []
    with container.engine.connect() as conn:
        kinds = conn.execute(select(jobs.c.kind, jobs.c.due_at).where(jobs.c.kind == "intake.events")).all()
    assert kinds and all(due > container.clock.now() for _, due in kinds)  # due once its second is over
    clock.advance(timedelta(seconds=3))
    worker = build_worker(container)
    assert asyncio.run(worker.run_once()) >= 1
    rows = _events(container.engine)
    assert all(r["processed_at"] is not None for r in rows) and rows[0]["contact_id"] == rows[1]["contact_id"]
    person = _contact(container.engine, rows[0]["contact_id"])
    assert (person["first_name"], person["last_name"], person["email"]) == ("Mia", "van Dijk", "mia@example.com")
