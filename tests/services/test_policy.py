"""The send-time policy on the database (services/policy.py) and in the email send job, on SQLite
and PostgreSQL, with real SMTP to an aiosmtpd sink: an unsubscribe recorded mid-broadcast stops
the remaining sends to that contact; quiet hours defer a message to the next allowed minute and
it is sent then; frequency caps; the settings and refusal counts over the API."""

# ruff: noqa: F811  (the email tests' fixtures are imported, then named as parameters)
from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from herald.api.app import create_app
from herald.bootstrap import Container
from herald.db.tables import contacts, jobs, message_events
from herald.domain.policy import SendRequest
from herald.services import apikeys, consent, feedback, policy, suppressions
from tests.dnsserver import DnsServer
from tests.services.test_email import (  # noqa: F401  (fixtures)
    Sink,
    World,
    dns,
    mail,
    message,
    queue,
    send,
    setup_world,
    sink,
    subscribe,
)

MORNING = datetime(2026, 11, 23, 14, 0, tzinfo=UTC)


def set_policy(c: Container, world: World, raw: dict[str, Any]) -> None:
    with c.engine.begin() as conn:
        policy.put_settings(conn, world.shop.workspace_id, raw)


def sent_to(handler: Sink) -> list[str]:
    return [rcpt for _from, rcpts, _data in handler.received for rcpt in rcpts]


def test_an_unsubscribe_recorded_mid_broadcast_stops_the_remaining_sends(
        mail: Container, dns: DnsServer, sink: tuple[Sink, int]) -> None:
    handler, port = sink
    world = setup_world(mail, dns, port)
    set_policy(mail, world, {"frequency_caps": []})
    audience = [f"buyer{i}@example.net" for i in range(4)]
    broadcast = [queue(mail, world, world.marketing, to=address) for _round in range(3) for address in audience]
    first_round, rest = broadcast[:4], broadcast[4:]
    for message_id in first_round:
        send(mail, message_id)
    assert sorted(sent_to(handler)) == sorted(audience)
    with mail.engine.begin() as conn:  # buyer1 clicks one-click unsubscribe in the first email
        assert feedback.unsubscribe(conn, first_round[1], source="one-click", now=mail.clock.now())
    for message_id in rest:
        send(mail, message_id)
    assert sent_to(handler).count("buyer1@example.net") == 1
    for address in ("buyer0@example.net", "buyer2@example.net", "buyer3@example.net"):
        assert sent_to(handler).count(address) == 3
    refused = [message(mail, m) for m in rest if message(mail, m)["to_address"] == "buyer1@example.net"]
    assert [(m["status"], m["status_reason"]) for m in refused] == [("suppressed", "suppressed:unsubscribed")] * 2


def test_quiet_hours_defer_to_the_next_allowed_minute_and_the_message_goes_then(
        mail: Container, dns: DnsServer, sink: tuple[Sink, int]) -> None:
    handler, port = sink
    mail.clock.offset = MORNING - datetime.now(UTC)  # type: ignore[attr-defined]
    world = setup_world(mail, dns, port)
    set_policy(mail, world, {"quiet_hours": {"email": "09:00-17:00"}})
    contact_id = subscribe(mail, world.shop.workspace_id, "kenji@example.jp")
    with mail.engine.begin() as conn:
        conn.execute(update(contacts).where(contacts.c.id == contact_id).values(timezone="Asia/Tokyo"))
    message_id = queue(mail, world, world.marketing, to="kenji@example.jp")  # 23:00 in Tokyo
    send(mail, message_id)
    row = message(mail, message_id)
    assert (row["status"], row["status_reason"]) == ("queued", "quiet_hours")
    assert handler.received == []
    with mail.engine.begin() as conn:
        # the job that ran is `message.send:<id>` (called directly here); the deferral's is new
        due = conn.execute(select(jobs.c.due_at).where(
            jobs.c.unique_key.like(f"message.send:{message_id}:%"), jobs.c.state == "available")).scalars().all()
        deferred = conn.execute(select(message_events.c.reason).where(
            message_events.c.message_id == message_id, message_events.c.status == "deferred")).scalars().all()
    assert due == [datetime(2026, 11, 24, 0, 0, tzinfo=UTC)]  # 09:00 in Tokyo
    assert deferred == ["quiet_hours"]
    mail.clock.offset += due[0] - mail.clock.now()  # type: ignore[attr-defined]
    send(mail, message_id)
    assert message(mail, message_id)["status"] == "sent"
    assert sent_to(handler) == ["kenji@example.jp"]


def test_frequency_caps_refuse_marketing_but_never_transactional(
        mail: Container, dns: DnsServer, sink: tuple[Sink, int]) -> None:
    handler, port = sink
    world = setup_world(mail, dns, port)
    set_policy(mail, world, {"frequency_caps": [{"channel": "email", "limit": 1, "hours": 24}]})
    first, second = (queue(mail, world, world.marketing) for _ in range(2))
    send(mail, first)
    send(mail, second)
    assert message(mail, first)["status"] == "sent"
    assert (message(mail, second)["status"], message(mail, second)["status_reason"]) == \
        ("suppressed", "frequency_cap")
    receipt = queue(mail, world, world.template)
    send(mail, receipt)
    assert message(mail, receipt)["status"] == "sent"
    assert len(handler.received) == 2


def test_marketing_to_an_address_without_consent_is_refused(
        mail: Container, dns: DnsServer, sink: tuple[Sink, int]) -> None:
    handler, port = sink
    world = setup_world(mail, dns, port)
    contact_id = subscribe(mail, world.shop.workspace_id, "ana@example.net")
    with mail.engine.begin() as conn:
        consent.record_many(conn, world.shop.workspace_id, [consent.ConsentChange(
            contact_id=contact_id, store_id=None, channel="email", purpose="marketing", state="withdrawn",
            source="test", recorded_at=mail.clock.now())])
    with mail.engine.begin() as conn:  # queued directly: `queue` would subscribe the address again
        from herald.services import email as email_service
        message_id = email_service.queue_email(conn, workspace_id=world.shop.workspace_id, template=world.marketing,
                                               to="ana@EXAMPLE.net", now=mail.clock.now(),
                                               store_id=world.shop.store.id)
        stranger = email_service.queue_email(conn, workspace_id=world.shop.workspace_id, template=world.marketing,
                                             to="nobody@example.net", now=mail.clock.now(),
                                             store_id=world.shop.store.id)
    send(mail, message_id)
    send(mail, stranger)
    assert message(mail, message_id)["contact_id"] == contact_id  # found by its address
    assert message(mail, message_id)["status_reason"] == "consent:withdrawn"
    assert message(mail, stranger)["status_reason"] == "consent:missing"
    assert handler.received == []


def test_the_loader_reads_the_latest_consent_and_the_suppressions(container: Container) -> None:
    from tests.services.support import make_shop

    now = container.clock.now()
    shop = make_shop(container.engine, now)
    with container.engine.begin() as conn:
        from herald.services import identity
        person, _ = identity.normalize_person(email="lea@example.fr", phone="+33612345678")
        contact_id = identity.resolve(conn, shop.workspace_id, shop.store.id, person, now).contact_id
        changes = [("granted", shop.store.id, 10), ("withdrawn", None, 5), ("granted", shop.store.id, 1)]
        consent.record_many(conn, shop.workspace_id, [consent.ConsentChange(
            contact_id=contact_id, store_id=store, channel="email", purpose="marketing", state=state,
            source="test", recorded_at=now - timedelta(days=days)) for state, store, days in changes])
        suppressions.suppress(conn, shop.workspace_id, "sms", "+33612345678", "hard_bounce", source="test", now=now)
        requests = [SendRequest("m1", contact_id, shop.store.id, "email", "marketing", "lea@example.fr",
                                sending_domain="nowhere.example"),
                    SendRequest("m2", contact_id, shop.other.id, "email", "marketing", "lea@example.fr"),
                    SendRequest("m3", contact_id, shop.store.id, "sms", "transactional", "+33612345678")]
        decisions = policy.decide_batch(conn, shop.workspace_id, requests, now=now)
    assert [d.code for d in decisions] == ["domain_unverified", "consent:withdrawn", "suppressed:hard_bounce"]


def test_policy_settings_and_refusal_counts_over_the_api(
        mail: Container, dns: DnsServer, sink: tuple[Sink, int]) -> None:
    world = setup_world(mail, dns, sink[1])
    with mail.engine.begin() as conn:
        _row, key = apikeys.create_key(conn, workspace_id=world.shop.workspace_id, store_id=None, name="t",
                                       now=mail.clock.now())
        _row, store_key = apikeys.create_key(conn, workspace_id=world.shop.workspace_id,
                                             store_id=world.shop.store.id, name="s", now=mail.clock.now())
    auth = {"Authorization": f"Bearer {key}"}
    with TestClient(create_app(mail), raise_server_exceptions=False) as client:
        assert client.get("/api/v1/settings/policy", headers=auth).json()["quiet_hours"]["sms"] == "08:00-21:00"
        bad = client.put("/api/v1/settings/policy", headers=auth,
                         json={"frequency_caps": [{"channel": "email", "limit": 0, "hours": 24}]})
        assert bad.status_code == 422 and "frequency_caps[0].limit" in bad.text
        denied = client.put("/api/v1/settings/policy", headers={"Authorization": f"Bearer {store_key}"}, json={})
        assert denied.status_code == 403
        ok = client.put("/api/v1/settings/policy", headers=auth,
                        json={"frequency_caps": [{"channel": "email", "limit": 1, "hours": 24}]})
        assert ok.status_code == 200 and ok.json()["frequency_caps"] == [{"channel": "email", "limit": 1,
                                                                          "hours": 24.0}]
        for _ in range(3):
            send(mail, queue(mail, world, world.marketing))
        counts = client.get("/api/v1/reports/refusals", headers=auth).json()
    assert counts["data"] == [{"reason": "frequency_cap", "channel": "email", "kind": "refused", "count": 2,
                               "meaning": "the contact reached a frequency cap"}]


@pytest.mark.parametrize("reason", ["hard_bounce", "complaint"])
def test_transactional_mail_to_a_dead_address_is_refused(mail: Container, dns: DnsServer,
                                                         sink: tuple[Sink, int], reason: str) -> None:
    handler, port = sink
    world = setup_world(mail, dns, port)
    with mail.engine.begin() as conn:
        suppressions.suppress(conn, world.shop.workspace_id, "email", "ana@example.net", reason, source="test",
                              now=mail.clock.now())
    receipt = queue(mail, world, world.template)
    send(mail, receipt)
    assert message(mail, receipt)["status_reason"] == f"suppressed:{reason}"
    assert handler.received == []


def test_a_suppression_matches_the_address_whatever_its_case(container: Container) -> None:
    from tests.services.support import make_shop

    now = container.clock.now()
    shop = make_shop(container.engine, now)
    with container.engine.begin() as conn:
        suppressions.suppress(conn, shop.workspace_id, "email", "ana@example.net", "complaint", source="test", now=now)
        request = SendRequest("m1", None, shop.store.id, "email", "transactional", "Ana@example.net")
        decision = policy.decide_batch(conn, shop.workspace_id, [request], now=now)[0]
    assert decision.code == "suppressed:complaint"
