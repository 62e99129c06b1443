"""Backfill/reconcile (`herald stores sync`) against a local server speaking the Shopify Admin
REST API's documented cursor pagination (Link: <...page_info=...>; rel="next"), with a 429 +
Retry-After on the way, on both backends; and the CLI as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from sqlalchemy import func, select

from herald.bootstrap import Container
from herald.db.tables import contacts, orders, stores
from herald.domain.auth import Principal
from herald.services import stores as store_connections
from herald.services import sync, workspaces
from tests.conftest import TEST_SECRET

TOKEN = "shpat_test_token_0123456789"
PAGE = 3  # items per page the fake server answers


def customer(i: int) -> dict[str, Any]:
    return {"id": 1000 + i, "email": f"buyer{i}@example.com", "first_name": f"Buyer{i}", "last_name": "Test",
            "phone": None, "tags": "vip" if i % 2 else "", "created_at": "2026-01-01T00:00:00Z",
            "updated_at": "2026-02-01T00:00:00Z", "default_address": {"country_code": "DE"}}


def order(i: int) -> dict[str, Any]:
    return {"id": 5000 + i, "name": f"#{1000 + i}", "email": f"buyer{i}@example.com", "currency": "EUR",
            "created_at": "2026-03-01T12:00:00Z", "updated_at": "2026-03-02T12:00:00Z", "cancelled_at": None,
            "financial_status": "paid", "fulfillment_status": None, "subtotal_price": "20.00",
            "total_discounts": "0.00", "total_tax": "0.00", "total_price": f"{20 + i}.50",
            "discount_codes": [], "customer": customer(i), "line_items": [
                {"id": 9000 + i, "product_id": 1, "variant_id": 2, "sku": "S", "title": "Socks", "quantity": 1,
                 "price": "20.00"}], "fulfillments": [], "refunds": [],
            "shipping_address": {"country_code": "DE"}}


class FakeShopify:
    """customers.json and orders.json, PAGE per page, page_info cursors in the Link header,
    one 429 with Retry-After on the first orders request, and the access token checked."""

    def __init__(self, n_customers: int, n_orders: int) -> None:
        self.data = {"customers": [customer(i) for i in range(n_customers)],
                     "orders": [order(i) for i in range(n_orders)]}
        self.requests: list[str] = []
        self.throttled = False
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.requests.append(self.path)
                parts = urlsplit(self.path)
                resource = parts.path.rsplit("/", 1)[-1].removesuffix(".json")
                if self.headers.get("X-Shopify-Access-Token") != TOKEN:
                    return self._send(401, {"errors": "[API] Invalid API key or access token"})
                if resource == "orders" and not fake.throttled:
                    fake.throttled = True
                    return self._send(429, {"errors": "Exceeded 2 calls per second"}, {"Retry-After": "0.05"})
                start = int(parse_qs(parts.query).get("page_info", ["0"])[0])
                items = fake.data.get(resource, [])[start:start + PAGE]
                headers = {}
                if start + PAGE < len(fake.data.get(resource, [])):
                    base = f"http://127.0.0.1:{fake.port}{parts.path}"
                    headers["Link"] = f'<{base}?limit={PAGE}&page_info={start + PAGE}>; rel="next"'
                return self._send(200, {resource: items}, headers)

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FakeShopify:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def shop(container: Container) -> tuple[str, Principal]:
    now = container.clock.now()
    with container.engine.begin() as conn:
        ws = workspaces.create_workspace(conn, name="S", slug="sync-seller", now=now)
        who = Principal("test", ws["id"], None)
        store = workspaces.create_store(conn, who, name="Shop", platform="shopify", currency="EUR",
                                        timezone="UTC", domain="shop.example", now=now)
    return store["id"], who


def run_sync(container: Container, store_id: str, who: Principal) -> sync.SyncReport:
    with container.engine.begin() as conn:
        info, base_url, creds = store_connections.api_credentials(conn, who, store_id, master_key=container.master_key)

    async def go() -> sync.SyncReport:
        api = container.store_api(info.platform, base_url, creds)
        try:
            return await sync.sync_store(container.engine, container.clock, info, api)
        finally:
            await api.aclose()
    return asyncio.run(go())


def test_sync_pulls_every_page_and_a_second_run_changes_nothing(container: Container,
                                                                 shop: tuple[str, Principal]) -> None:
    store_id, who = shop
    with FakeShopify(n_customers=7, n_orders=5) as fake:
        with container.engine.begin() as conn:
            store_connections.set_api_credentials(conn, who, store_id, base_url=fake.url,
                                                  credentials={"access_token": TOKEN}, master_key=container.master_key)
        report = run_sync(container, store_id, who)
        assert report.objects == {"customers": 7, "orders": 5}
        assert report.pages == {"customers": 3, "orders": 2}
        assert report.waits == 1  # the 429 was honoured, not fatal
        with container.engine.begin() as conn:
            assert conn.execute(select(func.count()).select_from(contacts)).scalar_one() == 7
            assert conn.execute(select(func.count()).select_from(orders)).scalar_one() == 5
            buyer = conn.execute(select(contacts).where(contacts.c.email == "buyer4@example.com")).mappings().one()
            state = conn.execute(select(stores.c.sync_state).where(stores.c.id == store_id)).scalar_one()
        assert buyer["orders_count"] == 1 and buyer["total_spent"] == {"EUR": 2450}
        assert buyer["country"] == "DE"
        assert state["orders"]["cursor"] is None and state["orders"]["last_synced_at"]
        updated_before = buyer["updated_at"]
        again = run_sync(container, store_id, who)
        assert again.written == 0
        with container.engine.begin() as conn:
            same = conn.execute(select(contacts.c.updated_at).where(contacts.c.id == buyer["id"])).scalar_one()
        assert same == updated_before


def test_sync_resumes_from_the_saved_cursor(container: Container, shop: tuple[str, Principal]) -> None:
    store_id, who = shop
    with FakeShopify(n_customers=7, n_orders=0) as fake:
        with container.engine.begin() as conn:
            store_connections.set_api_credentials(conn, who, store_id, base_url=fake.url,
                                                  credentials={"access_token": TOKEN}, master_key=container.master_key)
            # as if a previous run had committed the first page and then crashed
            conn.execute(stores.update().where(stores.c.id == store_id).values(
                sync_state={"customers": {"cursor": f"{fake.url}/admin/api/2024-10/customers.json?"
                                                    f"limit={PAGE}&page_info={PAGE}",
                                          "started_at": datetime.now(UTC).isoformat()}}))
        report = run_sync(container, store_id, who)
    assert report.objects["customers"] == 4  # pages 2 and 3 only
    assert all("page_info=0" not in p for p in fake.requests)


def test_wrong_token_is_a_clear_error(container: Container, shop: tuple[str, Principal]) -> None:
    store_id, who = shop
    with FakeShopify(n_customers=1, n_orders=0) as fake:
        with container.engine.begin() as conn:
            store_connections.set_api_credentials(conn, who, store_id, base_url=fake.url,
                                                  credentials={"access_token": "wrong"},
                                                  master_key=container.master_key)
        from herald.domain.connectors import StoreApiError
        with pytest.raises(StoreApiError):
            run_sync(container, store_id, who)


def test_cli_sync(tmp_path: Any) -> None:
    env = {**os.environ, "HERALD_DATABASE_URL": f"sqlite:///{tmp_path}/h.db", "HERALD_SECRET_KEY": TEST_SECRET,
           "HERALD_LOG_LEVEL": "warning"}

    def herald(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "herald.cli", *args], env=env, input=stdin, text=True,
                              capture_output=True, timeout=120, check=False)

    assert herald("migrate").returncode == 0
    assert herald("workspace", "create", "--name", "W", "--slug", "w").returncode == 0
    added = herald("stores", "add", "--workspace", "w", "--name", "Shop", "--platform", "shopify",
                   "--currency", "EUR", "--json")
    assert added.returncode == 0, added.stderr
    store_id = json.loads(added.stdout)["id"]
    with FakeShopify(n_customers=4, n_orders=2) as fake:
        connected = herald("stores", "connect", store_id, "--api-url", fake.url, "--access-token", "-", stdin=TOKEN)
        assert connected.returncode == 0, connected.stderr
        assert TOKEN not in connected.stdout + connected.stderr
        done = herald("stores", "sync", store_id, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["objects"] == {"customers": 4, "orders": 2}
    missing = herald("stores", "sync", "st_nope")
    assert missing.returncode == 1 and "no store" in missing.stderr
