"""Contacts CRUD: normalisation, identities, conflicts, cursor pagination."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import World


def test_create_normalises_identities(client: TestClient, world: World) -> None:
    resp = client.post("/api/v1/contacts", headers=world.callers["A"].headers, json={
        "email": "Ana.Souza@Example.COM", "phone": "(11) 98765-4321", "country": "br", "language": "pt_br",
        "timezone": "America/Sao_Paulo", "tags": ["vip", "vip", "wholesale"],
        "external_ids": {"shopify": " 7012345678 "}, "attributes": {"size": "M"}})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    assert body["email"] == "Ana.Souza@example.com"  # local part kept, domain lower-cased
    assert body["phone"] == "+5511987654321"
    assert body["country"] == "BR" and body["language"] == "pt-BR"
    assert body["tags"] == ["vip", "wholesale"]
    assert body["external_ids"] == {"shopify": "7012345678"}
    assert resp.headers["location"] == f"/api/v1/contacts/{body['id']}"
    got = client.get(f"/api/v1/contacts/{body['id']}", headers=world.callers["A"].headers).json()
    assert got == body


def test_identities_are_unique_per_workspace(client: TestClient, world: World) -> None:
    a = world.callers["A"].headers
    first = client.post("/api/v1/contacts", headers=a, json={"phone": "+14155550123", "external_ids": {"crm": "9"}})
    assert first.status_code == 201, first.text
    dup = client.post("/api/v1/contacts", headers=a, json={"email": "z@example.com", "phone": "+1 415 555 0123"})
    assert dup.status_code == 409
    assert dup.json()["errors"][0]["field"] == "phone"
    assert first.json()["id"] in dup.json()["detail"]
    dup = client.post("/api/v1/contacts", headers=a, json={"external_ids": {"crm": "9"}})
    assert dup.status_code == 409 and dup.json()["errors"][0]["field"] == "external_ids.crm"
    # another workspace may have the same person
    other = client.post("/api/v1/contacts", headers=world.callers["B"].headers, json={"phone": "+14155550123"})
    assert other.status_code == 201


def test_lookup_by_email_and_phone(client: TestClient, world: World) -> None:
    a = world.callers["A"].headers
    made = client.post("/api/v1/contacts", headers=a, json={"email": "find@Example.com", "phone": "+4915123456789"})
    assert made.status_code == 201, made.text
    for params in ({"email": "find@EXAMPLE.com"}, {"phone": "+49 151 23456789"}):
        data = client.get("/api/v1/contacts", headers=a, params=params).json()["data"]
        assert [c["id"] for c in data] == [made.json()["id"]]


def test_patch_changes_only_what_is_sent(client: TestClient, world: World) -> None:
    a = world.callers["A"].headers
    cid = client.post("/api/v1/contacts", headers=a, json={"email": "p@example.com", "first_name": "Pat",
                                                            "tags": ["x"]}).json()["id"]
    resp = client.patch(f"/api/v1/contacts/{cid}", headers=a, json={"last_name": "Lee", "phone": "+33612345678"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["first_name"], body["last_name"], body["phone"], body["tags"]) == ("Pat", "Lee", "+33612345678", ["x"])
    assert body["updated_at"] >= body["created_at"]
    # clearing the email frees that identity for another contact
    assert client.patch(f"/api/v1/contacts/{cid}", headers=a, json={"email": None}).json()["email"] is None
    assert client.post("/api/v1/contacts", headers=a, json={"email": "p@example.com"}).status_code == 201
    # but a contact must keep one identity
    resp = client.patch(f"/api/v1/contacts/{cid}", headers=a, json={"phone": None})
    assert resp.status_code == 422


def test_delete(client: TestClient, world: World) -> None:
    a = world.callers["A"].headers
    cid = client.post("/api/v1/contacts", headers=a, json={"email": "gone@example.com"}).json()["id"]
    assert client.delete(f"/api/v1/contacts/{cid}", headers=a).status_code == 204
    assert client.get(f"/api/v1/contacts/{cid}", headers=a).status_code == 404
    assert client.post("/api/v1/contacts", headers=a, json={"email": "gone@example.com"}).status_code == 201


def test_cursor_pagination_walks_everything_once(client: TestClient, world: World) -> None:
    b = world.callers["B"].headers
    made = [client.post("/api/v1/contacts", headers=b, json={"email": f"p{i}@example.com"}).json()["id"]
            for i in range(7)]
    seen: list[str] = []
    cursor = None
    for _ in range(10):  # bounded: 7 + 1 contacts in pages of 3 need 3 pages
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/contacts", headers=b, params=params).json()
        assert len(page["data"]) <= 3
        seen += [c["id"] for c in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert cursor is None
    assert seen == sorted(seen) and len(seen) == len(set(seen))
    assert set(made) <= set(seen) and len(seen) == len(made) + 1  # + the world's contact in B1
