"""`POST /callbacks/{provider_id}` through the app, on SQLite and PostgreSQL: SendGrid's Signed
Event Webhook (ECDSA P-256 over timestamp + body, signed here with a key generated for the test)
and Mailgun's webhook (HMAC-SHA256 of timestamp + token) move a sent message's status forward
only, suppress the address on a hard bounce or complaint, refuse a bad signature with nothing
recorded, and never reach a message of another workspace. SMTP providers have no callbacks."""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from sqlalchemy import select

from herald.bootstrap import Container
from herald.db.tables import message_events, messages, suppressions
from herald.domain.ids import new_id
from herald.services import providers
from tests.channels.email.test_mailgun import PAYLOADS as MAILGUN_PAYLOADS
from tests.channels.email.test_mailgun import signature_block
from tests.channels.email.test_sendgrid import Keys, new_keys
from tests.services.support import make_shop
from tests.services.test_email import history, message

SENDGRID_ID = "14c5d75ce93.dfd.64b469"   # X-Message-Id of the send; events carry it plus a machine suffix
MAILGUN_KEY = "mailgun-webhook-signing-key-for-tests"


@dataclass
class Account:
    workspace_id: str
    provider_id: str
    keys: Keys


def counts(response: Any) -> dict[str, int]:
    """The status-event counts of a callback's answer (it also counts incoming messages etc.)."""
    return {k: response.json()[k] for k in ("events", "applied", "unmatched")}


def add_sendgrid(c: Container, workspace_id: str, name: str = "grid") -> Account:
    keys = new_keys()
    with c.engine.begin() as conn:
        row = providers.add_provider(conn, c.adapters, c.master_key, workspace_id, channel="email", kind="sendgrid",
                                     name=name, config={}, secrets={"api_key": "SG.test.not-real",
                                                                    "webhook_key": keys.public_b64},
                                     priority=0, now=c.clock.now())
    return Account(workspace_id, row["id"], keys)


def sent_message(c: Container, workspace_id: str, *, to: str, provider: str, provider_message_id: str) -> str:
    """A message the provider accepted (what deliver() leaves behind): status sent, with its "sent" event."""
    now = c.clock.now()
    message_id = new_id("msg")
    with c.engine.begin() as conn:
        conn.execute(messages.insert().values(
            id=message_id, workspace_id=workspace_id, channel="email", purpose="marketing", to_address=to,
            status="sent", provider=provider, provider_message_id=provider_message_id, context={}, attempts=1,
            created_at=now, updated_at=now, sent_at=now))
        conn.execute(message_events.insert().values(workspace_id=workspace_id, message_id=message_id, status="sent",
                                                    detail={"provider": provider}, occurred_at=now, recorded_at=now))
    return message_id


def sendgrid_event(kind: str, message_id: str | None, at: datetime, **fields: Any) -> dict[str, Any]:
    """One Event Webhook record as SendGrid documents it; the v3 send's custom_args
    (herald_message_id) come back as top-level keys."""
    record: dict[str, Any] = {"email": "ana@example.net", "timestamp": int(at.timestamp()), "event": kind,
                              "smtp-id": f"<{SENDGRID_ID}@ismtpd-555>", "sg_event_id": secrets.token_urlsafe(16),
                              "sg_message_id": f"{SENDGRID_ID}.filter0001.16648.5515E0B88.0", **fields}
    if message_id is not None:
        record["herald_message_id"] = message_id
    return record


def sendgrid_headers(keys: Keys, body: bytes, at: datetime) -> dict[str, str]:
    """Signed Event Webhook: ECDSA (P-256, SHA-256) over the timestamp followed by the raw body,
    both base64/decimal in the X-Twilio-Email-Event-Webhook-* headers (SendGrid "Getting Started
    with the Event Webhook Security Features")."""
    timestamp = str(int(at.timestamp()))
    signature = keys.private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {"Content-Type": "application/json", "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode()}


def post_sendgrid(client: TestClient, account: Account, records: list[dict[str, Any]], at: datetime) -> Any:
    body = json.dumps(records).encode()
    return client.post(f"/callbacks/{account.provider_id}", content=body,
                       headers=sendgrid_headers(account.keys, body, at))




def suppressed(c: Container) -> list[tuple[str, str, str]]:
    with c.engine.begin() as conn:
        return [tuple(r) for r in conn.execute(select(suppressions.c.workspace_id, suppressions.c.address,
                                                      suppressions.c.reason).order_by(suppressions.c.id))]


@pytest.fixture
def grid(container: Container) -> Account:
    shop = make_shop(container.engine, container.clock.now())
    return add_sendgrid(container, shop.workspace_id)


def a_hard_bounce(message_id: str | None, at: datetime) -> dict[str, Any]:
    return sendgrid_event("bounce", message_id, at, type="bounce", status="5.1.1",
                          reason="550 5.1.1 The email account that you tried to reach does not exist.")


def test_sendgrid_events_move_the_message_forward_and_suppress_a_hard_bounce(
        client: TestClient, container: Container, grid: Account) -> None:
    m = sent_message(container, grid.workspace_id, to="ana@example.net", provider="sendgrid",
                     provider_message_id=SENDGRID_ID)
    now = container.clock.now()
    records = [sendgrid_event("delivered", m, now, response="250 2.0.0 OK"),
               sendgrid_event("open", m, now, useragent="Mozilla/5.0", ip="192.0.2.9"),
               sendgrid_event("click", m, now, url="https://shop.example/sale"),
               a_hard_bounce(m, now)]
    body = json.dumps(records).encode()
    headers = sendgrid_headers(grid.keys, body, now)
    answer = client.post(f"/callbacks/{grid.provider_id}", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert counts(answer) == {"events": 4, "applied": 4, "unmatched": 0}
    row = message(container, m)
    assert (row["status"], row["status_reason"]) == ("bounced", "invalid_address")
    assert row["opened_at"] is not None and row["clicked_at"] is not None
    assert history(container, m) == ["sent", "delivered", "opened", "clicked", "bounced"]
    assert suppressed(container) == [(grid.workspace_id, "ana@example.net", "hard_bounce")]

    # the same request again (SendGrid retries): no status moves, no status event twice (G6)
    again = client.post(f"/callbacks/{grid.provider_id}", content=body, headers=headers)
    assert again.status_code == 200 and again.json()["unmatched"] == 0
    assert message(container, m) == row
    status_events = [s for s in history(container, m) if s not in ("opened", "clicked")]
    assert status_events == ["sent", "delivered", "bounced"]
    assert len(suppressed(container)) == 1


def test_a_replayed_callback_records_nothing_new(client: TestClient, container: Container, grid: Account) -> None:
    m = sent_message(container, grid.workspace_id, to="ana@example.net", provider="sendgrid",
                     provider_message_id=SENDGRID_ID)
    now = container.clock.now()
    body = json.dumps([sendgrid_event("open", m, now), sendgrid_event("click", m, now, url="https://shop.example/")])
    headers = sendgrid_headers(grid.keys, body.encode(), now)
    for _ in range(2):
        assert client.post(f"/callbacks/{grid.provider_id}", content=body, headers=headers).status_code == 200
    assert history(container, m) == ["sent", "opened", "clicked"]


def test_an_older_delivered_after_the_bounce_does_not_move_the_status_back(
        client: TestClient, container: Container, grid: Account) -> None:
    m = sent_message(container, grid.workspace_id, to="ana@example.net", provider="sendgrid",
                     provider_message_id=SENDGRID_ID)
    now = container.clock.now()
    bounced = post_sendgrid(client, grid, [a_hard_bounce(m, now)], now)
    assert counts(bounced) == {"events": 1, "applied": 1, "unmatched": 0}
    late = post_sendgrid(client, grid, [sendgrid_event("delivered", m, now - timedelta(minutes=3),
                                                       response="250 OK")], now)
    assert late.status_code == 200 and counts(late) == {"events": 1, "applied": 1, "unmatched": 0}
    row = message(container, m)
    assert (row["status"], row["status_reason"]) == ("bounced", "invalid_address")
    assert history(container, m) == ["sent", "bounced", "delivered"]   # kept in the history, status unmoved


def test_a_bad_signature_is_refused_and_records_nothing(client: TestClient, container: Container,
                                                        grid: Account) -> None:
    m = sent_message(container, grid.workspace_id, to="ana@example.net", provider="sendgrid",
                     provider_message_id=SENDGRID_ID)
    now = container.clock.now()
    body = json.dumps([a_hard_bounce(m, now)]).encode()
    headers = sendgrid_headers(grid.keys, body, now)
    tampered = body.replace(b"5.1.1", b"5.1.2", 1)
    other_key = sendgrid_headers(new_keys(), body, now)
    for content, sent_headers in ((tampered, headers), (body, other_key),
                                  (body, {"Content-Type": "application/json"})):
        answer = client.post(f"/callbacks/{grid.provider_id}", content=content, headers=sent_headers)
        assert answer.status_code == 401, answer.text
        assert "signature" in answer.json()["detail"]
    assert message(container, m)["status"] == "sent"
    assert history(container, m) == ["sent"]
    assert suppressed(container) == []


def test_another_workspaces_provider_cannot_touch_this_workspaces_message(
        client: TestClient, container: Container, grid: Account) -> None:
    m = sent_message(container, grid.workspace_id, to="ana@example.net", provider="sendgrid",
                     provider_message_id=SENDGRID_ID)
    other = make_shop(container.engine, container.clock.now(), slug="intruder")
    intruder = add_sendgrid(container, other.workspace_id)
    now = container.clock.now()
    # by our id, and by SendGrid's id alone: both validly signed with the other workspace's key
    answer = post_sendgrid(client, intruder, [a_hard_bounce(m, now), a_hard_bounce(None, now),
                                              sendgrid_event("spamreport", m, now)], now)
    assert answer.status_code == 200, answer.text
    assert counts(answer) == {"events": 3, "applied": 0, "unmatched": 3}
    assert message(container, m)["status"] == "sent"
    assert history(container, m) == ["sent"]
    assert suppressed(container) == []


def test_a_mailgun_complaint_marks_the_message_and_suppresses_the_address(client: TestClient,
                                                                         container: Container) -> None:
    shop = make_shop(container.engine, container.clock.now())
    with container.engine.begin() as conn:
        provider = providers.add_provider(conn, container.adapters, container.master_key, shop.workspace_id,
                                          channel="email", kind="mailgun", name="gun",
                                          config={"domain": "mg.shop.example"},
                                          secrets={"api_key": "key-not-real", "webhook_key": MAILGUN_KEY},
                                          priority=0, now=container.clock.now())
    data: dict[str, Any] = json.loads((MAILGUN_PAYLOADS / "complained.json").read_text())
    m = sent_message(container, shop.workspace_id, to=data["recipient"], provider="mailgun",
                     provider_message_id=data["message"]["headers"]["message-id"])
    now = container.clock.now()
    data["timestamp"] = now.timestamp()
    data["user-variables"] = {"herald_message_id": m}   # what the send's v:herald_message_id becomes
    # Mailgun webhooks: signature = HMAC-SHA256(signing key, timestamp + token), hex (Mailgun
    # "Securing webhooks"); the event itself is not covered by it.
    body = json.dumps({"signature": signature_block(key=MAILGUN_KEY, at=now), "event-data": data}).encode()
    answer = client.post(f"/callbacks/{provider['id']}", content=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text
    assert counts(answer) == {"events": 1, "applied": 1, "unmatched": 0}
    row = message(container, m)
    assert (row["status"], row["status_reason"]) == ("complained", "complaint")
    assert history(container, m) == ["sent", "complained"]
    assert suppressed(container) == [(shop.workspace_id, data["recipient"], "complaint")]

    wrong = json.dumps({"signature": signature_block(key="not-the-key", at=now), "event-data": data}).encode()
    refused = client.post(f"/callbacks/{provider['id']}", content=wrong, headers={"Content-Type": "application/json"})
    assert refused.status_code == 401


def test_smtp_and_unknown_providers_have_no_callback(client: TestClient, container: Container) -> None:
    shop = make_shop(container.engine, container.clock.now())
    with container.engine.begin() as conn:
        relay = providers.add_provider(conn, container.adapters, container.master_key, shop.workspace_id,
                                       channel="email", kind="smtp", name="relay",
                                       config={"host": "127.0.0.1", "port": 2525, "security": "none"},
                                       secrets={}, priority=0, now=container.clock.now())
    answer = client.post(f"/callbacks/{relay['id']}", content=b"[]", headers={"Content-Type": "application/json"})
    assert answer.status_code == 404
    assert "smtp providers send no status callbacks" in answer.json()["detail"]
    unknown = client.post("/callbacks/prv_nope", content=b"[]", headers={"Content-Type": "application/json"})
    assert unknown.status_code == 404 and unknown.json()["detail"] == "no provider 'prv_nope'"
