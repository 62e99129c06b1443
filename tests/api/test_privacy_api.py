"""The suppression list, GDPR export/erase and retention settings over HTTP, on both backends:
who may call what (a store key is refused where the workspace owns the data), the CSV export
imported back unchanged, bad import rows reported by line, and an erasure end to end."""

from __future__ import annotations

import csv
import io
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from herald.bootstrap import Container
from herald.db.tables import erasures
from tests.api.conftest import World

API = "/api/v1"


def add(client: TestClient, headers: dict[str, str], entries: list[dict[str, Any]]) -> Any:
    return client.post(f"{API}/suppressions", headers=headers, json=entries)


def upload(client: TestClient, headers: dict[str, str], text: str, **params: str) -> Any:
    return client.post(f"{API}/suppressions/import", headers=headers, params=params,
                       files={"file": ("list.csv", text.encode(), "text/csv")})


def test_store_keys_are_refused_where_the_workspace_owns_the_data(client: TestClient, world: World) -> None:
    store = world.callers["A1"].headers
    contact = world.ids["A1"]["contact"]
    calls = [("GET", f"{API}/suppressions", None), ("GET", f"{API}/suppressions?format=csv", None),
             ("POST", f"{API}/suppressions", [{"address": "x@example.com"}]),
             ("DELETE", f"{API}/suppressions/email/x@example.com", None),
             ("GET", f"{API}/settings/retention", None),
             ("PUT", f"{API}/settings/retention", {"retention_days": {"events": 10}}),
             ("POST", f"{API}/contacts/{contact}/erase", None)]
    for method, url, body in calls:
        resp = client.request(method, url, headers=store, json=body)
        assert resp.status_code == 403, f"{method} {url}: {resp.status_code} {resp.text}"
        assert resp.headers["content-type"] == "application/problem+json"
        assert "workspace" in resp.json()["detail"]
    resp = upload(client, store, "address\nx@example.com\n")
    assert resp.status_code == 403
    # A store key's erase of a contact it cannot see is 404, as everywhere; its own contact stays.
    assert client.post(f"{API}/contacts/{world.ids['A2']['contact']}/erase", headers=store).status_code == 404
    assert client.get(f"{API}/contacts/{contact}", headers=store).status_code == 200


def test_add_list_and_remove(client: TestClient, world: World) -> None:
    ws, other = world.callers["A"].headers, world.callers["B"].headers
    resp = add(client, ws, [{"address": "Ana@Example.com", "reason": "unsubscribed", "detail": "by phone"},
                            {"channel": "sms", "address": "+14155550111"},
                            {"address": "ana@example.com"}])
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"added": 2, "unchanged": 1}
    bad = add(client, ws, [{"address": "ok@example.com"}, {"address": "nope"}, {"channel": "fax", "address": "x"}])
    assert bad.status_code == 422
    assert [f["field"] for f in bad.json()["errors"]] == ["1", "2"]
    assert add(client, ws, [{"address": "x@example.com", "reason": "erased"}]).status_code == 422
    assert add(client, ws, []).status_code == 422
    page = client.get(f"{API}/suppressions", headers=ws, params={"limit": 1}).json()
    assert [r["address"] for r in page["data"]] == ["ana@example.com"]
    rest = client.get(f"{API}/suppressions", headers=ws, params={"cursor": page["next_cursor"]}).json()
    assert [(r["channel"], r["address"], r["source"]) for r in rest["data"]] == [("sms", "+14155550111", "api")]
    assert client.get(f"{API}/suppressions", headers=ws, params={"reason": "bored"}).status_code == 422
    assert client.get(f"{API}/suppressions", headers=other).json()["data"] == []  # another workspace's list
    assert client.delete(f"{API}/suppressions/email/ana@example.com", headers=other).status_code == 404
    assert client.delete(f"{API}/suppressions/email/ANA@example.com", headers=ws).status_code == 204
    assert client.delete(f"{API}/suppressions/email/ana@example.com", headers=ws).status_code == 404
    assert client.delete(f"{API}/suppressions/sms/+14155550111", headers=ws).status_code == 204
    assert add(client, ws, [{"address": "a/b@example.com"}]).json() == {"added": 1, "unchanged": 0}
    assert client.delete(f"{API}/suppressions/email/a/b@example.com", headers=ws).status_code == 204
    assert client.get(f"{API}/suppressions", headers=ws).json()["data"] == []


def test_csv_export_imports_back_unchanged(client: TestClient, world: World) -> None:
    a, b = world.callers["A"].headers, world.callers["B"].headers
    entries = [{"address": f"user{i}@example.com", "reason": "hard_bounce", "detail": f"550, \"no\" {i}"}
               for i in range(30)]
    entries += [{"channel": "whatsapp", "address": "+5511987654321", "reason": "complaint"},
                {"address": "=sum@example.com", "detail": "=1+2"}]
    assert add(client, a, entries).json() == {"added": 32, "unchanged": 0}
    exported = client.get(f"{API}/suppressions", headers=a, params={"format": "csv"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text, newline="")))
    assert len(rows) == 32 and rows[0]["address"] == "user0@example.com" and rows[-1]["address"] == "'=sum@example.com"
    resp = upload(client, b, exported.text)
    assert resp.status_code == 201, resp.text
    assert resp.json() == {"added": 32, "unchanged": 0, "failed": 0, "errors": []}
    again = upload(client, a, exported.text)
    assert again.json() == {"added": 0, "unchanged": 32, "failed": 0, "errors": []}
    b_export = client.get(f"{API}/suppressions", headers=b, params={"format": "csv"}).text

    def essentials(text: str) -> list[tuple[str, ...]]:
        return [(r["channel"], r["address"], r["reason"], r["detail"]) for r in csv.DictReader(io.StringIO(text))]

    assert essentials(b_export) == essentials(exported.text)
    only_sms = client.get(f"{API}/suppressions", headers=a, params={"format": "csv", "channel": "whatsapp"}).text
    assert len(list(csv.DictReader(io.StringIO(only_sms)))) == 1


def test_import_reports_bad_rows_by_line(client: TestClient, world: World) -> None:
    ws = world.callers["A"].headers
    text = "address,channel,reason\nok@example.com,,\nnot-an-email,email,\n+4915112345678,sms,unsubscribed\n" \
           "+49 151,sms,\nlast@example.com,email,bogus\n"
    resp = upload(client, ws, text, reason="unsubscribed")
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert (body["added"], body["unchanged"], body["failed"]) == (2, 0, 3)
    assert [e["line"] for e in body["errors"]] == [3, 5, 6]
    raw_headers = {**ws, "Content-Type": "text/csv", "Idempotency-Key": "import-1"}
    raw = client.post(f"{API}/suppressions/import", headers=raw_headers, content=b"address\r\nraw@example.com\r\n")
    assert raw.status_code == 201 and raw.json()["added"] == 1
    replay = client.post(f"{API}/suppressions/import", headers=raw_headers, content=b"address\r\nraw@example.com\r\n")
    assert replay.json() == raw.json() and replay.headers["Idempotent-Replayed"] == "true"
    reasons = {r["address"]: r["reason"] for r in client.get(f"{API}/suppressions", headers=ws).json()["data"]}
    assert reasons == {"ok@example.com": "unsubscribed", "+4915112345678": "unsubscribed",
                       "raw@example.com": "manual"}
    for bad_file, problem in ((b"", "is empty"), (b"email\nx@example.com\n", "address"),
                              ("address\ncaf\u00e9@example.com\n".encode("latin-1"), "UTF-8")):
        resp = client.post(f"{API}/suppressions/import", headers={**ws, "Content-Type": "text/csv"}, content=bad_file)
        assert resp.status_code == 422 and problem in resp.json()["detail"], resp.text
    assert upload(client, ws, "address\nx@example.com\n", reason="erased").status_code == 422


def test_export_and_erase_a_contact(client: TestClient, world: World, container: Container) -> None:
    ws, b = world.callers["A"].headers, world.callers["B"].headers
    contact = world.ids["A1"]["contact"]
    email = "buyer0@a1.example"
    add(client, ws, [{"address": email, "reason": "unsubscribed"}])
    exported = client.get(f"{API}/contacts/{contact}/export", headers=ws)
    assert exported.status_code == 200 and exported.headers["content-type"] == "application/json"
    doc = exported.json()
    assert doc["contact"]["email"] == email and doc["scope"] == {"store_id": None}
    assert [(s["address"], s["reason"]) for s in doc["suppressions"]] == [(email, "unsubscribed")]
    own = client.get(f"{API}/contacts/{contact}/export", headers=world.callers["A1"].headers).json()
    assert own["scope"] == {"store_id": world.ids["A1"]["store"]}
    assert client.get(f"{API}/contacts/{contact}/export", headers=world.callers["A2"].headers).status_code == 404
    assert client.get(f"{API}/contacts/{contact}/export", headers=b).status_code == 404
    assert client.post(f"{API}/contacts/{contact}/erase", headers=b).status_code == 404

    erased = client.post(f"{API}/contacts/{contact}/erase", headers={**ws, "Idempotency-Key": "erase-1"})
    assert erased.status_code == 200, erased.text
    body = erased.json()
    assert body["contact_id"] == contact and body["tombstones"] == 1
    assert body["removed"]["contacts"] == 1 and body["removed"]["suppressions"] == 1
    replay = client.post(f"{API}/contacts/{contact}/erase", headers={**ws, "Idempotency-Key": "erase-1"})
    assert replay.status_code == 200 and replay.json() == body
    assert client.post(f"{API}/contacts/{contact}/erase", headers=ws).status_code == 404
    assert client.get(f"{API}/contacts/{contact}", headers=ws).status_code == 404
    assert client.get(f"{API}/contacts/{contact}/export", headers=ws).status_code == 404
    listed = client.get(f"{API}/suppressions", headers=ws, params={"address": email}).json()["data"]
    assert [(r["address"][:5], r["reason"], r["source"]) for r in listed] == [("hmac:", "erased", "erasure")]
    stone = listed[0]["address"]
    for address in (email, stone):
        resp = client.delete(f"{API}/suppressions/email/{address}", headers=ws)
        assert resp.status_code == 409 and "erased" in resp.json()["detail"]
    assert add(client, ws, [{"address": email}]).json() == {"added": 0, "unchanged": 1}
    with container.engine.begin() as conn:
        log = conn.execute(select(erasures.c.actor, erasures.c.contact_id)).one()
    assert tuple(log) == (world.callers["A"].key_id, contact)


def test_retention_settings(client: TestClient, world: World) -> None:
    ws = world.callers["A"].headers
    first = client.get(f"{API}/settings/retention", headers=ws).json()
    assert first["overrides"] == {} and first["retention_days"] == first["defaults"]
    assert first["defaults"]["events"] == 730 and first["defaults"]["webhook_deliveries"] == 30
    resp = client.put(f"{API}/settings/retention", headers=ws, json={"retention_days": {"events": 90}})
    assert resp.status_code == 200, resp.text
    assert resp.json()["retention_days"]["events"] == 90 and resp.json()["overrides"] == {"events": 90}
    bad = client.put(f"{API}/settings/retention", headers=ws,
                     json={"retention_days": {"events": -1, "photos": 3}})
    assert bad.status_code == 422
    assert sorted(f["field"] for f in bad.json()["errors"]) == ["retention_days.events", "retention_days.photos"]
    assert client.put(f"{API}/settings/retention", headers=ws, json={"days": {}}).status_code == 422
    assert client.get(f"{API}/settings/retention", headers=world.callers["B"].headers).json()["overrides"] == {}


@pytest.mark.parametrize("path", ["/api/v1/suppressions", "/api/v1/settings/retention"])
def test_routes_are_documented(client: TestClient, path: str) -> None:
    assert path in client.app.openapi()["paths"]  # type: ignore[attr-defined]
