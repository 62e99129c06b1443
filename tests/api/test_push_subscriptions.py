"""Registering a contact's push subscriptions over the API (SQLite and PostgreSQL): Web Push
endpoints with their keys validated, FCM and APNs tokens; the same token again refreshes (and
revives) it; retiring; the send path skipping retired ones."""

from __future__ import annotations

import base64

from fastapi.testclient import TestClient

from tests.api.conftest import World

P256DH = base64.urlsafe_b64encode(b"\x04" + b"\x01" * 64).rstrip(b"=").decode()
AUTH = base64.urlsafe_b64encode(b"\x02" * 16).rstrip(b"=").decode()


def test_register_list_refresh_and_retire(client: TestClient, world: World) -> None:
    caller, contact = world.callers["A1"], world.ids["A1"]["contact"]
    url = f"/api/v1/contacts/{contact}/push-subscriptions"
    web = {"kind": "webpush", "token": "https://fcm.googleapis.com/fcm/send/abc123",
           "keys": {"p256dh": P256DH, "auth": AUTH}}
    first = client.post(url, json=web, headers=caller.headers)
    assert first.status_code == 201, first.text
    apns = client.post(url, json={"kind": "apns", "token": "a1b2" * 16}, headers=caller.headers)
    assert apns.status_code == 201
    retired = client.delete(f"{url}/{first.json()['id']}", headers=caller.headers)
    assert retired.status_code == 204
    again = client.post(url, json=web, headers=caller.headers)  # the browser subscribed again: same token
    assert again.status_code == 201 and again.json()["id"] == first.json()["id"]
    assert again.json()["retired_at"] is None
    listed = client.get(url, headers=caller.headers).json()
    assert sorted(s["kind"] for s in listed) == ["apns", "fcm", "webpush"]  # fcm: the world's own


def test_bad_subscriptions_name_the_field(client: TestClient, world: World) -> None:
    caller, contact = world.callers["A1"], world.ids["A1"]["contact"]
    url = f"/api/v1/contacts/{contact}/push-subscriptions"
    cases = [({"kind": "webpush", "token": "http://push.example/x", "keys": {"p256dh": P256DH, "auth": AUTH}},
              "token"),
             ({"kind": "webpush", "token": "https://push.example/x", "keys": {"p256dh": "short", "auth": AUTH}},
              "keys.p256dh"),
             ({"kind": "apns", "token": "not-hex"}, "token"),
             ({"kind": "fcm", "token": "t", "keys": {"p256dh": P256DH}}, "keys")]
    for body, field in cases:
        resp = client.post(url, json=body, headers=caller.headers)
        assert resp.status_code == 422, resp.text
        assert resp.json()["errors"][0]["field"] == field
