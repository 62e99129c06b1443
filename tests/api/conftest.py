"""API fixtures: an app on the test database, and a small multi-tenant world to attack.

World: workspace A with stores A1 and A2, workspace B with store B1; API keys for workspace A,
store A1, store A2 and workspace B; one contact, one stored webhook delivery, one import and one
template in each store."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from fastapi.testclient import TestClient

from herald.api.app import create_app
from herald.bootstrap import Container
from herald.db.tables import imports, messages, push_subscriptions, webhook_deliveries
from herald.domain.auth import Principal
from herald.domain.ids import new_id
from herald.services import apikeys, contacts, templates, workspaces


@pytest.fixture
def client(container: Container) -> Iterator[TestClient]:
    with TestClient(create_app(container), raise_server_exceptions=False) as c:
        yield c


@dataclass
class Tenant:
    key: str
    key_id: str
    principal: Principal

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


@dataclass
class World:
    ids: dict[str, dict[str, str]] = field(default_factory=dict)  # owner -> {"store": id, ...}
    callers: dict[str, Tenant] = field(default_factory=dict)


def _key(conn: Any, ws: str, store: str | None, name: str, now: Any) -> Tenant:
    row, key = apikeys.create_key(conn, workspace_id=ws, store_id=store, name=name, now=now)
    return Tenant(key, row["id"], Principal(row["id"], ws, store))


@pytest.fixture
def world(container: Container) -> World:
    now = container.clock.now()
    w = World()
    with container.engine.begin() as conn:
        for ws_name, store_names in (("a", ("A1", "A2")), ("b", ("B1",))):
            ws = workspaces.create_workspace(conn, name=f"Seller {ws_name}", slug=f"seller-{ws_name}", now=now)
            ws_caller = _key(conn, ws["id"], None, f"{ws_name} workspace", now)
            w.callers[ws_name.upper()] = ws_caller
            for i, name in enumerate(store_names):
                store = workspaces.create_store(conn, ws_caller.principal, name=name, platform="shopify",
                                                currency="USD", timezone="UTC", domain=None, now=now)
                caller = _key(conn, ws["id"], store["id"], f"{name} store", now)
                w.callers[name] = caller
                contact = contacts.create_contact(
                    conn, caller.principal, {"email": f"buyer{i}@{name.lower()}.example"}, now)
                delivery = new_id("whd")
                conn.execute(webhook_deliveries.insert().values(
                    id=delivery, workspace_id=ws["id"], store_id=store["id"], platform="shopify",
                    topic="orders/create", dedupe_key=f"orders/create|event:{name}", headers={}, body=b"{}",
                    status="received", received_at=now))
                upload = new_id("imp")
                conn.execute(imports.insert().values(
                    id=upload, workspace_id=ws["id"], store_id=store["id"], kind="contacts", source_name="x.csv",
                    path=f"/nonexistent/{upload}.csv", sha256="0" * 64, size_bytes=0, state="pending",
                    created_at=now, updated_at=now))
                template = templates.create_template(
                    conn, caller.principal, name=f"welcome {name}", channel="email", purpose="marketing",
                    default_language="en",
                    variants={"en": {"subject": "Hi", "body": "<p>Hi {{ contact.first_name }}</p>",
                                     "body_format": "html"}},
                    store_id=store["id"], now=now)
                message = new_id("msg")
                conn.execute(messages.insert().values(
                    id=message, workspace_id=ws["id"], store_id=store["id"], contact_id=contact["id"],
                    channel="email", purpose="marketing", to_address=contact["email"], status="queued",
                    template_id=template["id"], context={}, attempts=0, created_at=now, updated_at=now))
                subscription = new_id("psub")
                conn.execute(push_subscriptions.insert().values(
                    id=subscription, workspace_id=ws["id"], contact_id=contact["id"], kind="fcm",
                    token=f"fcm-token-{name}", keys={}, created_at=now))
                w.ids[name] = {"store": store["id"], "contact": contact["id"], "api_key": caller.key_id,
                               "delivery": delivery, "import": upload, "template": template["id"],
                               "message": message, "push_subscription": subscription}
    return w
