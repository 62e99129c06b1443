"""WhatsApp's message_template_status_update webhook through `POST /callbacks/{provider_id}` with
real X-Hub-Signature-256 signatures, on SQLite and PostgreSQL: Meta's review is recorded on the
templates that reference the template (approved, then disabled -> rejected); a "flagged" event
changes nothing; a forged one is refused and changes nothing."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from herald.api.app import create_app
from herald.bootstrap import Container
from herald.db.tables import templates as templates_table
from herald.domain.auth import Principal
from herald.services import providers, templates
from tests.services.support import make_shop

APP_SECRET = "meta-app-secret"
WABA_ID = "102290129340398"


@pytest.fixture
def client(container: Container) -> Iterator[TestClient]:
    with TestClient(create_app(container), raise_server_exceptions=False) as c:
        yield c


def setup(c: Container) -> str:
    shop = make_shop(c.engine, c.clock.now())
    with c.engine.begin() as conn:
        row = providers.add_provider(conn, c.adapters, c.master_key, shop.workspace_id, channel="whatsapp",
                                     kind="whatsapp_cloud", name="meta",
                                     config={"phone_number_id": "106540352242922", "waba_id": WABA_ID},
                                     secrets={"access_token": "EAAG-token", "app_secret": APP_SECRET},
                                     priority=0, now=c.clock.now())
        templates.create_template(conn, Principal("test", shop.workspace_id, None), name="winback",
                                  channel="whatsapp", purpose="marketing", category="marketing",
                                  default_language="es", store_id=None, now=c.clock.now(),
                                  variants={"es": {"template_name": "winback", "template_language": "es",
                                                   "parameters": ["{{ contact.first_name }}"]}})
    return str(row["id"])


def update(event: str, reason: str = "NONE") -> bytes:
    change = {"field": "message_template_status_update", "value": {
        "event": event, "message_template_id": 1627019861106476, "message_template_name": "winback",
        "message_template_language": "es", "reason": reason, "message_template_category": "MARKETING"}}
    entry = {"id": WABA_ID, "time": 1767225600, "changes": [change]}
    return json.dumps({"object": "whatsapp_business_account", "entry": [entry]}).encode()


def post(client: TestClient, provider_id: str, body: bytes, secret: str = APP_SECRET) -> Any:
    signature = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return client.post(f"/callbacks/{provider_id}", content=body,
                       headers={"Content-Type": "application/json", "X-Hub-Signature-256": signature})


def status(c: Container) -> tuple[str, str]:
    with c.engine.begin() as conn:
        row = conn.execute(select(templates_table).where(templates_table.c.name == "winback")).mappings().one()
    return row["approval_status"], row["variants"]["es"]["approval_status"]


def test_template_status_updates_record_metas_review(client: TestClient, container: Container) -> None:
    provider_id = setup(container)
    assert status(container) == ("pending", "pending")

    forged = post(client, provider_id, update("APPROVED"), secret="not-the-app-secret")
    assert forged.status_code == 401
    assert status(container) == ("pending", "pending")

    approved = post(client, provider_id, update("APPROVED"))
    assert approved.status_code == 200, approved.text
    assert approved.json() == {"events": 0, "applied": 0, "unmatched": 0, "inbound": 0}
    assert status(container) == ("approved", "approved")

    flagged = post(client, provider_id, update("FLAGGED"))         # a warning: no status follows from it
    assert flagged.status_code == 200, flagged.text
    assert status(container) == ("approved", "approved")

    disabled = post(client, provider_id, update("DISABLED", reason="Low quality"))
    assert disabled.status_code == 200, disabled.text
    assert status(container) == ("rejected", "rejected")
