"""Inbound store webhooks end to end, on both backends: real HMAC signatures computed from the
store's secret, the raw delivery stored before the 200, replays with one effect, rotation,
unknown topics kept and reported, processing after commit by the worker."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, func, select

from herald.bootstrap import Container
from herald.db.tables import contacts, events, fulfillments, jobs, orders, stores, webhook_deliveries
from herald.domain.clock import ShiftedClock
from herald.worker.kinds import build_worker
from tests.api.conftest import World

SECRET = "shpss_0123456789abcdef0123456789abcdef"


def shopify_order(order_id: int = 820982911946154508, *, updated_at: str = "2026-11-20T10:00:00-05:00",
                  email: str = "jon@example.com") -> dict[str, Any]:
    """The fields of Shopify's documented REST Order resource that Herald reads."""
    return {
        "id": order_id, "name": "#9999", "email": email, "currency": "USD",
        "created_at": "2026-11-20T09:59:00-05:00", "updated_at": updated_at, "cancelled_at": None,
        "financial_status": "paid", "fulfillment_status": None,
        "subtotal_price": "199.00", "total_discounts": "10.00", "total_tax": "0.00", "total_price": "199.00",
        "total_shipping_price_set": {"shop_money": {"amount": "10.00", "currency_code": "USD"}},
        "discount_codes": [{"code": "WELCOME10", "amount": "10.00", "type": "fixed_amount"}],
        "checkout_token": "bd5a8aa1ecd019dd3520ff791ee3a24c",
        "order_status_url": "https://aurora.example/orders/123/authenticate?key=abc",
        "shipping_address": {"country_code": "US", "country": "United States"},
        "customer": {"id": 115310627314723954, "email": email, "first_name": "Jon", "last_name": "Snow",
                     "phone": None, "tags": "", "created_at": "2026-11-01T09:00:00-05:00",
                     "updated_at": "2026-11-20T09:00:00-05:00"},
        "line_items": [{"id": 866550311766439020, "product_id": 632910392, "variant_id": 808950810,
                        "sku": "IPOD-342-N", "title": "IPod Nano", "quantity": 1, "price": "199.00"}],
        "fulfillments": [], "refunds": [],
    }


def sign(body: bytes, secret: str = SECRET) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def shopify_headers(body: bytes, topic: str = "orders/create", event_id: str = "evt-1",
                    secret: str = SECRET) -> dict[str, str]:
    return {"X-Shopify-Topic": topic, "X-Shopify-Hmac-Sha256": sign(body, secret), "X-Shopify-Event-Id": event_id,
            "X-Shopify-Shop-Domain": "aurora.myshopify.com", "Content-Type": "application/json"}


def connect(client: TestClient, world: World, secret: str = SECRET, store: str = "A1") -> None:
    resp = client.patch(f"/api/v1/stores/{world.ids[store]['store']}/connection",
                        headers=world.callers["A"].headers, json={"webhook_secret": secret})
    assert resp.status_code == 200, resp.text
    assert resp.json()["webhook_secret_set"] is True
    assert secret not in resp.text


def drain(container: Container, rounds: int = 5) -> None:
    """Run due jobs until none is left (bounded)."""
    worker = build_worker(container)
    for _ in range(rounds):
        if asyncio.run(worker.run_once()) == 0:
            return


def count(container: Container, table: Any, *where: Any) -> int:
    with container.engine.begin() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())


@pytest.fixture
def hook(world: World, container: Container) -> str:
    with container.engine.begin() as conn:  # the world's sample deliveries: these tests count their own
        conn.execute(delete(webhook_deliveries))
    return f"/hooks/shopify/{world.ids['A1']['store']}"


def test_signed_order_is_stored_acknowledged_then_processed(client: TestClient, world: World, hook: str,
                                                             container: Container) -> None:
    connect(client, world)
    body = json.dumps(shopify_order()).encode()
    resp = client.post(hook, content=body, headers=shopify_headers(body))
    assert resp.status_code == 200, resp.text
    assert resp.json()["duplicate"] is False
    assert count(container, webhook_deliveries, webhook_deliveries.c.status == "received") == 1
    assert count(container, jobs, jobs.c.kind == "intake.webhook") == 1
    assert count(container, orders) == 0  # processed after commit, not in the request
    drain(container)
    with container.engine.begin() as conn:
        order = conn.execute(select(orders)).mappings().one()
        contact = conn.execute(select(contacts).where(contacts.c.id == order["contact_id"])).mappings().one()
        delivery = conn.execute(select(webhook_deliveries)).mappings().one()
    assert (order["external_id"], order["number"], order["currency"]) == ("820982911946154508", "#9999", "USD")
    assert (order["total_minor"], order["discount_minor"], order["shipping_minor"]) == (19900, 1000, 1000)
    assert order["discount_codes"] == ["WELCOME10"] and order["shipping_country"] == "US"
    assert contact["email"] == "jon@example.com" and contact["orders_count"] == 1
    assert contact["total_spent"] == {"USD": 19900}
    assert delivery["status"] == "processed" and delivery["processed_at"] is not None


@pytest.mark.parametrize("tamper", ["one-bit", "wrong-secret", "missing-header", "malformed-header"])
def test_bad_signature_is_401_and_nothing_is_stored(client: TestClient, world: World, hook: str,
                                                    container: Container, tamper: str) -> None:
    connect(client, world)
    body = json.dumps(shopify_order()).encode()
    headers = shopify_headers(body)
    if tamper == "one-bit":
        body = bytes([body[0] ^ 0x01]) + body[1:]
    elif tamper == "wrong-secret":
        headers = shopify_headers(body, secret="not-the-store-secret")
    elif tamper == "missing-header":
        del headers["X-Shopify-Hmac-Sha256"]
    else:
        headers["X-Shopify-Hmac-Sha256"] = "not base64 at all!"
    resp = client.post(hook, content=body, headers=headers)
    assert resp.status_code == 401, resp.text
    assert resp.headers["content-type"] == "application/problem+json"
    assert count(container, webhook_deliveries) == 0
    assert count(container, jobs, jobs.c.kind == "intake.webhook") == 0


def test_replayed_delivery_has_one_effect(client: TestClient, world: World, hook: str, container: Container) -> None:
    connect(client, world)
    body = json.dumps(shopify_order()).encode()
    first = client.post(hook, content=body, headers=shopify_headers(body, event_id="evt-42"))
    again = client.post(hook, content=body, headers=shopify_headers(body, event_id="evt-42"))
    assert first.status_code == again.status_code == 200
    assert again.json() == {**first.json(), "duplicate": True}
    assert count(container, jobs, jobs.c.kind == "intake.webhook") == 1
    drain(container)
    # the same order again under a new delivery id: processed, and still one order, one event
    client.post(hook, content=body, headers=shopify_headers(body, event_id="evt-43"))
    drain(container)
    with container.engine.begin() as conn:
        dup = conn.execute(select(webhook_deliveries.c.duplicates).where(
            webhook_deliveries.c.dedupe_key == "orders/create|event:evt-42")).scalar_one()
    assert dup == 1
    assert count(container, orders) == 1
    assert count(container, events, events.c.name == "Order Completed") == 1
    assert count(container, webhook_deliveries, webhook_deliveries.c.status == "processed") == 2


def test_rotation_accepts_the_previous_secret_for_a_grace_period(client: TestClient, world: World, hook: str,
                                                                 container: Container, clock: ShiftedClock) -> None:
    connect(client, world, "old-secret-123")
    connect(client, world, "new-secret-456")
    body = json.dumps(shopify_order()).encode()
    for i, secret in enumerate(("old-secret-123", "new-secret-456")):
        resp = client.post(hook, content=body, headers=shopify_headers(body, event_id=f"r{i}", secret=secret))
        assert resp.status_code == 200, (secret, resp.text)
    clock.advance(timedelta(days=4))
    late = client.post(hook, content=body, headers=shopify_headers(body, event_id="r9", secret="old-secret-123"))
    assert late.status_code == 401
    assert client.post(hook, content=body, headers=shopify_headers(body, event_id="r10",
                                                                   secret="new-secret-456")).status_code == 200


def test_secrets_are_encrypted_at_rest(client: TestClient, world: World, container: Container) -> None:
    connect(client, world, "very-secret-value-1")
    with container.engine.begin() as conn:
        stored = conn.execute(select(stores.c.webhook_secret).where(
            stores.c.id == world.ids["A1"]["store"])).scalar_one()
    assert stored and "very-secret-value-1" not in stored
    shown = client.get(f"/api/v1/stores/{world.ids['A1']['store']}/connection", headers=world.callers["A"].headers)
    assert shown.status_code == 200 and "very-secret" not in shown.text
    assert shown.json()["webhook_url"].endswith(f"/hooks/shopify/{world.ids['A1']['store']}")


def test_unknown_topic_is_kept_and_reported(client: TestClient, world: World, hook: str,
                                            container: Container) -> None:
    connect(client, world)
    body = b'{"id": 1, "title": "a collection"}'
    resp = client.post(hook, content=body, headers=shopify_headers(body, topic="collections/create"))
    assert resp.status_code == 200
    drain(container)
    listed = client.get("/api/v1/webhook-deliveries?status=unknown_topic", headers=world.callers["A"].headers)
    assert listed.status_code == 200
    [item] = listed.json()["data"]
    assert item["topic"] == "collections/create" and "collections/create" in item["detail"]
    assert "body" not in item
    # other tenants cannot see it
    other = client.get("/api/v1/webhook-deliveries", headers=world.callers["B"].headers)
    assert other.json()["data"] == []


def test_store_without_secret_or_wrong_platform(client: TestClient, world: World, hook: str,
                                                container: Container) -> None:
    body = json.dumps(shopify_order()).encode()
    resp = client.post(hook, content=body, headers=shopify_headers(body))
    assert resp.status_code == 401 and "no webhook secret" in resp.json()["detail"]
    connect(client, world)
    wrong = client.post(f"/hooks/woocommerce/{world.ids['A1']['store']}", content=body, headers=shopify_headers(body))
    assert wrong.status_code == 404
    unknown = client.post(f"/hooks/bigcartel/{world.ids['A1']['store']}", content=body)
    assert unknown.status_code == 404
    assert count(container, webhook_deliveries) == 0


def test_fulfillment_before_its_order_waits_for_it(client: TestClient, world: World, hook: str,
                                                   container: Container, clock: ShiftedClock) -> None:
    connect(client, world)
    fulfillment = {"id": 255858046, "order_id": 820982911946154508, "status": "success",
                   "created_at": "2026-11-21T10:00:00-05:00", "updated_at": "2026-11-21T10:00:00-05:00",
                   "tracking_company": "UPS", "tracking_number": "1Z2345", "tracking_numbers": ["1Z2345"],
                   "tracking_url": "https://www.ups.com/track?tracknum=1Z2345",
                   "tracking_urls": ["https://www.ups.com/track?tracknum=1Z2345"], "shipment_status": None,
                   "line_items": []}
    fbody = json.dumps(fulfillment).encode()
    response = client.post(hook, content=fbody, headers=shopify_headers(fbody, "fulfillments/create", "f1"))
    assert response.status_code == 200
    drain(container)
    assert count(container, webhook_deliveries, webhook_deliveries.c.status == "received") == 1  # waiting
    obody = json.dumps(shopify_order()).encode()
    client.post(hook, content=obody, headers=shopify_headers(obody, "orders/create", "o1"))
    drain(container)  # the order lands; the fulfilment's retry is not due yet
    clock.advance(timedelta(minutes=15))  # past the retry delay
    drain(container)
    with container.engine.begin() as conn:
        row = conn.execute(select(fulfillments)).mappings().one()
    assert row["tracking_numbers"] == ["1Z2345"] and row["tracking_company"] == "UPS"
    assert count(container, webhook_deliveries, webhook_deliveries.c.status == "processed") == 2
