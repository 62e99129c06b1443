"""Provider failover, channel fallback and rate limits under injected faults (issue 6), on SQLite
and PostgreSQL: two Twilio providers (priority 0 and 1) pointed at two Twilio-speaking servers on
127.0.0.1 (tests/channels/sms/peer.py) whose answers each test switches between a normal 201, a
429 with Retry-After, a 500 and Twilio's 21211 "invalid To number".

  * the first answers 429 or 500: the message is sent by the second;
  * both answer 500: retried with backoff (queued), then sent once the first recovers;
  * 21211 on SMS with a route to email: the number is suppressed and the email is queued;
  * rate_per_second=2, burst=2: a third immediate send fails over to the second provider, or,
    with no other provider, waits for the bucket (queued "rate_limited", a new job due when the
    bucket has room; not an attempt).

The three "immediate" sends run concurrently in one event loop so they reach the bucket within
milliseconds of each other (its window is one second)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from herald.bootstrap import Container
from herald.db.tables import jobs, message_events, messages, suppressions
from herald.db.tables import providers as providers_table
from herald.domain.auth import Principal
from herald.domain.ids import new_id
from herald.domain.jobs import Retry
from herald.services import consent, email, identity, messaging, providers, templates
from tests.channels.sms.peer import FakeTwilio, Seen, serve
from tests.services import test_email as email_tests
from tests.services.support import Shop, make_shop
from tests.services.test_email import dns, mail, sink  # noqa: F401 (the email tests' fixtures, used by name)
from tests.stores.localserver import Reply

AFTERNOON_NY = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)  # 13:00 in New York
ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "f0e1d2c3b4a5968778695a4b3c2d1e0f"
SENDER = "+15005550006"
PHONE = "+12125550142"


@dataclass
class Twilio:
    """A Twilio-speaking server whose answer the test switches: "ok" (201 + the Message resource),
    "429" (20429 with Retry-After: 30), "500", or "invalid" (21211 for the To number)."""

    mode: str = "ok"
    fake: FakeTwilio = field(default_factory=lambda: FakeTwilio(ACCOUNT, (ACCOUNT, TOKEN)))
    url: str = ""
    seen: list[Seen] = field(default_factory=list)

    def __call__(self, request: Seen) -> Reply:
        if self.mode == "429":
            return FakeTwilio.error(429, 20429, "Too Many Requests", {"Retry-After": "30"})
        if self.mode == "500":
            return FakeTwilio.error(500, 20500, "Internal Server Error")
        if self.mode == "invalid":
            return FakeTwilio.error(400, 21211, "The 'To' number is not a valid phone number.")
        return self.fake(request)

    @property
    def sent(self) -> int:
        return len(self.fake.created)


@pytest.fixture
def twilios() -> Iterator[tuple[Twilio, Twilio]]:
    first, second = Twilio(), Twilio()
    with serve(first) as (url1, seen1), serve(second) as (url2, seen2):
        first.url, first.seen, second.url, second.seen = url1, seen1, url2, seen2
        yield first, second


@dataclass
class World:
    c: Container
    shop: Shop
    who: Principal
    contact_id: str
    sms: dict[str, Any]
    provider_ids: list[str]


def world(c: Container, servers: tuple[Twilio, ...], *limits: dict[str, Any]) -> World:
    """A workspace (not in sandbox mode) with one Twilio provider per server, by priority, a
    contact who agreed to transactional SMS and email, and an SMS template."""
    c.clock.offset = AFTERNOON_NY - datetime.now(UTC)  # type: ignore[attr-defined]
    now = c.clock.now()
    shop = make_shop(c.engine, now)
    who = Principal("test", shop.workspace_id, None)
    with c.engine.begin() as conn:
        ids = [providers.add_provider(
            conn, c.adapters, c.master_key, shop.workspace_id, channel="sms", kind="twilio", name=f"twilio-{n}",
            config={"account_sid": ACCOUNT, "from": SENDER, "base_url": server.url, **(limits[n] if n < len(limits)
                                                                                        else {})},
            secrets={"auth_token": TOKEN}, priority=n, now=now)["id"] for n, server in enumerate(servers)]
        person, problems = identity.normalize_person(phone=PHONE, email="ana@example.net")
        assert not problems
        contact_id = identity.resolve(conn, shop.workspace_id, shop.store.id, person, now).contact_id
        consent.record_many(conn, shop.workspace_id, [consent.ConsentChange(
            contact_id=contact_id, store_id=None, channel=channel, purpose="transactional", state="granted",
            source="test", recorded_at=now - timedelta(days=1)) for channel in ("sms", "email")])
    sms = template(c, who, "sms", {"body": "Your order shipped"})
    return World(c, shop, who, contact_id, sms, ids)


def template(c: Container, who: Principal, channel: str, variant: dict[str, Any]) -> dict[str, Any]:
    with c.engine.begin() as conn:
        return templates.create_template(conn, who, name=f"{channel}-{new_id('tpl')}", channel=channel,
                                         purpose="transactional", default_language="en", variants={"en": variant},
                                         store_id=None, now=c.clock.now())


def queue(w: World, route: tuple[dict[str, str], ...] = ()) -> str:
    with w.c.engine.begin() as conn:
        return messaging.queue_message(conn, workspace_id=w.shop.workspace_id, channel="sms", template=w.sms,
                                       to=PHONE, now=w.c.clock.now(), store_id=w.shop.store.id,
                                       contact_id=w.contact_id, route=route)


def send(c: Container, *message_ids: str, attempt: int = 1) -> list[Any]:
    """One send attempt of each message, all at once; the provider cache (and its buckets) stays."""
    async def run() -> list[Any]:
        try:
            return list(await asyncio.gather(*(messaging.deliver(c.messaging, m, attempt=attempt, max_attempts=15)
                                               for m in message_ids)))
        finally:
            await c.aclose_providers()
    return asyncio.run(run())


def row(c: Container, message_id: str) -> dict[str, Any]:
    with c.engine.begin() as conn:
        return dict(conn.execute(select(messages).where(messages.c.id == message_id)).mappings().one())


def sent_by(c: Container, message_id: str) -> str:
    """The provider id the message's "sent" event names."""
    with c.engine.begin() as conn:
        detail = conn.execute(select(message_events.c.detail).where(
            message_events.c.message_id == message_id, message_events.c.status == "sent")).scalar_one()
    return str(detail["provider_id"])


@pytest.mark.parametrize("fault", ["429", "500"])
def test_a_failing_first_provider_fails_over_to_the_second(container: Container, twilios: tuple[Twilio, Twilio],
                                                           fault: str) -> None:
    first, second = twilios
    w = world(container, twilios)
    first.mode = fault
    message_id = queue(w)
    assert send(container, message_id) == [None]
    assert (row(container, message_id)["status"], sent_by(container, message_id)) == ("sent", w.provider_ids[1])
    assert (len(first.seen), first.sent, second.sent) == (1, 0, 1)
    assert second.fake.created[0]["To"] == PHONE


def test_both_providers_down_retries_with_backoff_then_the_recovered_first_sends(
        container: Container, twilios: tuple[Twilio, Twilio]) -> None:
    first, second = twilios
    w = world(container, twilios)
    first.mode = second.mode = "500"
    message_id = queue(w)
    [outcome] = send(container, message_id)
    assert outcome == Retry(email.backoff(1), outcome.reason)
    assert "provider_down" in outcome.reason
    assert (row(container, message_id)["status"], row(container, message_id)["status_reason"]) == \
        ("queued", "provider_down")
    assert (len(first.seen), len(second.seen)) == (1, 1)
    first.mode = "ok"
    assert send(container, message_id, attempt=2) == [None]
    assert (row(container, message_id)["status"], sent_by(container, message_id)) == ("sent", w.provider_ids[0])
    assert (first.sent, second.sent, len(second.seen)) == (1, 0, 1)


def test_an_invalid_number_is_suppressed_and_the_route_falls_back_to_email(
        container: Container, twilios: tuple[Twilio, Twilio]) -> None:
    first, second = twilios
    w = world(container, twilios)
    first.mode = "invalid"
    mail_template = template(container, w.who, "email", {"subject": "Shipped", "body": "<p>Your order shipped</p>",
                                                         "body_format": "html"})
    message_id = queue(w, route=({"channel": "email", "template_id": mail_template["id"]},))
    send(container, message_id)
    assert (row(container, message_id)["status"], row(container, message_id)["status_reason"]) == \
        ("failed", "invalid_address")
    assert len(second.seen) == 0  # a bad number is not the provider's fault: no failover
    with container.engine.begin() as conn:
        suppressed = conn.execute(select(suppressions.c.channel, suppressions.c.reason)
                                  .where(suppressions.c.address == PHONE)).all()
        follow = conn.execute(select(messages).where(messages.c.channel == "email")).mappings().one()
        follow_job = conn.execute(select(jobs.c.payload).where(jobs.c.unique_key == f"message.send:{follow['id']}")
                                  ).scalar_one()
    assert [tuple(s) for s in suppressed] == [("sms", "invalid")]
    assert (follow["status"], follow["to_address"], follow["context"]["fallback_of"]) == \
        ("queued", "ana@example.net", message_id)
    assert follow_job["message_id"] == follow["id"]


def test_over_the_rate_limit_a_send_fails_over_to_the_next_provider(
        container: Container, twilios: tuple[Twilio, Twilio]) -> None:
    first, second = twilios
    w = world(container, twilios, {"rate_per_second": 2, "burst": 2})
    message_ids = [queue(w) for _ in range(3)]
    assert send(container, *message_ids) == [None, None, None]
    assert [row(container, m)["status"] for m in message_ids] == ["sent"] * 3
    assert sorted(sent_by(container, m) for m in message_ids) == sorted([w.provider_ids[0]] * 2 + [w.provider_ids[1]])
    assert (len(first.seen), first.sent, second.sent) == (2, 2, 1)  # the third never reached the first


def test_over_the_rate_limit_with_no_other_provider_the_message_waits_for_the_bucket(
        container: Container, twilios: tuple[Twilio, Twilio]) -> None:
    first, _second = twilios
    w = world(container, twilios[:1], {"rate_per_second": 2, "burst": 2})
    message_ids = [queue(w) for _ in range(3)]
    before = container.clock.now()
    assert send(container, *message_ids) == [None, None, None]  # a wait is not a retry: no attempt spent
    waiting = [m for m in message_ids if row(container, m)["status"] != "sent"]
    assert len(waiting) == 1 and first.sent == 2
    [late] = waiting
    assert (row(container, late)["status"], row(container, late)["status_reason"], row(container, late)["attempts"]) \
        == ("queued", "rate_limited", 0)
    with container.engine.begin() as conn:
        job = conn.execute(select(jobs).where(jobs.c.unique_key.like(f"message.send:{late}:rate_limited:%"))
                           ).mappings().one()
        event = conn.execute(select(message_events).where(message_events.c.message_id == late)).mappings().one()
    assert (job["state"], job["payload"], job["max_attempts"]) == \
        ("available", {"message_id": late, "channel": "sms"}, 15)
    assert timedelta(0) < job["due_at"] - before <= timedelta(seconds=1) + (container.clock.now() - before)
    assert (event["status"], event["reason"], event["detail"]["provider_id"]) == \
        ("deferred", "rate_limited", w.provider_ids[0])
    assert 0 < event["detail"]["wait_seconds"] <= 1


def test_email_over_the_rate_limit_waits_for_the_bucket(database_url: str, request: pytest.FixtureRequest) -> None:
    c: Container = request.getfixturevalue("mail")  # on `database_url`'s backend
    handler, port = request.getfixturevalue("sink")
    w = email_tests.setup_world(c, request.getfixturevalue("dns"), port)
    with c.engine.begin() as conn:  # the relay takes 1 message per second
        conn.execute(providers_table.update().where(providers_table.c.workspace_id == w.shop.workspace_id).values(
            config={"host": "127.0.0.1", "port": port, "security": "none", "rate_per_second": 1},
            updated_at=c.clock.now()))
    message_ids = [email_tests.queue(c, w, w.template) for _ in range(2)]

    async def run() -> list[Any]:
        try:
            return list(await asyncio.gather(*(email.deliver(c.email, m, attempt=1, max_attempts=15)
                                               for m in message_ids)))
        finally:
            await c.aclose_providers()
    assert asyncio.run(run()) == [None, None]
    assert sorted((row(c, m)["status"], row(c, m)["status_reason"] or "") for m in message_ids) == \
        [("queued", "rate_limited"), ("sent", "")]
    assert len(handler.received) == 1
