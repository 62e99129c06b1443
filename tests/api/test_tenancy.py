"""The tenant matrix: a key of workspace A or of store A1 never reaches an object of store A2
or of workspace B. Every route with an id in its path is attacked; a new route with an id
parameter this test does not know fails the test until it is added here."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from tests.api.conftest import World

PARAM_OBJECTS = {"contact_id": "contact", "store_id": "store", "key_id": "api_key", "delivery_id": "delivery",
                 "import_id": "import", "template_id": "template", "message_id": "message",
                 "subscription_id": "push_subscription"}
BODIES = {"PATCH": {}, "POST": {}, "PUT": {}}

# (caller, owner of the ids it must not reach)
MATRIX = [("A1", "A2"), ("A1", "B1"), ("A2", "A1"), ("A", "B1"), ("B", "A1"), ("B", "A2")]


def id_routes(client: TestClient, method: str | None = None) -> list[tuple[str, str, list[str]]]:
    """Every (method, path template, id params) of the API, read from its OpenAPI document."""
    found = []
    for path, operations in client.app.openapi()["paths"].items():  # type: ignore[attr-defined]
        params = re.findall(r"{(\w+)}", path)
        if not path.startswith("/api/v1") or not params or path.startswith("/api/v1/suppressions/"):
            continue  # suppressions are named by (channel, address) and workspace keys only (403 for a store's)
        unknown = [p for p in params if p not in PARAM_OBJECTS]
        assert not unknown, f"{path}: teach test_tenancy.PARAM_OBJECTS about {unknown}"
        for verb in sorted(operations):
            if method is None or verb.upper() == method:
                found.append((verb.upper(), path, params))
    return found


def fill(path: str, params: list[str], ids: dict[str, str]) -> str:
    for p in params:
        path = path.replace("{" + p + "}", ids[PARAM_OBJECTS[p]])
    return path


def test_every_id_route_is_in_the_matrix(client: TestClient) -> None:
    paths = {path for _, path, _ in id_routes(client)}
    assert {"/api/v1/contacts/{contact_id}", "/api/v1/stores/{store_id}", "/api/v1/api-keys/{key_id}"} <= paths


@pytest.mark.parametrize(("caller", "owner"), MATRIX)
def test_foreign_ids_answer_404(client: TestClient, world: World, caller: str, owner: str) -> None:
    headers = world.callers[caller].headers
    for method, path, params in id_routes(client):
        url = fill(path, params, world.ids[owner])
        resp = client.request(method, url, headers=headers, json=BODIES.get(method))
        assert resp.status_code == 404, f"{caller} {method} {url} -> {resp.status_code} {resp.text}"
        assert resp.headers["content-type"] == "application/problem+json"
        assert world.ids[owner][PARAM_OBJECTS[params[0]]] not in resp.text or "no " in resp.json()["detail"]
    # and nothing was changed or deleted by the attempts: the owner still sees its objects
    own = world.callers[owner].headers
    for _, path, params in id_routes(client, "GET"):
        resp = client.get(fill(path, params, world.ids[owner]), headers=own)
        assert resp.status_code == 200, f"{owner} lost access to {path}: {resp.text}"
        if resp.headers["content-type"].startswith("application/json") and "revoked_at" in resp.json():
            assert resp.json()["revoked_at"] is None


@pytest.mark.parametrize("caller", ["A1", "A2", "B1"])
def test_own_ids_are_reachable(client: TestClient, world: World, caller: str) -> None:
    """The control: the matrix's 404s are not 404s for everything."""
    headers = world.callers[caller].headers
    for _, path, params in id_routes(client, "GET"):
        resp = client.get(fill(path, params, world.ids[caller]), headers=headers)
        assert resp.status_code == 200, f"{caller} GET {path}: {resp.status_code} {resp.text}"


def test_workspace_key_reaches_all_its_stores(client: TestClient, world: World) -> None:
    for store in ("A1", "A2"):
        for _, path, params in id_routes(client, "GET"):
            resp = client.get(fill(path, params, world.ids[store]), headers=world.callers["A"].headers)
            assert resp.status_code == 200, f"A GET {path} of {store}: {resp.text}"


@pytest.mark.parametrize("resource", ["contacts", "stores", "api-keys"])
def test_lists_show_only_what_the_key_may_see(client: TestClient, world: World, resource: str) -> None:
    kind = {"contacts": "contact", "stores": "store", "api-keys": "api_key"}[resource]

    def listed(caller: str) -> set[str]:
        resp = client.get(f"/api/v1/{resource}", headers=world.callers[caller].headers, params={"limit": 200})
        assert resp.status_code == 200, resp.text
        return {item["id"] for item in resp.json()["data"]}

    assert world.ids["A1"][kind] in listed("A1")
    assert world.ids["A2"][kind] not in listed("A1")
    assert world.ids["B1"][kind] not in listed("A1")
    assert {world.ids["A1"][kind], world.ids["A2"][kind]} <= listed("A")
    assert world.ids["B1"][kind] not in listed("A")
    assert world.ids["A1"][kind] not in listed("B")


def test_store_filter_cannot_widen_a_store_key(client: TestClient, world: World) -> None:
    resp = client.get("/api/v1/contacts", headers=world.callers["A1"].headers,
                      params={"store_id": world.ids["A2"]["store"]})
    assert resp.status_code == 200
    assert resp.json()["data"] == []
