"""The inbox over HTTP (TestClient): the API-key routes, the widget token and the public routes
it opens, CORS for the store's domain only, and the widget script. The event stream is read by a
real HTTP client in test_inbox_stream.py."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from herald.api.routes import inbox as inbox_routes
from herald.bootstrap import Container
from herald.db.tables import stores
from herald.domain.clock import ShiftedClock
from herald.services import contacts, inbox
from tests.api.conftest import World

SITE = "https://shop-a1.example"


@pytest.fixture
def site(container: Container, world: World) -> World:
    """Store A1 gets a domain (its site may call the inbox) and A1's contact three items."""
    with container.engine.begin() as conn:
        conn.execute(update(stores).where(stores.c.id == world.ids["A1"]["store"]).values(domain="shop-a1.example"))
    for i in range(3):
        deliver(container, world, "A1", f"item {i}")
    return world


def deliver(container: Container, world: World, owner: str, title: str, *, store: str | None = None) -> str:
    ids = world.ids[owner]
    workspace_id = world.callers[owner].principal.workspace_id
    with container.engine.begin() as conn:
        return inbox.deliver(conn, workspace_id, ids["contact"], None, store or ids["store"], title,
                             "Body <b>not HTML</b>", "https://shop-a1.example/x", container.clock.now())


def token_for(client: TestClient, world: World, caller: str = "A1", **body: object) -> str:
    resp = client.post(f"/api/v1/inbox/{world.ids['A1']['contact']}/token", headers=world.callers[caller].headers,
                       json=body)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["token"])


# ---- API-key routes --------------------------------------------------------------------------------

def test_list_pages_newest_first_with_counts(client: TestClient, site: World) -> None:
    url = f"/api/v1/inbox/{site.ids['A1']['contact']}"
    first = client.get(url, headers=site.callers["A1"].headers, params={"limit": 2})
    assert first.status_code == 200, first.text
    body = first.json()
    assert [i["title"] for i in body["data"]] == ["item 2", "item 1"]
    assert (body["unread"], body["total"]) == (3, 3)
    assert inbox.is_item_id(body["last_event_id"])
    assert body["data"][0]["body"] == "Body <b>not HTML</b>"
    rest = client.get(url, headers=site.callers["A1"].headers, params={"limit": 2, "cursor": body["next_cursor"]})
    assert [i["title"] for i in rest.json()["data"]] == ["item 0"]
    assert rest.json()["next_cursor"] is None


def test_mark_read_by_ids_and_up_to(client: TestClient, site: World) -> None:
    url = f"/api/v1/inbox/{site.ids['A1']['contact']}"
    headers = site.callers["A1"].headers
    items = client.get(url, headers=headers).json()["data"]   # item 2, item 1, item 0
    resp = client.post(url + "/read", headers=headers, json={"ids": [items[0]["id"]]})
    assert resp.json() == {"marked": 1, "unread": 2, "total": 3}
    resp = client.post(url + "/read", headers=headers, json={"up_to": items[2]["id"]})
    assert resp.json() == {"marked": 1, "unread": 1, "total": 3}
    unread = client.get(url, headers=headers, params={"unread_only": "true"}).json()["data"]
    assert [i["title"] for i in unread] == ["item 1"]
    assert client.post(url + "/read", headers=headers, json={"up_to": items[0]["id"]}).json()["marked"] == 1


@pytest.mark.parametrize("body", [{}, {"ids": [], "up_to": None}, {"ids": ["x"], "up_to": "y"},
                                  {"up_to": "nonsense"}, {"ids": ["inb_x"], "extra": 1}])
def test_unclear_read_requests_are_422(client: TestClient, site: World, body: dict[str, object]) -> None:
    resp = client.post(f"/api/v1/inbox/{site.ids['A1']['contact']}/read", headers=site.callers["A1"].headers,
                       json=body)
    assert resp.status_code == 422, resp.text
    assert resp.headers["content-type"] == "application/problem+json"


def test_a_store_key_sees_its_store_only(client: TestClient, container: Container, site: World) -> None:
    """A contact known to two stores: each store's key sees its own store's items only."""
    now = container.clock.now()
    contact_id = site.ids["A1"]["contact"]
    with container.engine.begin() as conn:
        contacts.update_contact(conn, site.callers["A"].principal, contact_id,
                                {"store_ids": [site.ids["A1"]["store"], site.ids["A2"]["store"]]}, now)
    deliver(container, site, "A1", "for A2", store=site.ids["A2"]["store"])
    url = f"/api/v1/inbox/{contact_id}"
    a1 = client.get(url, headers=site.callers["A1"].headers).json()
    a2 = client.get(url, headers=site.callers["A2"].headers).json()
    whole = client.get(url, headers=site.callers["A"].headers).json()
    filtered = client.get(url, headers=site.callers["A"].headers, params={"store_id": site.ids["A2"]["store"]}).json()
    assert a1["total"] == 3 and "for A2" not in [i["title"] for i in a1["data"]]
    assert [i["title"] for i in a2["data"]] == ["for A2"]
    assert whole["total"] == 4
    assert [i["title"] for i in filtered["data"]] == ["for A2"]
    widened = client.get(url, headers=site.callers["A1"].headers, params={"store_id": site.ids["A2"]["store"]})
    assert widened.status_code == 404


def test_foreign_contacts_answer_404_on_every_route(client: TestClient, site: World) -> None:
    foreign = site.ids["B1"]["contact"]
    headers = site.callers["A1"].headers
    for method, path, body in (("GET", "", None), ("POST", "/read", {"up_to": "nonsense"}),
                               ("POST", "/token", {"ttl_seconds": 1}), ("GET", "/stream", None)):
        resp = client.request(method, f"/api/v1/inbox/{foreign}{path}", headers=headers, json=body)
        assert resp.status_code == 404, f"{method} {path}: {resp.status_code} {resp.text}"


def test_token_needs_a_store_with_a_workspace_key(client: TestClient, site: World) -> None:
    url = f"/api/v1/inbox/{site.ids['A1']['contact']}/token"
    resp = client.post(url, headers=site.callers["A"].headers, json={})
    assert resp.status_code == 422
    assert resp.json()["errors"][0]["field"] == "store_id"
    resp = client.post(url, headers=site.callers["A"].headers, json={"store_id": site.ids["B1"]["store"]})
    assert resp.status_code == 404
    resp = client.post(url, headers=site.callers["A1"].headers, json={"store_id": site.ids["A2"]["store"]})
    assert resp.status_code == 404
    resp = client.post(url, headers=site.callers["A"].headers, json={"store_id": site.ids["A1"]["store"]})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["store_id"] == site.ids["A1"]["store"]
    assert body["inbox_url"].endswith("/inbox/" + body["token"])
    assert body["embed"] == f'<script src="{body["widget_url"]}" data-token="{body["token"]}" async></script>'


# ---- the store's site ------------------------------------------------------------------------------

def test_the_token_opens_the_contacts_inbox_for_the_site(client: TestClient, site: World) -> None:
    token = token_for(client, site)
    resp = client.get(f"/inbox/{token}", headers={"Origin": SITE})
    assert resp.status_code == 200, resp.text
    assert resp.headers["access-control-allow-origin"] == SITE
    assert "Origin" in resp.headers["vary"]
    assert resp.headers["cache-control"].startswith("no-store")
    body = resp.json()
    assert [i["title"] for i in body["data"]] == ["item 2", "item 1", "item 0"]
    assert set(body["data"][0]) == {"id", "title", "body", "url", "created_at", "read_at"}   # no internal ids
    assert body["unread"] == 3
    read = client.post(f"/inbox/{token}/read", headers={"Origin": SITE}, json={"up_to": body["data"][0]["id"]})
    assert read.status_code == 200
    assert read.json() == {"marked": 3, "unread": 0, "total": 3}
    assert read.headers["access-control-allow-origin"] == SITE


def test_errors_after_the_token_carry_cors_headers(client: TestClient, site: World) -> None:
    token = token_for(client, site)
    resp = client.post(f"/inbox/{token}/read", headers={"Origin": SITE}, json={"up_to": "nonsense"})
    assert resp.status_code == 422
    assert resp.headers["access-control-allow-origin"] == SITE


@pytest.mark.parametrize("origin", [SITE, "https://www.shop-a1.example"])
def test_cors_allows_the_stores_site(client: TestClient, site: World, origin: str) -> None:
    token = token_for(client, site)
    preflight = client.options(f"/inbox/{token}/read", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == origin
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "Content-Type" in preflight.headers["access-control-allow-headers"]


@pytest.mark.parametrize("origin", ["https://evil.example", "http://shop-a1.example", "https://shop-a1.example.evil",
                                    "https://a.shop-a1.example", "null"])
def test_cors_refuses_every_other_origin(client: TestClient, site: World, origin: str) -> None:
    token = token_for(client, site)
    for method, path in (("OPTIONS", ""), ("GET", ""), ("POST", "/read"), ("OPTIONS", "/stream"),
                         ("GET", "/stream")):
        resp = client.request(method, f"/inbox/{token}{path}", headers={"Origin": origin},
                              json={"up_to": "inb_x"} if method == "POST" else None)
        assert resp.status_code == 403, f"{method} {path}: {resp.status_code}"
        assert "access-control-allow-origin" not in resp.headers


def test_a_store_without_a_domain_has_no_browser_access(client: TestClient, site: World) -> None:
    resp = client.post(f"/api/v1/inbox/{site.ids['A2']['contact']}/token", headers=site.callers["A2"].headers, json={})
    token = resp.json()["token"]
    assert client.get(f"/inbox/{token}").status_code == 200        # a server without Origin may read it
    assert client.get(f"/inbox/{token}", headers={"Origin": "https://anything.example"}).status_code == 403


def test_tampered_and_expired_tokens(client: TestClient, site: World, clock: ShiftedClock) -> None:
    token = token_for(client, site, ttl_seconds=120)
    tampered = token[:10] + ("A" if token[10] != "A" else "B") + token[11:]
    for path in ("", "/read"):
        method = "POST" if path else "GET"
        resp = client.request(method, f"/inbox/{tampered}{path}", json={"up_to": "inb_x"} if path else None)
        assert resp.status_code == 404, resp.text
    assert client.get("/inbox/not-a-token").status_code == 404
    clock.advance(timedelta(seconds=121))
    resp = client.get(f"/inbox/{token}", headers={"Origin": SITE})
    assert resp.status_code == 401
    assert resp.json()["type"] == "urn:herald:problem:token-expired"
    assert client.get(f"/inbox/{token}/stream").status_code == 401


def test_a_token_outliving_its_contact_opens_nothing(client: TestClient, site: World) -> None:
    token = token_for(client, site)
    client.delete(f"/api/v1/contacts/{site.ids['A1']['contact']}", headers=site.callers["A"].headers)
    assert client.get(f"/inbox/{token}").status_code == 404


def test_the_widget_script_is_served(client: TestClient) -> None:
    resp = client.get("/inbox/widget.js")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/javascript; charset=utf-8"
    assert resp.headers["x-content-type-options"] == "nosniff"
    assert "EventSource" in resp.text and "data-token" in resp.text
    # text reaches the page through textContent only: no HTML parsing of anything
    assert not re.search(r"\.(innerHTML|outerHTML)\b|insertAdjacentHTML|document\.write|\beval\(|new Function",
                         resp.text)


@pytest.mark.parametrize(("domain", "origins"), [
    ("shop.example", {"https://shop.example", "https://www.shop.example"}),
    (" WWW.Shop.Example/ ", {"https://shop.example", "https://www.shop.example"}),
    ("https://shop.example/store", {"https://shop.example", "https://www.shop.example"}),
    ("http://localhost:8080", {"http://localhost:8080", "http://www.localhost:8080"}),
    ("", set()), (None, set()), ("ftp://shop.example", set()), ("https://user@shop.example", set()),
])
def test_allowed_origins_come_from_the_store_domain(domain: str | None, origins: set[str]) -> None:
    assert inbox_routes.allowed_origins(domain) == origins
