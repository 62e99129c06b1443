"""API keys: format, hashed storage, scopes, revocation, last-used time."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import select, text

from herald.bootstrap import Container
from herald.db.tables import api_keys
from herald.domain.clock import ShiftedClock
from tests.api.conftest import World

KEY_FORMAT = re.compile(r"^hsk_[0-9A-Za-z]{43}$")


def test_missing_credentials_get_401_problem_with_challenge(client: TestClient, world: World) -> None:
    resp = client.get("/api/v1/contacts")
    assert resp.status_code == 401
    assert resp.headers["content-type"] == "application/problem+json"
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert "Authorization: Bearer" in resp.json()["detail"]


def test_malformed_and_unknown_keys_are_refused(client: TestClient, world: World) -> None:
    for value, reason in (("nope", "not a Herald API key"), ("hsk_" + "A" * 43, "unknown API key")):
        resp = client.get("/api/v1/contacts", headers={"Authorization": f"Bearer {value}"})
        assert resp.status_code == 401
        assert reason in resp.json()["detail"]
    resp = client.get("/api/v1/contacts", headers={"Authorization": "Basic Zm9vOmJhcg=="})
    assert resp.status_code == 401


def test_only_the_sha256_is_stored(container: Container, client: TestClient, world: World) -> None:
    resp = client.post("/api/v1/api-keys", headers=world.callers["A"].headers, json={"name": "ci"})
    assert resp.status_code == 201, resp.text
    key = resp.json()["key"]
    assert KEY_FORMAT.match(key)
    with container.engine.begin() as conn:
        row = conn.execute(select(api_keys).where(api_keys.c.id == resp.json()["id"])).mappings().one()
        dump = " ".join(str(v) for r in conn.execute(text("SELECT * FROM api_keys")) for v in r)
    assert row["key_hash"] == hashlib.sha256(key.encode()).hexdigest()
    assert key not in dump
    assert key[len("hsk_") + 8:] not in dump  # not even the secret part beyond the display prefix
    # the key is never shown again
    again = client.get(f"/api/v1/api-keys/{resp.json()['id']}", headers=world.callers["A"].headers).json()
    assert "key" not in again and again["display_prefix"] == key[:12]


def test_new_key_works_and_revocation_is_immediate(client: TestClient, world: World) -> None:
    created = client.post("/api/v1/api-keys", headers=world.callers["A"].headers, json={"name": "tmp"}).json()
    mine = {"Authorization": f"Bearer {created['key']}"}
    assert client.get("/api/v1/me", headers=mine).json()["workspace_id"] == world.callers["A"].principal.workspace_id
    revoked = client.delete(f"/api/v1/api-keys/{created['id']}", headers=world.callers["A"].headers)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    resp = client.get("/api/v1/me", headers=mine)
    assert resp.status_code == 401
    assert "revoked" in resp.json()["detail"]


def test_last_used_is_recorded_coarsely(container: Container, client: TestClient, world: World,
                                        clock: ShiftedClock) -> None:
    caller = world.callers["A1"]

    def last_used() -> object:
        with container.engine.begin() as conn:
            return conn.execute(select(api_keys.c.last_used_at).where(api_keys.c.id == caller.key_id)).scalar()

    assert last_used() is None
    client.get("/api/v1/me", headers=caller.headers)
    first = last_used()
    assert first is not None
    client.get("/api/v1/me", headers=caller.headers)
    assert last_used() == first  # within a minute: no write per request
    clock.advance(timedelta(minutes=2))
    client.get("/api/v1/me", headers=caller.headers)
    assert last_used() > first  # type: ignore[operator]


def test_store_key_scope(client: TestClient, world: World) -> None:
    a1 = world.callers["A1"].headers
    assert client.get("/api/v1/me", headers=a1).json()["store_id"] == world.ids["A1"]["store"]
    # cannot create stores
    resp = client.post("/api/v1/stores", headers=a1, json={"name": "x", "platform": "custom", "currency": "EUR"})
    assert resp.status_code == 403
    # keys it creates are confined to its store; another store's id is invisible
    resp = client.post("/api/v1/api-keys", headers=a1, json={"name": "k", "store_id": world.ids["A2"]["store"]})
    assert resp.status_code == 404
    resp = client.post("/api/v1/api-keys", headers=a1, json={"name": "k"})
    assert resp.status_code == 201 and resp.json()["store_id"] == world.ids["A1"]["store"]
    # contacts it creates are linked to its store, and it cannot link them elsewhere
    resp = client.post("/api/v1/contacts", headers=a1, json={"email": "new@a1.example"})
    assert resp.json()["store_ids"] == [world.ids["A1"]["store"]]
    resp = client.post("/api/v1/contacts", headers=a1,
                       json={"email": "other@a1.example", "store_ids": [world.ids["A2"]["store"]]})
    assert resp.status_code == 404


def test_a_contact_shared_by_two_stores(client: TestClient, world: World) -> None:
    both = [world.ids["A1"]["store"], world.ids["A2"]["store"]]
    made = client.post("/api/v1/contacts", headers=world.callers["A"].headers,
                       json={"email": "shared@example.com", "store_ids": both})
    assert made.status_code == 201, made.text
    cid = made.json()["id"]
    for store in ("A1", "A2"):
        assert client.get(f"/api/v1/contacts/{cid}", headers=world.callers[store].headers).status_code == 200
    # a store key deleting it only unlinks its own store
    assert client.delete(f"/api/v1/contacts/{cid}", headers=world.callers["A1"].headers).status_code == 204
    assert client.get(f"/api/v1/contacts/{cid}", headers=world.callers["A1"].headers).status_code == 404
    left = client.get(f"/api/v1/contacts/{cid}", headers=world.callers["A2"].headers)
    assert left.status_code == 200 and left.json()["store_ids"] == [world.ids["A2"]["store"]]
    # the last store's deletion deletes the contact
    assert client.delete(f"/api/v1/contacts/{cid}", headers=world.callers["A2"].headers).status_code == 204
    assert client.get(f"/api/v1/contacts/{cid}", headers=world.callers["A"].headers).status_code == 404
