"""Incoming messages through `POST /callbacks/{provider_id}` with real signatures, on SQLite and
PostgreSQL: a Twilio STOP suppresses the number and withdraws SMS marketing consent before the
reply is queued; a forged one changes nothing; the WhatsApp Cloud API handshake echoes the
challenge only for our verify token; an incoming WhatsApp message opens the 24-hour window."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from herald.api.app import create_app
from herald.bootstrap import Container
from herald.channels.sms import twilio
from herald.db.tables import consent_records, contacts, messages, suppressions
from herald.services import consent, identity, providers
from tests.services.support import Shop, make_shop

TOKEN = "twilio-auth-token-0123456789abcdef"
APP_SECRET = "meta-app-secret"


@pytest.fixture
def client(container: Container) -> Iterator[TestClient]:
    with TestClient(create_app(container), raise_server_exceptions=False) as c:
        yield c


def setup(c: Container) -> tuple[Shop, str]:
    shop = make_shop(c.engine, c.clock.now())
    with c.engine.begin() as conn:
        person, _ = identity.normalize_person(phone="+12125550100")
        contact_id = identity.resolve(conn, shop.workspace_id, shop.store.id, person, c.clock.now()).contact_id
        consent.record_many(conn, shop.workspace_id, [consent.ConsentChange(
            contact_id=contact_id, store_id=None, channel="sms", purpose="marketing", state="granted",
            source="test", recorded_at=c.clock.now() - timedelta(days=1))])
    return shop, contact_id


def add(c: Container, shop: Shop, kind: str, channel: str, config: dict[str, str], secrets: dict[str, str]) -> str:
    with c.engine.begin() as conn:
        row = providers.add_provider(conn, c.adapters, c.master_key, shop.workspace_id, channel=channel,  # type: ignore[arg-type]
                                     kind=kind, name=kind, config=config, secrets=secrets, priority=0,
                                     now=c.clock.now())
    return str(row["id"])


def test_a_signed_stop_suppresses_the_number_before_the_reply(client: TestClient, container: Container) -> None:
    shop, contact_id = setup(container)
    provider_id = add(container, shop, "twilio", "sms", {"account_sid": "AC" + "1" * 32, "from": "+15005550006"},
                      {"auth_token": TOKEN})
    url = f"http://testserver/callbacks/{provider_id}"
    params = [("AccountSid", "AC" + "1" * 32), ("Body", " Stop "), ("From", "+12125550100"),
              ("MessageSid", "SM" + "2" * 32), ("SmsStatus", "received"), ("To", "+15005550006")]
    forged = client.post(url, content=urlencode(params), headers={
        "Content-Type": "application/x-www-form-urlencoded", twilio.SIGNATURE_HEADER: "AAAA" + "=" * 24})
    assert forged.status_code == 401
    signed = client.post(url, content=urlencode(params), headers={
        "Content-Type": "application/x-www-form-urlencoded",
        twilio.SIGNATURE_HEADER: twilio.signature(TOKEN, url, params)})
    assert signed.status_code == 200, signed.text
    assert signed.json()["inbound"] == 1
    with container.engine.begin() as conn:
        suppressed = conn.execute(select(suppressions.c.channel, suppressions.c.reason)
                                  .where(suppressions.c.address == "+12125550100")).all()
        states = conn.execute(select(consent_records.c.state).where(consent_records.c.contact_id == contact_id)
                              .order_by(consent_records.c.id)).scalars().all()
        reply = conn.execute(select(messages).where(messages.c.channel == "sms")).mappings().one()
    assert [tuple(s) for s in suppressed] == [("sms", "unsubscribed")]
    assert states == ["granted", "withdrawn"]
    assert (reply["to_address"], reply["purpose"], reply["status"]) == ("+12125550100", "transactional", "queued")
    assert "unsubscribed" in reply["context"]["text"].lower() or "stop" in reply["context"]["text"].lower()


def test_whatsapp_handshake_and_an_incoming_message_opening_the_window(client: TestClient,
                                                                       container: Container) -> None:
    shop, contact_id = setup(container)
    provider_id = add(container, shop, "whatsapp_cloud", "whatsapp",
                      {"phone_number_id": "106540352242922", "waba_id": "102290129340398"},
                      {"access_token": "EAAG-token", "app_secret": APP_SECRET, "verify_token": "our-verify-token"})
    query = {"hub.mode": "subscribe", "hub.verify_token": "our-verify-token", "hub.challenge": "1158201444"}
    ok = client.get(f"/callbacks/{provider_id}", params=query)
    assert (ok.status_code, ok.text) == (200, "1158201444")
    assert client.get(f"/callbacks/{provider_id}", params={**query, "hub.verify_token": "guess"}).status_code == 401
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": "102290129340398", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "Ana"}, "wa_id": "12125550100"}],
            "messages": [{"from": "12125550100", "id": "wamid.HBgLMTIxMjU1NTAxMDAVAgASGBQzQTdG",
                          "timestamp": str(int(container.clock.now().timestamp())), "type": "text",
                          "text": {"body": "Is my order on its way?"}}]}}]}]}).encode()
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), body, hashlib.sha256).hexdigest()
    resp = client.post(f"/callbacks/{provider_id}", content=body,
                       headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature})
    assert resp.status_code == 200, resp.text
    with container.engine.begin() as conn:
        opened = conn.execute(select(contacts.c.whatsapp_inbound_at).where(contacts.c.id == contact_id)).scalar()
    assert opened is not None and abs((opened - container.clock.now()).total_seconds()) < 5
