"""GDPR/CCPA export and erasure (services/privacy.py) on SQLite and PostgreSQL.

A person (contact Ana, a contact merged into her, a contact pointing at her with merged_into_id)
with something in every table that can hold her data; a second person (Bruno) who must come
through untouched. After erasure, every text, JSON and binary column of every table is scanned
for Ana's addresses."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import JSON, Connection, Engine, LargeBinary, String, Text, func, insert, select, update

from herald.bootstrap import Container
from herald.db import jobs as jobs_db
from herald.db.tables import (
    checkouts,
    consent_records,
    contacts,
    erasures,
    events,
    fulfillments,
    idempotency_keys,
    jobs,
    message_events,
    messages,
    metadata,
    order_lines,
    orders,
    refunds,
    suppressions,
    webhook_deliveries,
)
from herald.domain.auth import Principal
from herald.domain.clock import ShiftedClock
from herald.domain.errors import NotFound
from herald.domain.ids import new_id
from herald.services import apikeys, privacy
from herald.services import contacts as contact_service
from herald.services import suppressions as suppression_list
from tests.services.support import Shop, make_shop

ANA_EMAIL = "Ana.Souza@Example.COM"
ANA_PHONE = "+5511987654321"
ANA_WORK = "ana.work@example.org"  # the contact merged into Ana
ANA_OLD = "ana.old@example.net"  # a contact whose merged_into_id is Ana
SECRETS = ("ana.souza@example.com", ANA_PHONE, ANA_WORK, ANA_OLD, "5511987654321")


@dataclass
class Person:
    contact_id: str
    merged_id: str  # merged into contact_id by services.identity.merge (deleted)
    pointing_id: str  # contacts.merged_into_id = contact_id
    order_id: str
    message_id: str
    extra: dict[str, Any] = field(default_factory=dict)


def make_person(conn: Connection, shop: Shop, now: datetime, *, first_name: str, email: str, phone: str | None,
                work: str | None = None, old: str | None = None, api_key_id: str | None = None) -> Person:
    """A contact with a row in every table that can hold a person's data."""
    ws, store = shop.workspace_id, shop.store.id
    who = Principal("test", ws, None)
    main = contact_service.create_contact(conn, who, {
        "email": email, "phone": phone, "first_name": first_name, "store_ids": [store],
        "external_ids": {"crm": f"crm-{first_name}"}, "attributes": {"email_again": email}}, now)["id"]
    merged_id = pointing_id = ""
    if work:
        merged_id = contact_service.create_contact(conn, who, {"email": work, "store_ids": [shop.other.id]},
                                                   now)["id"]
        contact_service.merge_contacts(conn, who, main, merged_id, reason=f"same person as {work}", now=now)
    if old:
        pointing_id = contact_service.create_contact(conn, who, {"email": old}, now)["id"]
        conn.execute(update(contacts).where(contacts.c.id == pointing_id).values(merged_into_id=main))
        conn.execute(insert(consent_records).values(workspace_id=ws, contact_id=pointing_id, channel="email",
                                                    purpose="marketing", state="granted", source="old",
                                                    recorded_at=now))
    conn.execute(insert(consent_records).values(
        workspace_id=ws, contact_id=main, store_id=store, channel="email", purpose="marketing", state="granted",
        source="checkout", wording_version="v1", ip="203.0.113.9", user_agent="Mozilla/5.0", recorded_at=now))
    conn.execute(insert(events).values(
        id=new_id("evt"), workspace_id=ws, store_id=store, contact_id=main, name="Viewed Product", source="segment",
        properties={"email": email, "sku": "SKU-1"}, occurred_at=now, received_at=now))
    order_id = new_id("ord")
    conn.execute(insert(orders).values(
        id=order_id, workspace_id=ws, store_id=store, contact_id=main, external_id=f"10{first_name}",
        currency="USD", subtotal_minor=4000, total_minor=4999, placed_at=now, created_at=now, updated_at=now))
    conn.execute(insert(order_lines).values(id=new_id("oln"), workspace_id=ws, order_id=order_id, title="Scarf",
                                            quantity=1, unit_price_minor=4000, total_minor=4000))
    conn.execute(insert(fulfillments).values(id=new_id("ful"), workspace_id=ws, store_id=store, order_id=order_id,
                                             external_id=f"f-{first_name}", tracking_numbers=["1Z999"],
                                             created_at=now, updated_at=now))
    conn.execute(insert(refunds).values(id=new_id("rfd"), workspace_id=ws, store_id=store, order_id=order_id,
                                        external_id=f"r-{first_name}", amount_minor=500, currency="USD",
                                        note="damaged", refunded_at=now, created_at=now))
    for i, (owner, address) in enumerate(((main, email), (None, email))):  # the second names only the address
        conn.execute(insert(checkouts).values(
            id=new_id("chk"), workspace_id=ws, store_id=store, contact_id=owner, external_id=f"co-{first_name}-{i}",
            email=address.lower() if i else address, phone=phone, currency="USD", total_minor=4999,
            lines=[{"title": "Scarf", "quantity": 1}], started_at=now, created_at=now, updated_at=now))
    message_id = new_id("msg")
    normal = email.split("@")[0] + "@" + email.split("@")[1].lower()
    conn.execute(insert(messages).values(
        id=message_id, workspace_id=ws, store_id=store, contact_id=main, channel="email", purpose="marketing",
        to_address=normal, status="bounced", status_reason="invalid_address", provider="smtp", cost_minor=1,
        cost_currency="USD", subject=f"Hi {first_name} ({email})", context={"variables": {"email": email}},
        created_at=now, updated_at=now))
    sms_id = new_id("msg")
    if phone:
        conn.execute(insert(messages).values(
            id=sms_id, workspace_id=ws, contact_id=None, channel="sms", purpose="transactional", to_address=phone,
            status="queued", created_at=now, updated_at=now))
    conn.execute(insert(message_events).values(
        workspace_id=ws, message_id=message_id, status="bounced", reason="invalid_address",
        detail={"diagnostic": f"550 5.1.1 <{email}>: user unknown"}, occurred_at=now, recorded_at=now))
    job_id = jobs_db.enqueue(conn, "message.send", {"message_id": message_id}, now=now, workspace_id=ws)
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(
        last_error=f"550 <{email}> unknown", errors=[{"error": f"550 <{email}> unknown"}]))
    suppression_list.suppress(conn, ws, "email", email, "hard_bounce", source="smtp", now=now, message_id=message_id,
                              detail=f"550 <{email}> unknown")
    if phone:
        suppression_list.suppress(conn, ws, "sms", phone, "unsubscribed", source="sms", now=now)
    conn.execute(insert(webhook_deliveries).values(
        id=new_id("whd"), workspace_id=ws, store_id=store, platform="shopify", topic="customers/update",
        dedupe_key=f"cu-{first_name}", headers={"x-shopify-topic": "customers/update"},
        body=json.dumps({"customer": {"email": email}}).encode(), status="processed", received_at=now))
    if phone:
        conn.execute(insert(webhook_deliveries).values(
            id=new_id("whd"), workspace_id=ws, store_id=store, platform="shopify", topic="orders/create",
            dedupe_key=f"oc-{first_name}", body=json.dumps({"phone": phone}).encode(), status="failed",
            detail=f"no such customer {phone}", received_at=now))
        conn.execute(insert(webhook_deliveries).values(  # not processed yet: kept (processing records the order)
            id=new_id("whd"), workspace_id=ws, store_id=store, platform="shopify", topic="orders/paid",
            dedupe_key=f"op-{first_name}", body=json.dumps({"order": 1}).encode(), status="received",
            received_at=now))
    if api_key_id:
        conn.execute(insert(idempotency_keys).values(
            api_key_id=api_key_id, key=f"idem-{first_name}", request_hash="0" * 64, in_flight=False,
            response_status=201, response_body=json.dumps({"id": main, "email": email}), created_at=now,
            expires_at=now + timedelta(hours=24)))
    return Person(main, merged_id, pointing_id, order_id, message_id, {"sms_id": sms_id})


@pytest.fixture
def world(container: Container, clock: ShiftedClock) -> tuple[Shop, Person, Person]:
    now = clock.now()
    shop = make_shop(container.engine, now)
    with container.engine.begin() as conn:
        key, _ = apikeys.create_key(conn, workspace_id=shop.workspace_id, store_id=None, name="t", now=now)
        ana = make_person(conn, shop, now, first_name="Ana", email=ANA_EMAIL, phone=ANA_PHONE, work=ANA_WORK,
                          old=ANA_OLD, api_key_id=key["id"])
        bruno = make_person(conn, shop, now, first_name="Bruno", email="bruno@example.com", phone="+14155550111",
                            api_key_id=key["id"])
    return shop, ana, bruno


def export(container: Container, workspace_id: str, contact_id: str) -> dict[str, Any]:
    with container.engine.connect() as conn:
        chunks = list(privacy.export_contact(conn, workspace_id, contact_id, now=container.clock.now(),
                                             tombstone_key=container.tombstone_key))
    assert len(chunks) > 10  # streamed in pieces, not built as one string
    document: dict[str, Any] = json.loads("".join(chunks))
    return document


def test_export_holds_every_kind_of_data_about_the_contact(container: Container,
                                                            world: tuple[Shop, Person, Person]) -> None:
    shop, ana, bruno = world
    doc = export(container, shop.workspace_id, ana.contact_id)
    assert doc["format"] == "herald.contact-export.v1"
    datetime.fromisoformat(doc["exported_at"])
    assert doc["contact"]["id"] == ana.contact_id and doc["contact"]["email"] == "Ana.Souza@example.com"
    datetime.fromisoformat(doc["contact"]["created_at"])
    assert [c["id"] for c in doc["merged_contacts"]] == [ana.pointing_id]
    assert {(i["kind"], i["value"]) for i in doc["identities"]} >= {
        ("email", "Ana.Souza@example.com"), ("phone", ANA_PHONE), ("email", ANA_WORK), ("external", "crm-Ana"),
        ("email", ANA_OLD)}
    assert {s["store_id"] for s in doc["stores"]} == {shop.store.id, shop.other.id}
    assert [m["merged_contact_id"] for m in doc["merges"]] == [ana.merged_id]
    assert sorted(str(r["ip"]) for r in doc["consent_records"]) == ["203.0.113.9", "None"]
    assert len(doc["checkouts"]) == 2
    [order] = doc["orders"]
    assert order["id"] == ana.order_id and order["total_minor"] == 4999
    assert [len(order[k]) for k in ("lines", "fulfillments", "refunds")] == [1, 1, 1]
    assert doc["events"][0]["properties"]["sku"] == "SKU-1"
    by_id = {m["id"]: m for m in doc["messages"]}
    assert set(by_id) == {ana.message_id, ana.extra["sms_id"]}
    assert by_id[ana.message_id]["events"][0]["status"] == "bounced"
    assert {(s["channel"], s["reason"]) for s in doc["suppressions"]} == {("email", "hard_bounce"),
                                                                          ("sms", "unsubscribed")}
    assert "bruno" not in json.dumps(doc).lower()
    assert "Bruno" in json.dumps(export(container, shop.workspace_id, bruno.contact_id))


def test_export_of_an_unknown_or_foreign_contact_is_404_before_any_output(container: Container,
                                                                           world: tuple[Shop, Person, Person],
                                                                           clock: ShiftedClock) -> None:
    _shop, ana, _bruno = world
    other = make_shop(container.engine, clock.now(), slug="other")
    with container.engine.connect() as conn:
        for ws, contact in ((other.workspace_id, ana.contact_id), (_shop.workspace_id, "ct_nope")):
            with pytest.raises(NotFound):
                privacy.export_contact(conn, ws, contact, now=clock.now())


def find_anywhere(conn: Connection, needle: str) -> list[str]:
    """Every table.column whose text, JSON or bytes contain `needle` (case-insensitively for text)."""
    hits: list[str] = []
    for table in metadata.sorted_tables:
        for column in table.columns:
            if isinstance(column.type, LargeBinary):  # compared here, in Python: independent of the SQL
                found = any(needle.lower().encode() in bytes(value).lower()
                            for value in conn.execute(select(column)).scalars() if value)
            elif isinstance(column.type, String | Text | JSON):
                condition = func.lower(func.cast(column, Text)).contains(needle.lower(), autoescape=True)
                found = bool(conn.execute(select(func.count()).select_from(table).where(condition)).scalar())
            else:
                continue
            if found:
                hits.append(f"{table.name}.{column.name}")
    return hits


def test_erase_leaves_no_trace_but_a_tombstone(container: Container, world: tuple[Shop, Person, Person],
                                               clock: ShiftedClock) -> None:
    shop, ana, bruno = world
    ws, key = shop.workspace_id, container.tombstone_key
    with container.engine.connect() as conn:
        assert find_anywhere(conn, ANA_EMAIL)  # the scan sees the data before erasure
        bruno_before = find_anywhere(conn, "bruno@example.com")
    clock.advance(timedelta(minutes=1))
    with container.engine.begin() as conn:
        done = privacy.erase(conn, ws, ana.contact_id, tombstone_key=key, actor="key_test", now=clock.now())
    assert done.removed["contacts"] == 2 and done.tombstones == 5  # 3 emails + a phone on sms and whatsapp
    assert done.removed["messages"] == 2 and done.removed["message_events"] == 1 and done.removed["jobs"] == 1
    assert done.removed["orders"] == 1 and done.removed["events"] == 1 and done.removed["checkouts"] == 2
    assert done.removed["consent_records"] == 2 and done.removed["merges"] == 1
    assert done.removed["suppressions"] == 2 and done.removed["idempotency_keys"] == 1
    assert done.removed["webhook_deliveries"] == 2 and done.removed["identities"] == 5
    with container.engine.connect() as conn:
        for secret in SECRETS:
            assert find_anywhere(conn, secret) == [], secret
        assert find_anywhere(conn, "bruno@example.com") == bruno_before
        log = dict(conn.execute(select(erasures)).mappings().one())
        order = conn.execute(select(orders).where(orders.c.id == ana.order_id)).mappings().one()
        message = conn.execute(select(messages).where(messages.c.id == ana.message_id)).mappings().one()
        ana_left = conn.execute(select(func.count()).select_from(contacts)
                                .where(contacts.c.id.in_([ana.contact_id, ana.pointing_id]))).scalar()
    assert (log["workspace_id"], log["contact_id"], log["actor"], log["tombstones"]) == (
        ws, ana.contact_id, "key_test", 5)
    assert log["removed"] == done.removed and log["id"] == done.erasure_id
    assert (order["contact_id"], order["total_minor"]) == (None, 4999)
    assert message["to_address"].startswith("hmac:") and message["context"] == {} and message["subject"] is None
    assert (message["status"], message["cost_minor"], message["contact_id"]) == ("bounced", 1, None)
    assert ana_left == 0
    with container.engine.connect() as conn:
        sms = conn.execute(select(messages).where(messages.c.id == ana.extra["sms_id"])).mappings().one()
    assert (sms["status"], sms["status_reason"]) == ("suppressed", "suppressed:erased")
    assert done.removed["queued_messages_suppressed"] == 1
    with container.engine.begin() as conn:
        assert suppression_list.reasons_for(conn, ws, "email", [ANA_EMAIL, ANA_WORK, ANA_OLD], tombstone_key=key) == {
            "ana.souza@example.com": "erased", ANA_WORK: "erased", ANA_OLD: "erased"}
        for channel in ("sms", "whatsapp"):
            assert suppression_list.reasons_for(conn, ws, channel, [ANA_PHONE], tombstone_key=key) == {
                ANA_PHONE: "erased"}
        assert suppression_list.reasons_for(conn, ws, "email", [ANA_EMAIL]) == {}
        assert suppression_list.reasons_for(conn, ws, "email", ["bruno@example.com"], tombstone_key=key) == {
            "bruno@example.com": "hard_bounce"}
        with pytest.raises(NotFound):
            privacy.erase(conn, ws, ana.contact_id, tombstone_key=key, actor="key_test", now=clock.now())
    # Bruno's own data is all still there.
    doc = export(container, ws, bruno.contact_id)
    assert [len(doc[k]) for k in ("events", "orders", "checkouts", "consent_records", "messages")] == [1, 1, 2, 1, 2]


def test_erase_of_a_contact_without_addresses_only_removes_its_rows(container: Container, clock: ShiftedClock) -> None:
    now = clock.now()
    shop = make_shop(container.engine, now)
    with container.engine.begin() as conn:
        contact = contact_service.create_contact(conn, Principal("t", shop.workspace_id, None),
                                                 {"external_ids": {"crm": "77"}}, now)["id"]
        done = privacy.erase(conn, shop.workspace_id, contact, tombstone_key=container.tombstone_key, actor="cli",
                             now=now)
        left = conn.execute(select(func.count()).select_from(suppressions)).scalar()
    assert done.tombstones == 0 and done.removed["contacts"] == 1 and done.removed["identities"] == 1
    assert left == 0


def test_erase_is_one_transaction(container: Container, world: tuple[Shop, Person, Person],
                                  clock: ShiftedClock) -> None:
    shop, ana, _bruno = world
    engine: Engine = container.engine

    def erase_then_crash() -> None:
        with engine.begin() as conn:
            privacy.erase(conn, shop.workspace_id, ana.contact_id, tombstone_key=container.tombstone_key, actor="t",
                          now=clock.now())
            raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        erase_then_crash()
    with engine.connect() as conn:
        assert find_anywhere(conn, ANA_EMAIL)
        assert conn.execute(select(func.count()).select_from(erasures)).scalar() == 0


def test_export_includes_inbox_items_and_push_subscriptions(container: Container,
                                                            world: tuple[Shop, Person, Person]) -> None:
    from herald.db.tables import push_subscriptions
    from herald.domain.ids import new_id
    from herald.services import inbox

    shop, ana, _bruno = world
    with container.engine.begin() as conn:
        inbox.deliver(conn, shop.workspace_id, ana.contact_id, None, shop.store.id, "Your order shipped",
                      "It is on its way", None, container.clock.now())
        conn.execute(push_subscriptions.insert().values(
            id=new_id("psub"), workspace_id=shop.workspace_id, contact_id=ana.contact_id, kind="fcm",
            token="fcm-token-ana", keys={}, created_at=container.clock.now()))
    doc = export(container, shop.workspace_id, ana.contact_id)
    assert [i["title"] for i in doc["inbox_items"]] == ["Your order shipped"]
    assert [s["token"] for s in doc["push_subscriptions"]] == ["fcm-token-ana"]
