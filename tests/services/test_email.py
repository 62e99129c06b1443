"""Email end to end, on SQLite and PostgreSQL, against real peers on 127.0.0.1: a sending domain
added (DKIM key generated) and verified against a dnslib DNS server, a template, an SMTP
provider pointed at an aiosmtpd sink; a message queued and sent by the `message.send` job; the
received message DKIM-verified by dkimpy through the same DNS server; tracked clicks, opens and
the RFC 8058 one-click unsubscribe over HTTP; refusals (suppressed address, unverified domain);
a bounce through the inbound SMTP listener suppressing the address."""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import smtplib
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import dkim
import pytest
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient
from sqlalchemy import select

from herald.api.app import create_app
from herald.bootstrap import Container, build
from herald.db.tables import consent_records, jobs, message_events, messages, suppressions
from herald.domain.auth import Principal
from herald.domain.clock import ShiftedClock
from herald.services import consent, domains, feedback, identity, providers, stores, templates
from herald.services import email as email_service
from tests.conftest import make_settings
from tests.dnsserver import DnsServer, dns_server
from tests.services.support import Shop, make_shop

MJML = """<mjml><mj-body><mj-section><mj-column>
  <mj-text>Hi {{ contact.first_name }}, your order {{ order.name }} is confirmed.</mj-text>
  {% for line in order.lines %}<mj-text>{{ line.quantity }} x {{ line.title }} {{ line.price }}</mj-text>{% endfor %}
  <mj-button href="https://shop.example/orders?id=1&amp;utm=mail">See your order</mj-button>
</mj-column></mj-section></mj-body></mjml>"""


@dataclass
class Sink:
    """An aiosmtpd sink that keeps what it receives."""

    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 Ok: queued as ABC123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def sink() -> Iterator[tuple[Sink, int]]:
    handler = Sink()
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with dns_server() as server:
        yield server


@pytest.fixture
def mail(database_url: str, dns: DnsServer, clock: ShiftedClock) -> Iterator[Container]:
    c = build(make_settings(database_url, dns_nameservers=[f"127.0.0.1:{dns.port}"], inbound_domain="in.herald.test",
                            base_url="https://herald.test"), clock=clock)
    yield c
    c.close()


@dataclass
class World:
    shop: Shop
    template: dict[str, Any]
    marketing: dict[str, Any]


def publish(dns: DnsServer, c: Container, row: dict[str, Any]) -> None:
    for record in domains.records(c.adapters, row):
        dns.set(record.name, [(record.type, record.value)])


def setup_world(c: Container, dns: DnsServer, sink_port: int, *, verify: bool = True) -> World:
    now = c.clock.now()
    shop = make_shop(c.engine, now)
    who = Principal("test", shop.workspace_id, None)
    with c.engine.begin() as conn:
        stores.set_sender(conn, who, shop.store.id, email_from="orders@shop.example", email_from_name="Shop",
                          postal_address="1 Harbour Road, Lisbon, Portugal")
        row = domains.add_domain(conn, c.adapters, c.master_key, shop.workspace_id, "shop.example", now=now,
                                 selector="s1")
        providers.add_provider(conn, c.adapters, c.master_key, shop.workspace_id, channel="email", kind="smtp",
                               name="sink", config={"host": "127.0.0.1", "port": sink_port, "security": "none"},
                               secrets={}, priority=0, now=now)
        variants = {"en": {"subject": "Order {{ order.name }}", "body": MJML}}
        template = templates.create_template(conn, who, name="order", channel="email", purpose="transactional",
                                             default_language="en", variants=variants, store_id=None, now=now)
        marketing = templates.create_template(conn, who, name="promo", channel="email", purpose="marketing",
                                              default_language="en", variants=variants, store_id=None, now=now)
    if verify:
        publish(dns, c, row)
        checks = asyncio.run(domains.check(c.adapters, row))
        with c.engine.begin() as conn:
            assert domains.save_check(conn, row, checks, now=now)["status"] == "verified", checks
    return World(shop, template, marketing)


def subscribe(c: Container, workspace_id: str, address: str, store_id: str | None = None) -> str:
    """The contact of `address` (created if new) with marketing email consent granted a day ago."""
    with c.engine.begin() as conn:
        person, problems = identity.normalize_person(email=address)
        assert not problems, problems
        contact_id = identity.resolve(conn, workspace_id, store_id, person, c.clock.now()).contact_id
        consent.record_many(conn, workspace_id, [consent.ConsentChange(
            contact_id=contact_id, store_id=store_id, channel="email", purpose="marketing", state="granted",
            source="test", recorded_at=c.clock.now() - timedelta(days=1))])
    return contact_id


def queue(c: Container, world: World, template: dict[str, Any], to: str = "ana@example.net") -> str:
    """Queue the template to `to`; a marketing one to a subscribed contact (the policy needs consent)."""
    if template["purpose"] == "marketing":
        subscribe(c, world.shop.workspace_id, to)
    with c.engine.begin() as conn:
        return email_service.queue_email(conn, workspace_id=world.shop.workspace_id, template=template, to=to,
                                         now=c.clock.now(), store_id=world.shop.store.id,
                                         context={"variables": {"order": {"name": "#1001", "lines": [
                                             {"title": "Beanie", "quantity": 2, "price": "9.90"}]}}})


def send(c: Container, message_id: str, attempt: int = 1) -> Any:
    """One run of the message's `message.send` job (its own event loop, so providers are closed after)."""
    async def run() -> Any:
        try:
            return await email_service.deliver(c.email, message_id, attempt=attempt,
                                               max_attempts=email_service.MAX_ATTEMPTS)
        finally:
            await c.aclose_providers()
    return asyncio.run(run())


def message(c: Container, message_id: str) -> dict[str, Any]:
    with c.engine.begin() as conn:
        return dict(conn.execute(select(messages).where(messages.c.id == message_id)).mappings().one())


def history(c: Container, message_id: str) -> list[str]:
    with c.engine.begin() as conn:
        return list(conn.execute(select(message_events.c.status).where(message_events.c.message_id == message_id)
                                 .order_by(message_events.c.id)).scalars())


def test_a_queued_email_is_sent_dkim_signed_and_verifiable(mail: Container, dns: DnsServer,
                                                            sink: tuple[Sink, int]) -> None:
    handler, port = sink
    world = setup_world(mail, dns, port)
    message_id = queue(mail, world, world.template)
    with mail.engine.begin() as conn:
        job = conn.execute(select(jobs).where(jobs.c.kind == email_service.JOB_KIND)).mappings().one()
    assert job["payload"] == {"message_id": message_id}

    assert send(mail, message_id) is None
    row = message(mail, message_id)
    assert row["status"] == "sent" and row["provider"] == "smtp" and row["subject"] == "Order #1001"
    assert history(mail, message_id) == ["sent"]
    (mail_from, rcpts, raw) = handler.received[0]
    assert rcpts == ["ana@example.net"]
    assert mail_from == f"bounce+{message_id}@in.herald.test"  # VERP: a bounce finds its message
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Message-ID"] == f"<{message_id}@shop.example>"
    assert "List-Unsubscribe" not in parsed  # transactional
    assert dkim.verify(raw, dnsfunc=dns.dkim_dnsfunc())
    body = raw.replace(b"Beanie", b"Beaniz", 1) if b"Beanie" in raw else raw[:-3] + b"X\r\n"
    assert not dkim.verify(body, dnsfunc=dns.dkim_dnsfunc())

    assert send(mail, message_id) is None  # the job run again: nothing sent twice
    assert len(handler.received) == 1


def test_marketing_email_carries_one_click_unsubscribe_tracking_and_the_postal_address(
        mail: Container, dns: DnsServer, sink: tuple[Sink, int]) -> None:
    handler, port = sink
    world = setup_world(mail, dns, port)
    message_id = queue(mail, world, world.marketing)
    send(mail, message_id)
    raw = handler.received[0][2]
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https_url, mailto = re.findall(r"<([^>]+)>", str(parsed["List-Unsubscribe"]))
    assert https_url.startswith("https://herald.test/t/u/") and mailto.startswith("mailto:unsubscribe+")
    assert mailto.endswith("@in.herald.test")
    tags = dict(t.split("=", 1) for t in re.sub(r"\s", "", str(parsed["DKIM-Signature"])).split(";") if t)
    signed_headers = tags["h"]
    assert {"from", "subject", "list-unsubscribe", "list-unsubscribe-post"} <= set(signed_headers.lower().split(":"))
    assert dkim.verify(raw, dnsfunc=dns.dkim_dnsfunc())
    html = parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = parsed.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "1 Harbour Road, Lisbon, Portugal" in html and "1 Harbour Road, Lisbon, Portugal" in text
    click = re.search(r'href="(https://herald\.test/t/c/[^"]+)"', html)
    pixel = re.search(r'src="(https://herald\.test/t/o/[^"]+)"', html)
    assert click and pixel and 'href="https://shop.example/orders' not in html

    with TestClient(create_app(mail), raise_server_exceptions=False) as client:
        redirect = client.get(click.group(1).removeprefix("https://herald.test"), follow_redirects=False)
        assert redirect.status_code == 302
        assert redirect.headers["location"] == "https://shop.example/orders?id=1&utm=mail"
        assert client.get(pixel.group(1).removeprefix("https://herald.test")).headers["content-type"] == "image/gif"
        tampered = click.group(1)[:-2] + ("AA" if not click.group(1).endswith("AA") else "BB")
        assert client.get(tampered.removeprefix("https://herald.test"), follow_redirects=False).status_code == 404

        page = client.get(https_url.removeprefix("https://herald.test"))
        assert page.status_code == 200 and "<form" in page.text
        one_click = client.post(https_url.removeprefix("https://herald.test"), content=b"List-Unsubscribe=One-Click",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert one_click.status_code == 200 and "set-cookie" not in one_click.headers
    row = message(mail, message_id)
    assert row["clicked_at"] is not None and row["opened_at"] is not None
    assert history(mail, message_id) == ["sent", "clicked", "opened", "unsubscribed"]
    with mail.engine.begin() as conn:
        (suppressed,) = conn.execute(select(suppressions)).mappings().all()
        assert (suppressed["address"], suppressed["reason"]) == ("ana@example.net", "unsubscribed")

    # effective at once: the next marketing email to the address is refused, transactional still goes
    second = queue(mail, world, world.marketing)
    send(mail, second)
    assert (message(mail, second)["status"], message(mail, second)["status_reason"]) == (
        "suppressed", "suppressed:unsubscribed")
    receipt = queue(mail, world, world.template)
    send(mail, receipt)
    assert message(mail, receipt)["status"] == "sent"
    assert len(handler.received) == 2


def test_unsubscribe_withdraws_the_contacts_marketing_consent(mail: Container, dns: DnsServer,
                                                              sink: tuple[Sink, int]) -> None:
    world = setup_world(mail, dns, sink[1])
    from herald.services import contacts

    who = Principal("test", world.shop.workspace_id, None)
    with mail.engine.begin() as conn:
        contact = contacts.create_contact(conn, who, {"email": "ana@example.net"}, mail.clock.now())
    subscribe(mail, world.shop.workspace_id, "ana@example.net")
    with mail.engine.begin() as conn:
        message_id = email_service.queue_email(conn, workspace_id=world.shop.workspace_id, template=world.marketing,
                                               to="ana@example.net", now=mail.clock.now(),
                                               store_id=world.shop.store.id, contact_id=contact["id"])
    send(mail, message_id)
    assert message(mail, message_id)["status"] == "sent"
    mail.clock.advance(timedelta(seconds=5))  # type: ignore[attr-defined]
    with mail.engine.begin() as conn:
        assert feedback.unsubscribe(conn, message_id, source="one-click", now=mail.clock.now())
        states = conn.execute(select(consent_records.c.channel, consent_records.c.purpose, consent_records.c.state)
                              .where(consent_records.c.contact_id == contact["id"])).all()
    assert ("email", "marketing", "withdrawn") in [tuple(s) for s in states]


def test_marketing_from_an_unverified_domain_is_refused_with_the_reason(mail: Container, dns: DnsServer,
                                                                        sink: tuple[Sink, int]) -> None:
    handler, port = sink
    world = setup_world(mail, dns, port, verify=False)
    message_id = queue(mail, world, world.marketing)
    send(mail, message_id)
    row = message(mail, message_id)
    assert (row["status"], row["status_reason"]) == ("suppressed", "domain_unverified")
    with mail.engine.begin() as conn:
        detail = conn.execute(select(message_events.c.detail).where(message_events.c.message_id == message_id)).scalar()
    assert "shop.example is not verified for marketing email" in detail["refusal"]
    assert handler.received == []
    receipt = queue(mail, world, world.template)  # transactional mail only needs the domain's key
    send(mail, receipt)
    assert message(mail, receipt)["status"] == "sent"


def test_a_refused_recipient_fails_permanently_and_is_suppressed(mail: Container, dns: DnsServer) -> None:
    class Refusing:
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
            return "550 5.1.1 <nobody@example.net>: Recipient address rejected: User unknown"

    port = _free_port()
    controller = Controller(Refusing(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        world = setup_world(mail, dns, port)
        message_id = queue(mail, world, world.template, to="nobody@example.net")
        assert send(mail, message_id) is None
    finally:
        controller.stop()
    row = message(mail, message_id)
    assert (row["status"], row["status_reason"]) == ("failed", "invalid_address")
    with mail.engine.begin() as conn:
        reason = conn.execute(select(suppressions.c.reason)
                              .where(suppressions.c.address == "nobody@example.net")).scalar()
        detail = conn.execute(select(message_events.c.detail).where(message_events.c.message_id == message_id)).scalar()
    assert reason == "hard_bounce" and detail["provider_code"].startswith("550")


def test_an_unreachable_relay_is_retried_then_expires(mail: Container, dns: DnsServer) -> None:
    world = setup_world(mail, dns, _free_port())  # nothing listens there
    message_id = queue(mail, world, world.template)
    outcome = send(mail, message_id, attempt=1)
    assert outcome is not None and outcome.after >= 30
    assert message(mail, message_id)["status"] == "queued"
    assert history(mail, message_id) == ["deferred"]
    assert send(mail, message_id, attempt=email_service.MAX_ATTEMPTS) is None
    row = message(mail, message_id)
    assert row["status"] == "expired" and row["status_reason"] == "provider_down"


def test_a_bounce_at_the_inbound_listener_marks_the_message_and_suppresses_the_address(
        mail: Container, dns: DnsServer, sink: tuple[Sink, int]) -> None:
    from herald.channels.email.inbound import InboundHandler, serve
    from herald.services import inbound

    world = setup_world(mail, dns, sink[1])
    message_id = queue(mail, world, world.marketing, to="gone@example.net")
    send(mail, message_id)
    dsn = (
        f"From: MAILER-DAEMON@mx.example.net\r\nTo: bounce+{message_id}@in.herald.test\r\nSubject: Undelivered Mail\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
        "--B\r\nContent-Type: text/plain\r\n\r\nThe mail system could not deliver your message.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
        "Final-Recipient: rfc822; gone@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 <gone@example.net>: Recipient address rejected\r\n\r\n--B--\r\n"
    ).encode()

    async def scenario() -> None:
        async def deliver(rcpts: Any, raw: bytes) -> None:
            await asyncio.to_thread(inbound.handle, mail.engine, mail.adapters, mail.email.links, rcpts, raw,
                                    mail.clock.now())
        server = await serve(InboundHandler(deliver, domains=["in.herald.test"]), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        def smtp_client() -> None:
            with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
                with pytest.raises(smtplib.SMTPRecipientsRefused):  # not an open relay
                    client.sendmail("<>", ["someone@elsewhere.example"], b"Subject: x\r\n\r\nx\r\n")
                client.sendmail("", [f"bounce+{message_id}@in.herald.test"], dsn)
        try:
            await asyncio.to_thread(smtp_client)
        finally:
            server.close()
            await server.wait_closed()
    asyncio.run(scenario())

    row = message(mail, message_id)
    assert (row["status"], row["status_reason"]) == ("bounced", "invalid_address")
    with mail.engine.begin() as conn:
        assert conn.execute(select(suppressions.c.reason).where(
            suppressions.c.address == "gone@example.net")).scalar() == "hard_bounce"
    again = queue(mail, world, world.template, to="gone@example.net")  # transactional too: the address is dead
    send(mail, again)
    assert message(mail, again)["status_reason"] == "suppressed:hard_bounce"
