"""Idempotency-Key on creates: replay, 422 on a different body, 409 while in flight, 24 h+."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, select

from herald.bootstrap import Container
from herald.db.tables import contacts, idempotency_keys
from herald.domain.clock import ShiftedClock
from herald.services import idempotency
from tests.api.conftest import World


def count_contacts(container: Container) -> int:
    with container.engine.begin() as conn:
        return int(conn.execute(select(func.count()).select_from(contacts)).scalar_one())


def post(client: TestClient, world: World, body: object, key: str | None = "k-1", caller: str = "A",
         raw: str | None = None) -> object:
    headers = {**world.callers[caller].headers, "Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return client.post("/api/v1/contacts", headers=headers, content=raw if raw is not None else json.dumps(body))


def test_same_key_same_body_replays_the_stored_response(container: Container, client: TestClient,
                                                        world: World) -> None:
    before = count_contacts(container)
    first = post(client, world, {"email": "once@example.com", "tags": ["a"]})
    assert first.status_code == 201, first.text  # type: ignore[attr-defined]
    # same JSON, other key order and spacing: still the same request
    again = post(client, world, None, raw='{ "tags": ["a"],   "email": "once@example.com" }')
    assert again.status_code == 201  # type: ignore[attr-defined]
    assert again.json() == first.json()  # type: ignore[attr-defined]
    assert again.headers["idempotent-replayed"] == "true"  # type: ignore[attr-defined]
    assert again.headers["location"] == first.headers["location"]  # type: ignore[attr-defined]
    assert count_contacts(container) == before + 1


def test_same_key_different_body_is_422(container: Container, client: TestClient, world: World) -> None:
    assert post(client, world, {"email": "one@example.com"}).status_code == 201  # type: ignore[attr-defined]
    resp = post(client, world, {"email": "two@example.com"})
    assert resp.status_code == 422  # type: ignore[attr-defined]
    assert resp.json()["errors"][0]["field"] == "Idempotency-Key"  # type: ignore[attr-defined]


def test_in_flight_is_409_until_its_lock_expires(container: Container, client: TestClient, world: World,
                                                 clock: ShiftedClock) -> None:
    body = {"email": "slow@example.com"}
    raw = json.dumps(body).encode()
    with container.engine.begin() as conn:  # a first request that is still running (or died)
        idempotency.reserve(conn, api_key_id=world.callers["A"].key_id, key="k-1",
                            fingerprint=idempotency.request_fingerprint("POST", "/api/v1/contacts", raw),
                            now=clock.now(), lock=timedelta(seconds=60), ttl=timedelta(hours=24))
    resp = post(client, world, body)
    assert resp.status_code == 409  # type: ignore[attr-defined]
    assert resp.headers["content-type"] == "application/problem+json"  # type: ignore[attr-defined]
    clock.advance(timedelta(seconds=61))  # the first request died without answering
    assert post(client, world, body).status_code == 201  # type: ignore[attr-defined]


def test_refusals_are_stored_and_replayed(container: Container, client: TestClient, world: World) -> None:
    assert post(client, world, {"email": "taken@example.com"}, key="k-a").status_code == 201  # type: ignore[attr-defined]
    conflict = post(client, world, {"email": "taken@example.com"}, key="k-b")
    assert conflict.status_code == 409  # type: ignore[attr-defined]
    replay = post(client, world, {"email": "taken@example.com"}, key="k-b")
    assert replay.status_code == 409 and replay.json() == conflict.json()  # type: ignore[attr-defined]
    assert replay.headers["idempotent-replayed"] == "true"  # type: ignore[attr-defined]


def test_invalid_requests_do_not_burn_the_key(container: Container, client: TestClient, world: World) -> None:
    bad = post(client, world, {"email": "x@example.com", "colour": "red"})
    assert bad.status_code == 422  # type: ignore[attr-defined]
    good = post(client, world, {"email": "x@example.com"})
    assert good.status_code == 201  # type: ignore[attr-defined]


def test_keys_are_per_api_key(container: Container, client: TestClient, world: World) -> None:
    a = post(client, world, {"email": "a@example.com"}, caller="A")
    b = post(client, world, {"email": "b@example.com"}, caller="B")
    assert a.status_code == b.status_code == 201  # type: ignore[attr-defined]
    assert a.json()["id"] != b.json()["id"]  # type: ignore[attr-defined]


def test_keys_are_kept_at_least_24_hours(container: Container, client: TestClient, world: World,
                                         clock: ShiftedClock) -> None:
    first = post(client, world, {"email": "day@example.com"})
    clock.advance(timedelta(hours=23, minutes=59))
    assert post(client, world, {"email": "day@example.com"}).json() == first.json()  # type: ignore[attr-defined]
    with container.engine.begin() as conn:
        assert idempotency.purge_expired(conn, now=clock.now()) == 0
    clock.advance(timedelta(minutes=2))
    with container.engine.begin() as conn:
        assert idempotency.purge_expired(conn, now=clock.now()) == 1
        assert conn.execute(select(func.count()).select_from(idempotency_keys)).scalar_one() == 0
    fresh = post(client, world, {"email": "next-day@example.com"})
    assert fresh.status_code == 201  # type: ignore[attr-defined]


def test_bad_idempotency_key_is_refused(client: TestClient, world: World) -> None:
    resp = post(client, world, {"email": "k@example.com"}, key="has space")
    assert resp.status_code == 422  # type: ignore[attr-defined]
    assert resp.json()["errors"][0]["field"] == "Idempotency-Key"  # type: ignore[attr-defined]


def test_every_create_route_accepts_the_key(client: TestClient, world: World) -> None:
    """Each POST route: replay gives the same object. (A bytes body is sent as text/csv.)"""
    bodies: dict[str, Any] = {
        "/api/v1/contacts": {"email": "p@example.com"},
        "/api/v1/stores": {"name": "EU", "platform": "custom", "currency": "EUR"},
        "/api/v1/api-keys": {"name": "deploy"},
        "/api/v1/templates": {"name": "t", "purpose": "marketing",
                              "variants": {"en": {"subject": "Hi", "body": "<p>x</p>", "body_format": "html"}}},
        f"/api/v1/imports?kind=contacts&store_id={world.ids['A1']['store']}": b"email\nup@example.com\n",
        "/api/v1/suppressions": [{"address": "s@example.com"}],
        "/api/v1/messages": {"contact_id": world.ids["A1"]["contact"], "channel": "email",
                             "templates": {"email": world.ids["A1"]["template"]}},
        "/api/v1/suppressions/import": b"address\nt@example.com\n"}
    creates = [p for p, ops in client.app.openapi()["paths"].items()  # type: ignore[attr-defined]
               if "post" in ops and p.startswith("/api/v1/") and "{" not in p]  # collections, not actions
    assert sorted(creates) == sorted(p.split("?")[0] for p in bodies), "a new create route: add a body for it here"
    for path, body in bodies.items():
        headers = {**world.callers["A"].headers, "Idempotency-Key": f"key-{path}"}
        send: dict[str, Any] = ({"content": body, "headers": {**headers, "Content-Type": "text/csv"}}
                                if isinstance(body, bytes) else {"json": body, "headers": headers})
        first = client.post(path, **send)
        second = client.post(path, **send)
        assert first.status_code == 201, first.text
        assert second.json() == first.json(), path
