"""Explicit merges through the API: POST /contacts/{id}/merge, GET /contacts/{id}/merges, and the
commerce aggregates on ContactOut. Both backends (the `container` fixture)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Connection, func, insert, select

from herald.bootstrap import Container
from herald.db.tables import checkouts, consent_records, contact_merges, events, orders, stores
from herald.domain.ids import new_id
from herald.services import identity
from herald.services.pagination import encode_cursor
from tests.api.conftest import World

API = "/api/v1/contacts"


def make(client: TestClient, headers: dict[str, str], **body: Any) -> str:
    resp = client.post(API, headers=headers, json=body)
    assert resp.status_code == 201, resp.text
    return str(resp.json()["id"])


def merge(client: TestClient, headers: dict[str, str], keep: str, body: dict[str, Any]) -> Any:
    return client.post(f"{API}/{keep}/merge", headers=headers, json=body)


def buy(conn: Connection, world: World, store: str, contact_id: str, *, n: int, total: int, currency: str,
        at: datetime, cancelled: bool = False) -> None:
    """An order, a checkout, an event and a consent record of `contact_id` in `store`."""
    store_id = world.ids[store]["store"]
    ws_id = _workspace_of(conn, store_id)
    conn.execute(insert(orders).values(
        id=new_id("ord"), workspace_id=ws_id, store_id=store_id, contact_id=contact_id, external_id=f"o{n}",
        currency=currency, total_minor=total, placed_at=at, created_at=at, updated_at=at,
        cancelled_at=at if cancelled else None))
    conn.execute(insert(checkouts).values(
        id=new_id("chk"), workspace_id=ws_id, store_id=store_id, contact_id=contact_id, external_id=f"c{n}",
        currency=currency, started_at=at - timedelta(minutes=5), created_at=at, updated_at=at))
    conn.execute(insert(events).values(
        id=new_id("evt"), workspace_id=ws_id, store_id=store_id, contact_id=contact_id, name="Order Completed",
        source="test", occurred_at=at, received_at=at))
    conn.execute(insert(consent_records).values(
        workspace_id=ws_id, store_id=store_id, contact_id=contact_id, channel="email", purpose="marketing",
        state="granted", source="test", recorded_at=at))


def _workspace_of(conn: Connection, store_id: str) -> str:
    return str(conn.execute(select(stores.c.workspace_id).where(stores.c.id == store_id)).scalar_one())


def owners(conn: Connection, table: Any, ids: set[str]) -> set[str]:
    return set(conn.execute(select(table.c.contact_id).where(table.c.contact_id.in_(ids))).scalars())


def test_merge_moves_everything_recomputes_aggregates_and_is_recorded(
        client: TestClient, world: World, container: Container) -> None:
    a = world.callers["A"].headers
    keep = make(client, a, email="kay@example.com", first_name="Kay", tags=["vip"],
                store_ids=[world.ids["A1"]["store"]])
    gone = make(client, a, phone="+14155550100", first_name="K.", last_name="Lo", tags=["eu"],
                external_ids={"crm": "77"}, store_ids=[world.ids["A2"]["store"]])
    t0 = container.clock.now()
    with container.engine.begin() as conn:
        buy(conn, world, "A1", keep, n=1, total=1250, currency="USD", at=t0 - timedelta(days=3))
        buy(conn, world, "A2", gone, n=2, total=500, currency="EUR", at=t0 - timedelta(days=5))
        buy(conn, world, "A2", gone, n=3, total=900, currency="EUR", at=t0 - timedelta(days=1), cancelled=True)
        identity.recompute_aggregates(conn, [keep, gone], t0)

    before = client.get(f"{API}/{keep}", headers=a).json()
    assert (before["orders_count"], before["total_spent"], before["total_spent_minor"]) == (
        1, {"USD": "12.50"}, {"USD": 1250})
    assert client.get(f"{API}/{gone}", headers=a).json()["total_spent"] == {"EUR": "5.00"}

    resp = merge(client, {**a, "Idempotency-Key": "merge-1"}, keep, {"merge_id": gone, "reason": "same buyer"})
    assert resp.status_code == 200, resp.text
    kept = resp.json()
    assert kept["id"] == keep
    assert (kept["email"], kept["phone"], kept["first_name"], kept["last_name"]) == (
        "kay@example.com", "+14155550100", "Kay", "Lo")
    assert kept["tags"] == ["vip", "eu"] and kept["external_ids"] == {"crm": "77"}
    assert set(kept["store_ids"]) == {world.ids["A1"]["store"], world.ids["A2"]["store"]}
    assert kept["orders_count"] == 2  # the cancelled order does not count
    assert kept["total_spent"] == {"EUR": "5.00", "USD": "12.50"}
    assert kept["total_spent_minor"] == {"EUR": 500, "USD": 1250}
    assert datetime.fromisoformat(kept["first_order_at"]) == t0 - timedelta(days=5)
    assert datetime.fromisoformat(kept["last_order_at"]) == t0 - timedelta(days=3)
    # the cancelled order's checkout still counts as a checkout
    assert datetime.fromisoformat(kept["last_checkout_at"]) == t0 - timedelta(days=1, minutes=5)
    assert client.get(f"{API}/{keep}", headers=a).json() == kept

    gone_resp = client.get(f"{API}/{gone}", headers=a)
    assert gone_resp.status_code == 404
    assert f"merged into {keep!r}" in gone_resp.json()["detail"]
    with container.engine.begin() as conn:
        for table in (orders, checkouts, events, consent_records):
            assert owners(conn, table, {keep, gone}) == {keep}, table.name
    # the merged contact's identities now find the kept one
    found = client.get(API, headers=a, params={"phone": "+1 415 555 0100"}).json()["data"]
    assert [c["id"] for c in found] == [keep]

    history = client.get(f"{API}/{keep}/merges", headers=a)
    assert history.status_code == 200, history.text
    [record] = history.json()["data"]
    assert (record["kept_contact_id"], record["merged_contact_id"], record["reason"], record["actor"]) == (
        keep, gone, "same buyer", world.callers["A"].key_id)
    assert history.json()["next_cursor"] is None

    replay = merge(client, {**a, "Idempotency-Key": "merge-1"}, keep, {"merge_id": gone, "reason": "same buyer"})
    assert replay.status_code == 200 and replay.json() == kept
    assert replay.headers["idempotent-replayed"] == "true"
    assert len(client.get(f"{API}/{keep}/merges", headers=a).json()["data"]) == 1


def test_merging_an_already_merged_contact_is_404(client: TestClient, world: World) -> None:
    a = world.callers["A"].headers
    keep, gone = make(client, a, email="k2@example.com"), make(client, a, email="g2@example.com")
    assert merge(client, a, keep, {"merge_id": gone, "reason": "dupe"}).status_code == 200
    again = merge(client, a, keep, {"merge_id": gone, "reason": "dupe"})
    assert again.status_code == 404 and again.json()["errors"][0]["field"] == "merge_id"
    # and the merged id can no longer keep anything
    assert merge(client, a, gone, {"merge_id": keep, "reason": "dupe"}).status_code == 404


def test_refusals_are_422_and_change_nothing(client: TestClient, world: World, container: Container) -> None:
    a = world.callers["A"].headers
    keep, other = make(client, a, email="r1@example.com"), make(client, a, email="r2@example.com")
    cases = [({"merge_id": keep, "reason": "self"}, "merge_id"),
             ({"merge_id": other, "reason": "   "}, "reason"),
             ({"merge_id": other, "reason": "x" * 201}, "reason"),
             ({"merge_id": other}, "reason"),
             ({"merge_id": other, "reason": "ok", "force": True}, "force")]
    for body, field in cases:
        resp = merge(client, a, keep, body)
        assert resp.status_code == 422, (body, resp.text)
        assert resp.headers["content-type"] == "application/problem+json"
        assert [e["field"] for e in resp.json()["errors"]] == [field], (body, resp.text)
    assert client.get(f"{API}/{other}", headers=a).status_code == 200
    with container.engine.begin() as conn:
        assert conn.execute(select(func.count()).select_from(contact_merges)).scalar_one() == 0


def test_tenancy_other_workspace_and_other_store_are_404(client: TestClient, world: World,
                                                         container: Container) -> None:
    ids = {name: world.ids[name]["contact"] for name in ("A1", "A2", "B1")}
    h = {name: world.callers[name].headers for name in ("A", "A1", "A2", "B")}
    body = {"reason": "probe"}
    attempts = [
        ("B", ids["A1"], {**body, "merge_id": ids["B1"]}, None),  # path contact of another workspace
        ("A", ids["A1"], {**body, "merge_id": ids["B1"]}, "merge_id"),  # merged contact of another workspace
        ("A1", ids["A1"], {**body, "merge_id": ids["A2"]}, "merge_id"),  # another store of the workspace
        ("A1", ids["A2"], {**body, "merge_id": ids["A1"]}, None),
        ("A1", ids["A2"], {}, None),  # a foreign path id is 404 whatever the body
        ("B", ids["A1"], {"merge_id": "x", "reason": " "}, None),
    ]
    for caller, keep, payload, field in attempts:
        resp = merge(client, h[caller], keep, payload)
        assert resp.status_code == 404, (caller, keep, payload, resp.text)
        errors = [e["field"] for e in resp.json().get("errors") or []]
        assert errors == ([field] if field else []), resp.text
    for caller, keep in (("B", ids["A1"]), ("A1", ids["A2"])):
        assert client.get(f"{API}/{keep}/merges", headers=h[caller]).status_code == 404
    for name, contact_id in ids.items():  # nothing moved
        owner = "A" if name != "B1" else "B"
        assert client.get(f"{API}/{contact_id}", headers=h[owner]).status_code == 200
    with container.engine.begin() as conn:
        assert conn.execute(select(func.count()).select_from(contact_merges)).scalar_one() == 0


def test_a_store_key_merges_the_contacts_of_its_store(client: TestClient, world: World) -> None:
    a1 = world.callers["A1"].headers
    dupe = make(client, a1, phone="+33612345678")
    resp = merge(client, a1, world.ids["A1"]["contact"], {"merge_id": dupe, "reason": "same person"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["phone"] == "+33612345678"
    [record] = client.get(f"{API}/{world.ids['A1']['contact']}/merges", headers=a1).json()["data"]
    assert record["actor"] == world.callers["A1"].key_id
    # a workspace key sees the same history; A2's key does not see the contact at all
    assert len(client.get(f"{API}/{world.ids['A1']['contact']}/merges",
                          headers=world.callers["A"].headers).json()["data"]) == 1


def test_merge_history_pages_and_follows_chains(client: TestClient, world: World) -> None:
    b = world.callers["B"].headers
    keep = make(client, b, email="hub@example.com")
    dupes = [make(client, b, email=f"d{i}@example.com") for i in range(5)]
    for i, dupe in enumerate(dupes):
        assert merge(client, b, keep, {"merge_id": dupe, "reason": f"dupe {i}"}).status_code == 200
    seen: list[str] = []
    cursor = None
    for _page in range(10):
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"{API}/{keep}/merges", headers=b, params=params).json()
        seen += [r["merged_contact_id"] for r in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == dupes
    for bad in ("nonsense", encode_cursor("ct_not_a_number")):
        resp = client.get(f"{API}/{keep}/merges", headers=b, params={"cursor": bad})
        assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "cursor"
    # a chain: hub into top; the first duplicate's id now points at top
    top = make(client, b, email="top@example.com")
    assert merge(client, b, top, {"merge_id": keep, "reason": "hub was a duplicate too"}).status_code == 200
    resp = client.get(f"{API}/{dupes[0]}", headers=b)
    assert resp.status_code == 404 and f"merged into {top!r}" in resp.json()["detail"]
    assert [r["merged_contact_id"] for r in client.get(f"{API}/{top}/merges", headers=b).json()["data"]] == [keep]
