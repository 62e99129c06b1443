"""Consent links in real email, end to end against the SMTP sink of test_email: a double opt-in
confirmation email carries a link that confirms on POST, and a marketing email's `preferences_url`
opens the contact's preference centre."""

from __future__ import annotations

import email
import email.policy
import re

from fastapi.testclient import TestClient
from sqlalchemy import select

from herald.api.app import create_app
from herald.bootstrap import Container
from herald.db.tables import consent_records
from herald.domain.auth import Principal
from herald.services import contacts, preferences, templates
from herald.services import email as email_service
from tests.dnsserver import DnsServer
from tests.services.test_email import Sink, dns, mail, send, setup_world, sink  # noqa: F401 (fixtures)


def text_part(raw: bytes) -> str:
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    return str(parsed.get_body(("plain",)).get_content())  # type: ignore[union-attr]


def test_confirmation_email_and_preference_link(mail: Container, dns: DnsServer,  # noqa: F811
                                                sink: tuple[Sink, int]) -> None:  # noqa: F811
    handler, port = sink
    world = setup_world(mail, dns, port)
    now = mail.clock.now()
    who = Principal("test", world.shop.workspace_id, None)
    with mail.engine.begin() as conn:
        confirm = templates.create_template(
            conn, who, name="confirm", channel="email", purpose="transactional", default_language="en",
            variants={"en": {"subject": "Please confirm", "body": "<p>Confirm: {{ confirmation_url }}</p>",
                             "body_format": "html", "text": "Confirm: {{ confirmation_url }}"}},
            store_id=None, now=now)
        news = templates.create_template(
            conn, who, name="news", channel="email", purpose="marketing", default_language="en",
            variants={"en": {"subject": "News", "body": "<p>News</p>", "body_format": "html",
                             "text": "News. Your preferences: {{ preferences_url }}"}},
            store_id=None, now=now)
        contact = contacts.create_contact(conn, who, {"email": "ana@example.net",
                                                      "store_ids": [world.shop.store.id]}, now)
        (applied,) = preferences.record_requested(conn, who, contact["id"], [preferences.Requested(
            channel="email", purpose="marketing", state="granted", store_id=world.shop.store.id,
            wording_version="footer-v2", double_opt_in=True, confirmation_template_id=confirm["id"])],
            links=mail.consent_links, now=now)
    assert applied.state == "pending" and applied.confirmation_message_id
    send(mail, applied.confirmation_message_id)
    found = re.search(r"https://herald\.test(/c/[A-Za-z0-9_-]+)", text_part(handler.received[0][2]))
    assert found and applied.confirmation_url == "https://herald.test" + found.group(1)

    with TestClient(create_app(mail), raise_server_exceptions=False) as client:
        assert client.get(found.group(1)).status_code == 200
        assert client.post(found.group(1)).status_code == 200
        with mail.engine.begin() as conn:
            rows = conn.execute(select(consent_records.c.state, consent_records.c.source,
                                       consent_records.c.wording_version)
                                .order_by(consent_records.c.id)).all()
        assert [tuple(r) for r in rows] == [("pending", "api", "footer-v2"), ("granted", "double_opt_in", "footer-v2")]

        with mail.engine.begin() as conn:
            message_id = email_service.queue_email(conn, workspace_id=world.shop.workspace_id, template=news,
                                                   to="ana@example.net", now=mail.clock.now(),
                                                   store_id=world.shop.store.id, contact_id=contact["id"])
        send(mail, message_id)
        link = re.search(r"https://herald\.test(/p/[A-Za-z0-9_-]+)", text_part(handler.received[1][2]))
        assert link, text_part(handler.received[1][2])
        page = client.get(link.group(1))
        assert page.status_code == 200 and f"email:marketing:{world.shop.store.id}" in page.text
