"""The backfill clients (ShopifyApi, WooCommerceApi) against local servers on 127.0.0.1 that speak
each platform's documented pagination, authentication and errors:

  * Shopify Admin REST: X-Shopify-Access-Token; cursor pagination with `Link: <...page_info=...>;
    rel="previous", <...>; rel="next"`, where a request carrying page_info may carry nothing but
    limit (and fields); 429 with Retry-After; {"errors": ...} bodies.
  * WooCommerce REST v3 over HTTPS (a throwaway certificate): consumer key/secret in HTTP Basic auth
    or in the consumer_key/consumer_secret query parameters (WC_REST_Authentication reads the query
    first); page/per_page with X-WP-Total, X-WP-TotalPages and Link; WordPress {"code", "message"}
    errors (401 woocommerce_rest_cannot_view for a missing/unknown key, 401
    woocommerce_rest_authentication_error for a wrong secret).

No database here: services/sync.py (which saves cursors and waits out RateLimited) is covered by
tests/services/test_sync.py."""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from herald.domain.commerce import CustomerData, OrderData
from herald.domain.connectors import ApiPage, RateLimited, Resource, StoreApiError
from herald.stores.shopify import ShopifyApi
from herald.stores.woocommerce import WooCommerceApi
from tests.stores.localserver import Reply, Request, Tls, self_signed_tls, serve

PAYLOADS = Path(__file__).parent / "payloads"
T = TypeVar("T")


def run(use: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(use())  # type: ignore[arg-type]


async def walk(api: Any, resource: Resource, cursor: str | None = None, *, most: int = 20) -> list[ApiPage]:
    """Every page from `cursor` on, as services/sync.py reads them (bounded)."""
    pages: list[ApiPage] = []
    for _ in range(most):
        page = await api.page(resource, cursor)
        pages.append(page)
        if page.next_cursor is None:
            return pages
        cursor = page.next_cursor
    raise AssertionError(f"no last page after {most} pages")


def reply(status: int, body: Any, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, json.dumps(body).encode(), headers or {})


# ---- Shopify ---------------------------------------------------------------------------------------------

TOKEN = "shpat_0123456789abcdef0123456789abcdef"
SHOPIFY_PAGE = 3  # the fake answers at most this many per page, whatever `limit` asks (Shopify's is 250)
VERSION_PATH = "/admin/api/2024-10"


def shopify_customer(i: int) -> dict[str, Any]:
    data = json.loads((PAYLOADS / "shopify" / "customers_update.json").read_bytes())
    data.update(id=207119551 + i, email=f"buyer{i}@example.com", phone=None)
    return data  # type: ignore[no-any-return]


def shopify_order(i: int) -> dict[str, Any]:
    data = json.loads((PAYLOADS / "shopify" / "orders_paid.json").read_bytes())
    data.update(id=820982911946154508 + i, name=f"#{9999 + i}")
    return data  # type: ignore[no-any-return]


class FakeShopify:
    """customers.json / orders.json with opaque page_info cursors; optional 429s per page."""

    def __init__(self, n_customers: int = 7, n_orders: int = 4) -> None:
        self.data = {"customers": [shopify_customer(i) for i in range(n_customers)],
                     "orders": [shopify_order(i) for i in range(n_orders)]}
        self.throttle: Counter[tuple[str, int]] = Counter()  # (resource, offset) -> 429s still to send
        self.retry_after: str | None = "2.0"
        self.status: int | None = None  # answer every request with this status instead

    @staticmethod
    def cursor(offset: int) -> str:
        return base64.urlsafe_b64encode(json.dumps({"direction": "next", "last_value": offset}).encode()).decode()

    @staticmethod
    def offset(cursor: str) -> int:
        return int(json.loads(base64.urlsafe_b64decode(cursor))["last_value"])

    def __call__(self, request: Request) -> Reply:
        resource = request.path.removeprefix(f"{VERSION_PATH}/").removesuffix(".json")
        if resource not in self.data or not request.path.startswith(VERSION_PATH):
            return reply(404, {"errors": "Not Found"})
        if request.headers.get("x-shopify-access-token") != TOKEN:
            return reply(401, {"errors": "[API] Invalid API key or access token (unrecognized login or wrong "
                                         "password)"})
        if self.status is not None:
            return reply(self.status, {"errors": "Something went wrong"} if self.status != 200 else {"x": 1})
        query = {k: v[0] for k, v in request.query.items()}
        if "page_info" in query and set(query) - {"page_info", "limit", "fields"}:
            return reply(400, {"errors": {"page_info": ["page_info cannot be combined with other parameters"]}})
        offset = self.offset(query["page_info"]) if "page_info" in query else 0
        if self.throttle[(resource, offset)] > 0:
            self.throttle[(resource, offset)] -= 1
            headers = {"Retry-After": self.retry_after} if self.retry_after is not None else {}
            return reply(429, {"errors": "Exceeded 2 calls per second for api client. Reduce request rates to "
                                         "resume uninterrupted service."}, headers)
        limit = min(int(query.get("limit", "50")), SHOPIFY_PAGE)
        items = self.data[resource][offset:offset + limit]
        # The Link URLs name the shop's own host, never this test server: the client must not follow them.
        base = f"https://jsmith.myshopify.com{request.path}?limit={limit}&page_info="
        links = []
        if offset > 0:
            links.append(f'<{base}{self.cursor(max(0, offset - limit))}>; rel="previous"')
        if offset + limit < len(self.data[resource]):
            links.append(f'<{base}{self.cursor(offset + limit)}>; rel="next"')
        headers = {"X-Shopify-Shop-Api-Call-Limit": "1/40", **({"Link": ", ".join(links)} if links else {})}
        return reply(200, {resource: items}, headers)


def shopify(base_url: str, use: Callable[[ShopifyApi], Awaitable[T]], token: str = TOKEN) -> T:
    async def go() -> T:
        api = ShopifyApi(base_url, token)
        try:
            return await use(api)
        finally:
            await api.aclose()
    return asyncio.run(go())


def test_shopify_fetches_every_page_once_in_order() -> None:
    fake = FakeShopify(n_customers=7)
    with serve(fake) as server:
        pages = shopify(server.base_url, lambda api: walk(api, "customers"))
    assert [len(p.objects) for p in pages] == [3, 3, 1]
    customers: list[Any] = [c for p in pages for c in p.objects]
    assert all(isinstance(c, CustomerData) for c in customers)
    assert [c.external_id for c in customers] == [str(207119551 + i) for i in range(7)]
    assert customers[6].email == "buyer6@example.com" and customers[6].tags == ["Léon", "Noël"]
    assert [r.path for r in server.requests] == [f"{VERSION_PATH}/customers.json"] * 3
    assert all(r.headers["x-shopify-access-token"] == TOKEN for r in server.requests)
    first, *rest = server.requests
    assert first.query == {"limit": ["250"]}
    offsets = [FakeShopify.offset(r.query["page_info"][0]) for r in rest]
    assert offsets == [3, 6]  # each page exactly once
    assert all(set(r.query) == {"limit", "page_info"} for r in rest)  # nothing else may go with page_info


def test_shopify_orders_ask_for_every_status_on_the_first_page_only() -> None:
    fake = FakeShopify(n_orders=4)
    with serve(fake) as server:
        pages = shopify(server.base_url, lambda api: walk(api, "orders"))
    orders: list[Any] = [o for p in pages for o in p.objects]
    assert all(isinstance(o, OrderData) for o in orders) and len(orders) == 4
    assert orders[3].external_id == str(820982911946154508 + 3) and orders[3].total_minor == 40495
    assert orders[3].discount_codes == ["SPRING20"]
    assert server.requests[0].query == {"status": ["any"], "limit": ["250"]}  # the default is open orders only
    assert all("status" not in r.query for r in server.requests[1:])


def test_shopify_resumes_from_a_saved_cursor() -> None:
    fake = FakeShopify(n_customers=7)
    with serve(fake) as server:
        first = shopify(server.base_url, lambda api: api.page("customers", None))
        assert first.next_cursor is not None
        resumed = shopify(server.base_url, lambda api: walk(api, "customers", first.next_cursor))
        # a cursor saved as the whole next-page URL (older saves) resumes too
        legacy = f"https://jsmith.myshopify.com{VERSION_PATH}/customers.json?limit=3&page_info={FakeShopify.cursor(6)}"
        tail = shopify(server.base_url, lambda api: walk(api, "customers", legacy))
    assert [c.external_id for p in resumed for c in p.objects] == [str(207119551 + i) for i in range(3, 7)]
    assert [c.external_id for p in tail for c in p.objects] == [str(207119551 + 6)]
    offsets = [FakeShopify.offset(r.query["page_info"][0]) if "page_info" in r.query else 0 for r in server.requests]
    assert offsets == [0, 3, 6, 6]


def test_shopify_rate_limit_carries_retry_after_and_the_page_is_asked_again() -> None:
    fake = FakeShopify(n_customers=7)
    fake.throttle[("customers", 3)] = 1
    with serve(fake) as server:
        async def use(api: ShopifyApi) -> tuple[ApiPage, ApiPage]:
            first = await api.page("customers", None)
            with pytest.raises(RateLimited) as limited:
                await api.page("customers", first.next_cursor)
            assert limited.value.retry_after == 2.0 and "retry after 2 s" in str(limited.value)
            return first, await api.page("customers", first.next_cursor)  # the caller waited; same cursor
        _first, second = shopify(server.base_url, use)
    assert [c.external_id for c in second.objects] == [str(207119551 + i) for i in range(3, 6)]
    assert len(server.requests) == 3


@pytest.mark.parametrize(("header", "expected"), [("0.5", 0.5), (None, 2.0), ("Wed, 21 Oct 2026 07:28:00 GMT", 2.0),
                                             ("-3", 0.0)])
def test_shopify_retry_after_values(header: str | None, expected: float) -> None:
    fake = FakeShopify()
    fake.throttle[("orders", 0)] = 1
    fake.retry_after = header
    with serve(fake) as server, pytest.raises(RateLimited) as limited:
        shopify(server.base_url, lambda api: api.page("orders", None))
    assert limited.value.retry_after == expected


@pytest.mark.parametrize(("status", "fix"), [
    (401, "check the Admin API access token"),
    (403, "give the app the read_customers scope"),
    (402, "settle the Shopify bill"),
    (500, "retryable: run the sync again later"),
    (200, "no 'customers' list"),
])
def test_shopify_errors_say_what_to_fix(status: int, fix: str) -> None:
    fake = FakeShopify()
    fake.status = status
    with serve(fake) as server, pytest.raises(StoreApiError) as failed:
        shopify(server.base_url, lambda api: api.page("customers", None), token=TOKEN if status != 401 else "shpat_no")
    assert fix in str(failed.value)
    assert TOKEN not in str(failed.value)


def test_shopify_wrong_url_and_unreachable_shop() -> None:
    fake = FakeShopify()
    with serve(fake) as server:
        url = server.base_url
        async def wrong_version(api: ShopifyApi) -> None:
            api.api_version = "1999-01"
            await api.page("orders", None)
        with pytest.raises(StoreApiError, match="check the store URL"):
            shopify(url, wrong_version)
    with pytest.raises(StoreApiError, match="could not reach Shopify"):  # the server is gone now
        shopify(url, lambda api: api.page("orders", None))
    with pytest.raises(StoreApiError, match="must start with https://"):
        ShopifyApi("jsmith.myshopify.com", TOKEN)
    with pytest.raises(StoreApiError, match="read_customers and read_orders"):
        ShopifyApi("https://jsmith.myshopify.com", "")


def test_shopify_refuses_a_cursor_without_page_info() -> None:
    with pytest.raises(StoreApiError, match="restart the sync"):
        shopify("https://jsmith.myshopify.com", lambda api: api.page("customers", "https://jsmith.myshopify.com/x?y=1"))


# ---- WooCommerce -----------------------------------------------------------------------------------------

CK = "ck_4f1d7a5a0e7c0c8f9b1d2e3f4a5b6c7d8e9f0a1b"
CS = "cs_9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d"


def woo_customer(i: int) -> dict[str, Any]:
    data = json.loads((PAYLOADS / "woocommerce" / "customer_created.json").read_bytes())
    data.update(id=25 + i, email=f"buyer{i}@example.com", username=f"buyer{i}")
    return data  # type: ignore[no-any-return]


def woo_order(i: int) -> dict[str, Any]:
    data = json.loads((PAYLOADS / "woocommerce" / "order_created.json").read_bytes())
    data.update(id=727 + i, number=str(727 + i))
    return data  # type: ignore[no-any-return]


class FakeWoo:
    """/wp-json/wc/v3/customers and /orders over HTTPS, authenticated as WC_REST_Authentication
    does over SSL; `strip_authorization` plays a host that drops the Authorization header."""

    def __init__(self, n_customers: int = 250, n_orders: int = 120, *, strip_authorization: bool = False) -> None:
        self.data = {"customers": [woo_customer(i) for i in range(n_customers)],
                     "orders": [woo_order(i) for i in range(n_orders)]}
        self.strip_authorization = strip_authorization
        self.throttle: Counter[tuple[str, int]] = Counter()
        self.total_pages_header = True

    def credentials(self, request: Request) -> tuple[str | None, str | None]:
        if request.query.get("consumer_key") and request.query.get("consumer_secret"):  # the query wins
            return request.query["consumer_key"][0], request.query["consumer_secret"][0]
        header = None if self.strip_authorization else request.headers.get("authorization")
        if header and header.startswith("Basic "):
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
            return user, password
        return None, None

    def __call__(self, request: Request) -> Reply:
        resource = request.path.removeprefix("/wp-json/wc/v3/")
        if resource not in self.data:
            return reply(404, {"code": "rest_no_route", "message": "No route was found matching the URL and "
                                                                   "request method.", "data": {"status": 404}})
        key, secret = self.credentials(request)
        if key != CK:  # no key, or one WooCommerce does not know: the request runs as a visitor
            return reply(401, {"code": "woocommerce_rest_cannot_view", "message": "Sorry, you cannot list resources.",
                               "data": {"status": 401}})
        if secret != CS:
            return reply(401, {"code": "woocommerce_rest_authentication_error",
                               "message": "Consumer secret is invalid.", "data": {"status": 401}})
        query = {k: v[0] for k, v in request.query.items()}
        page, per_page = int(query.get("page", "1")), int(query.get("per_page", "10"))
        if per_page > 100:
            return reply(400, {"code": "rest_invalid_param", "message": "Invalid parameter(s): per_page",
                               "data": {"status": 400}})
        if self.throttle[(resource, page)] > 0:
            self.throttle[(resource, page)] -= 1
            return reply(429, {"code": "too_many_requests", "message": "Slow down"}, {"Retry-After": "7"})
        items = sorted(self.data[resource], key=lambda x: x["id"], reverse=query.get("order") != "asc")
        total_pages = math.ceil(len(items) / per_page)
        link = f"https://example.com/wp-json/wc/v3/{resource}?page="
        links = ([f'<{link}{page - 1}>; rel="prev"'] if page > 1 else []) + (
            [f'<{link}{page + 1}>; rel="next"'] if page < total_pages else [])
        headers = {"X-WP-Total": str(len(items)), **({"Link": ", ".join(links)} if links else {})}
        if self.total_pages_header:
            headers["X-WP-TotalPages"] = str(total_pages)
        return reply(200, items[(page - 1) * per_page:page * per_page], headers)


def woo(server_url: str, tls: Tls, use: Callable[[WooCommerceApi], Awaitable[T]],
        key: str = CK, secret: str = CS) -> tuple[T, WooCommerceApi]:
    async def go() -> tuple[T, WooCommerceApi]:
        async with httpx.AsyncClient(verify=tls.client, timeout=httpx.Timeout(10.0)) as client:
            api = WooCommerceApi(server_url, key, secret, client=client)
            return await use(api), api
    return asyncio.run(go())


@pytest.fixture(scope="module")
def tls() -> Tls:
    return self_signed_tls()


def woo_pages(server: Any) -> list[tuple[str, int]]:
    return [(r.path.rsplit("/", 1)[-1], int(r.query["page"][0])) for r in server.requests]


def test_woocommerce_fetches_every_page_once_over_https_with_basic_auth(tls: Tls) -> None:
    fake = FakeWoo(n_customers=250)
    with serve(fake, tls) as server:
        assert server.base_url.startswith("https://127.0.0.1:")
        pages, api = woo(server.base_url, tls, lambda api: walk(api, "customers"))
    assert [len(p.objects) for p in pages] == [100, 100, 50]
    assert [p.next_cursor for p in pages] == ["2", "3", None]
    customers: list[Any] = [c for p in pages for c in p.objects]
    assert [c.external_id for c in customers] == [str(25 + i) for i in range(250)]  # oldest first, none twice
    assert customers[249].email == "buyer249@example.com" and customers[0].country == "US"
    assert woo_pages(server) == [("customers", 1), ("customers", 2), ("customers", 3)]
    expected_auth = "Basic " + base64.b64encode(f"{CK}:{CS}".encode()).decode()
    for request in server.requests:
        assert request.headers["authorization"] == expected_auth
        assert {k: v[0] for k, v in request.query.items() if k != "page"} == {
            "per_page": "100", "orderby": "id", "order": "asc"}
    assert not api.key_in_query


def test_woocommerce_orders(tls: Tls) -> None:
    with serve(FakeWoo(n_orders=120), tls) as server:
        pages, _ = woo(server.base_url, tls, lambda api: walk(api, "orders"))
    orders: list[Any] = [o for p in pages for o in p.objects]
    assert len(orders) == 120 and all(isinstance(o, OrderData) for o in orders)
    assert orders[119].external_id == str(727 + 119) and orders[119].total_minor == 2935
    assert woo_pages(server) == [("orders", 1), ("orders", 2)]


def test_woocommerce_resumes_from_a_saved_cursor(tls: Tls) -> None:
    with serve(FakeWoo(n_customers=250), tls) as server:
        pages, _ = woo(server.base_url, tls, lambda api: walk(api, "customers", "2"))
    assert [c.external_id for p in pages for c in p.objects] == [str(25 + i) for i in range(100, 250)]
    assert woo_pages(server) == [("customers", 2), ("customers", 3)]


def test_woocommerce_follows_link_when_total_pages_is_missing(tls: Tls) -> None:
    fake = FakeWoo(n_customers=150)
    fake.total_pages_header = False
    with serve(fake, tls) as server:
        pages, _ = woo(server.base_url, tls, lambda api: walk(api, "customers"))
    assert [len(p.objects) for p in pages] == [100, 50]


def test_woocommerce_falls_back_to_the_query_string_when_the_host_strips_authorization(tls: Tls) -> None:
    fake = FakeWoo(n_customers=150, strip_authorization=True)
    with serve(fake, tls) as server:
        pages, api = woo(server.base_url, tls, lambda api: walk(api, "customers"))
    assert [len(p.objects) for p in pages] == [100, 50] and api.key_in_query
    first, retried, second = server.requests
    assert "authorization" in first.headers and "consumer_key" not in first.query  # header first: refused
    assert retried.query["consumer_key"] == [CK] and retried.query["consumer_secret"] == [CS]
    assert "authorization" not in retried.headers
    assert second.query["consumer_key"] == [CK] and second.query["page"] == ["2"]  # no second 401
    assert woo_pages(server) == [("customers", 1), ("customers", 1), ("customers", 2)]


def test_woocommerce_wrong_secret_is_a_clear_error_and_not_retried(tls: Tls) -> None:
    with serve(FakeWoo(), tls) as server, pytest.raises(StoreApiError) as failed:
        woo(server.base_url, tls, lambda api: api.page("customers", None), secret="cs_wrong_secret_value")
    message = str(failed.value)
    assert "Consumer secret is invalid" in message and "does not belong to the consumer key" in message
    assert "cs_wrong_secret_value" not in message and len(server.requests) == 1


def test_woocommerce_unknown_key_is_a_clear_error(tls: Tls) -> None:
    with serve(FakeWoo(), tls) as server, pytest.raises(StoreApiError) as failed:
        woo(server.base_url, tls, lambda api: api.page("orders", None), key="ck_revoked", secret="cs_revoked_secret")
    message = str(failed.value)
    assert "woocommerce_rest_cannot_view" in message and "Authorization header and in the query string" in message
    assert "WooCommerce > Settings > Advanced > REST API" in message and "cs_revoked_secret" not in message
    assert len(server.requests) == 2  # header, then query string, then stop


def test_woocommerce_rate_limit_carries_retry_after(tls: Tls) -> None:
    fake = FakeWoo(n_customers=150)
    fake.throttle[("customers", 2)] = 1
    with serve(fake, tls) as server:
        async def use(api: WooCommerceApi) -> ApiPage:
            first = await api.page("customers", None)
            with pytest.raises(RateLimited) as limited:
                await api.page("customers", first.next_cursor)
            assert limited.value.retry_after == 7.0
            return await api.page("customers", first.next_cursor)
        second, _ = woo(server.base_url, tls, use)
    assert len(second.objects) == 50 and second.next_cursor is None
    assert woo_pages(server) == [("customers", 1), ("customers", 2), ("customers", 2)]


def test_woocommerce_wrong_site_address(tls: Tls) -> None:
    with serve(FakeWoo(), tls) as server, pytest.raises(StoreApiError) as failed:
        woo(server.base_url + "/shop", tls, lambda api: api.page("orders", None))
    assert "rest_no_route" in str(failed.value) and "permalinks are not 'Plain'" in str(failed.value)


def test_woocommerce_refuses_plain_http_and_says_why() -> None:
    with pytest.raises(StoreApiError) as refused:
        WooCommerceApi("http://shop.example.com", CK, CS)
    assert "only over HTTPS" in str(refused.value) and "OAuth 1.0a" in str(refused.value)
    with pytest.raises(StoreApiError, match="Read access"):
        WooCommerceApi("https://shop.example.com", CK, "")


def test_woocommerce_refuses_a_cursor_that_is_not_a_page_number(tls: Tls) -> None:
    with pytest.raises(StoreApiError, match="not a page number"):
        woo("https://127.0.0.1:9", tls, lambda api: api.page("customers", "eyJsYXN0X2lkIjo1fQ"))


def test_woocommerce_unreachable_site_hides_the_secret(tls: Tls) -> None:
    with serve(FakeWoo(), tls) as server:
        url = server.base_url
    with pytest.raises(StoreApiError) as failed:  # the server is gone
        woo(url, tls, lambda api: api.page("customers", None))
    assert "could not reach WooCommerce" in str(failed.value) and CS not in str(failed.value)


def test_the_fake_pages_as_documented() -> None:
    """X-WP-TotalPages is ceil(X-WP-Total / per_page); the client's stop rule relies on it."""
    fake = FakeWoo(n_customers=250)
    answer = fake(Request("GET", "/wp-json/wc/v3/customers", {"page": ["3"], "per_page": ["100"], "consumer_key": [CK],
                                                               "consumer_secret": [CS]}, {}))
    assert answer.headers["X-WP-Total"] == "250" and answer.headers["X-WP-TotalPages"] == "3"
    assert len(json.loads(answer.body)) == 50 and 'rel="next"' not in answer.headers["Link"]
