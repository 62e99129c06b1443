"""SMS, WhatsApp, push and inbox messages through the `message.send` job (services/messaging.py),
in sandbox mode (domain/sandbox.py: outcomes by address, nothing leaves), on SQLite and
PostgreSQL: sent and then delivered by the simulated callback; an invalid number suppressed; a
throttled send retried; an inbox item written; a retired push token; channel fallback from a
closed WhatsApp window to SMS; US marketing SMS deferred to 08:00 local."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from herald.bootstrap import Container
from herald.db.tables import contacts as contacts_table
from herald.db.tables import inbox_items, jobs, messages, push_subscriptions, suppressions
from herald.domain.auth import Principal
from herald.domain.ids import new_id
from herald.domain.jobs import Retry
from herald.services import consent, identity, messaging, sandbox, templates
from tests.services.support import Shop, make_shop

AFTERNOON_NY = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)  # 13:00 in New York


def world(c: Container) -> tuple[Shop, Principal]:
    c.clock.offset = AFTERNOON_NY - datetime.now(UTC)  # type: ignore[attr-defined]
    shop = make_shop(c.engine, c.clock.now())
    with c.engine.begin() as conn:
        sandbox.set_enabled(conn, shop.workspace_id, True)
    return shop, Principal("test", shop.workspace_id, None)


def contact(c: Container, shop: Shop, phone: str, *, channels: tuple[str, ...] = ("sms",),
            purpose: str = "marketing") -> str:
    with c.engine.begin() as conn:
        person, problems = identity.normalize_person(phone=phone, email=f"c{phone[1:]}@example.net")
        assert not problems
        contact_id = identity.resolve(conn, shop.workspace_id, shop.store.id, person, c.clock.now()).contact_id
        consent.record_many(conn, shop.workspace_id, [consent.ConsentChange(
            contact_id=contact_id, store_id=None, channel=channel, purpose=purpose, state="granted", source="test",
            recorded_at=c.clock.now() - timedelta(days=1)) for channel in channels])
    return contact_id


def template(c: Container, who: Principal, channel: str, variant: dict[str, Any], purpose: str = "marketing",
             **extra: Any) -> dict[str, Any]:
    with c.engine.begin() as conn:
        return templates.create_template(conn, who, name=f"{channel}-{new_id('tpl')}", channel=channel,
                                         purpose=purpose, default_language="en", variants={"en": variant},
                                         store_id=None, now=c.clock.now(), **extra)


def queue(c: Container, shop: Shop, channel: str, tpl: dict[str, Any], to: str, contact_id: str,
          route: tuple[dict[str, str], ...] = ()) -> str:
    with c.engine.begin() as conn:
        return messaging.queue_message(conn, workspace_id=shop.workspace_id, channel=channel, template=tpl, to=to,
                                       now=c.clock.now(), store_id=shop.store.id, contact_id=contact_id,
                                       route=route)


def send(c: Container, message_id: str, attempt: int = 1) -> Any:
    async def run() -> Any:
        try:
            return await messaging.deliver(c.messaging, message_id, attempt=attempt, max_attempts=15)
        finally:
            await c.aclose_providers()
    return asyncio.run(run())


def row(c: Container, message_id: str) -> dict[str, Any]:
    with c.engine.begin() as conn:
        return dict(conn.execute(select(messages).where(messages.c.id == message_id)).mappings().one())


def test_an_sms_is_sent_then_delivered_by_the_simulated_callback(container: Container) -> None:
    shop, who = world(container)
    ana = contact(container, shop, "+12125550100")
    tpl = template(container, who, "sms", {"body": "Hi {{ contact.first_name | default: 'there' }}, 10% off today"})
    message_id = queue(container, shop, "sms", tpl, "+12125550100", ana)
    assert send(container, message_id) is None
    assert (row(container, message_id)["status"], row(container, message_id)["provider"]) == ("sent", "sandbox")
    with container.engine.begin() as conn:
        payload = conn.execute(select(jobs.c.payload).where(jobs.c.kind == sandbox.EVENT_JOB)).scalar_one()
        sandbox.apply_event(conn, payload, container.clock.now())
    assert row(container, message_id)["status"] == "delivered"


def test_an_invalid_number_fails_and_is_suppressed(container: Container) -> None:
    shop, who = world(container)
    bad = contact(container, shop, "+12125550001")
    tpl = template(container, who, "sms", {"body": "Your order shipped"}, purpose="transactional")
    message_id = queue(container, shop, "sms", tpl, "+12125550001", bad)
    send(container, message_id)
    assert (row(container, message_id)["status"], row(container, message_id)["status_reason"]) == \
        ("failed", "invalid_address")
    with container.engine.begin() as conn:
        reasons = conn.execute(select(suppressions.c.channel, suppressions.c.reason)
                               .where(suppressions.c.address == "+12125550001")).all()
    assert [tuple(r) for r in reasons] == [("sms", "invalid")]


def test_a_throttled_send_is_retried_with_the_providers_delay(container: Container) -> None:
    shop, who = world(container)
    slow = contact(container, shop, "+12125550003")
    tpl = template(container, who, "sms", {"body": "x"}, purpose="transactional")
    message_id = queue(container, shop, "sms", tpl, "+12125550003", slow)
    outcome = send(container, message_id)
    assert isinstance(outcome, Retry) and outcome.after == 60.0
    assert (row(container, message_id)["status"], row(container, message_id)["status_reason"]) == \
        ("queued", "throttled")


def test_an_inbox_message_is_written_for_the_contact(container: Container) -> None:
    shop, who = world(container)
    lea = contact(container, shop, "+33612345678", channels=())
    tpl = template(container, who, "inbox", {"title": "Order {{ order.name }}", "body": "It shipped!"},
                   purpose="transactional")
    with container.engine.begin() as conn:
        message_id = messaging.queue_message(conn, workspace_id=shop.workspace_id, channel="inbox", template=tpl,
                                             to=lea, now=container.clock.now(), store_id=shop.store.id,
                                             contact_id=lea, context={"variables": {"order": {"name": "#1002"}}})
    send(container, message_id)
    assert row(container, message_id)["status"] == "delivered"
    with container.engine.begin() as conn:
        item = conn.execute(select(inbox_items).where(inbox_items.c.message_id == message_id)).mappings().one()
    assert (item["contact_id"], item["title"], item["body"]) == (lea, "Order #1002", "It shipped!")


def test_a_push_token_the_provider_rejects_is_retired(container: Container) -> None:
    shop, who = world(container)
    kenji = contact(container, shop, "+819012345678", channels=("push",), purpose="transactional")
    with container.engine.begin() as conn:
        for token in ("fcm-token-ok", "fcm-token-bounce"):
            conn.execute(push_subscriptions.insert().values(
                id=new_id("psub"), workspace_id=shop.workspace_id, contact_id=kenji, kind="fcm", token=token,
                keys={}, created_at=container.clock.now()))
    tpl = template(container, who, "push", {"title": "Shipped", "body": "Your parcel is on its way"},
                   purpose="transactional")
    with container.engine.begin() as conn:
        sent = messaging.queue_push(conn, workspace_id=shop.workspace_id, contact_id=kenji, template=tpl,
                                    now=container.clock.now(), store_id=shop.store.id)
    for message_id in sent:
        send(container, message_id)
    assert sorted(row(container, m)["status"] for m in sent) == ["failed", "sent"]
    with container.engine.begin() as conn:
        retired = conn.execute(select(push_subscriptions.c.token).where(
            push_subscriptions.c.retired_at.is_not(None))).scalars().all()
    assert retired == ["fcm-token-bounce"]


def test_a_closed_whatsapp_window_falls_back_to_sms(container: Container) -> None:
    shop, who = world(container)
    joao = contact(container, shop, "+5511987654321", channels=("whatsapp", "sms"), purpose="transactional")
    session = template(container, who, "whatsapp", {"body": "Olá! Seu pedido saiu."}, purpose="transactional",
                       category="utility")
    sms = template(container, who, "sms", {"body": "Seu pedido saiu."}, purpose="transactional")
    first = queue(container, shop, "whatsapp", session, "+5511987654321", joao,
                  route=({"channel": "sms", "template_id": sms["id"]},))
    send(container, first)
    assert row(container, first)["status_reason"] == "whatsapp:window_closed"
    with container.engine.begin() as conn:
        follow = conn.execute(select(messages).where(messages.c.channel == "sms")).mappings().one()
    assert follow["context"]["fallback_of"] == first
    send(container, follow["id"])
    assert row(container, follow["id"])["status"] == "sent"


def test_us_marketing_sms_waits_for_8_local(container: Container) -> None:
    shop, who = world(container)
    container.clock.offset = datetime(2026, 11, 23, 11, 30, tzinfo=UTC) - datetime.now(UTC)  # type: ignore[attr-defined]
    ana = contact(container, shop, "+12125550100")
    tpl = template(container, who, "sms", {"body": "Flash sale"})
    message_id = queue(container, shop, "sms", tpl, "+12125550100", ana)
    send(container, message_id)
    assert (row(container, message_id)["status"], row(container, message_id)["status_reason"]) == \
        ("queued", "quiet_hours")
    with container.engine.begin() as conn:
        due = conn.execute(select(jobs.c.due_at, jobs.c.payload).where(
            jobs.c.unique_key.like(f"message.send:{message_id}:%"))).one()
    assert due.due_at == datetime(2026, 11, 23, 13, 0, tzinfo=UTC)  # 08:00 in New York
    assert due.payload["channel"] == "sms"


def test_sandbox_mode_never_calls_a_configured_provider(container: Container) -> None:
    shop, _who = world(container)
    with container.engine.begin() as conn:
        rows = sandbox.providers_for(conn, shop.workspace_id, "email")
        assert [r["kind"] for r in rows] == ["sandbox"]
        sandbox.set_enabled(conn, shop.workspace_id, False)
        assert sandbox.providers_for(conn, shop.workspace_id, "email") == []


def test_best_channel_follows_the_countrys_order_and_falls_back(container: Container) -> None:
    from fastapi.testclient import TestClient

    from herald.api.app import create_app
    from herald.services import apikeys

    shop, who = world(container)
    joao = contact(container, shop, "+5511987654321", channels=("whatsapp", "sms", "email"), purpose="transactional")
    with container.engine.begin() as conn:
        conn.execute(contacts_table.update().where(contacts_table.c.id == joao).values(country="BR"))
        _row, key = apikeys.create_key(conn, workspace_id=shop.workspace_id, store_id=None, name="t",
                                       now=container.clock.now())
    session = template(container, who, "whatsapp", {"body": "Olá!"}, purpose="transactional", category="utility")
    sms = template(container, who, "sms", {"body": "Olá!"}, purpose="transactional")
    with TestClient(create_app(container), raise_server_exceptions=False) as client:
        queued = client.post("/api/v1/messages", headers={"Authorization": f"Bearer {key}"}, json={
            "contact_id": joao, "channel": "best", "templates": {"whatsapp": session["id"], "sms": sms["name"]}})
        assert queued.status_code == 201, queued.text
        [first] = queued.json()["message_ids"]
        assert row(container, first)["channel"] == "whatsapp"  # BR: whatsapp, sms, email
        send(container, first)  # no message from the contact in 24 h: refused on WhatsApp
        shown = client.get(f"/api/v1/messages/{first}", headers={"Authorization": f"Bearer {key}"}).json()
    assert (shown["status"], shown["status_reason"]) == ("suppressed", "whatsapp:window_closed")
    assert [h["status"] for h in shown["history"]] == ["suppressed"]
    with container.engine.begin() as conn:
        follow = conn.execute(select(messages).where(messages.c.channel == "sms")).mappings().one()
    assert (follow["context"]["fallback_of"], follow["to_address"]) == (first, "+5511987654321")
