"""Every error is RFC 7807 problem+json with a field-level reason; request size limits."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.testclient import TestClient

from tests.api.conftest import World

PROBLEM = "application/problem+json"


def assert_problem(resp: object, status: int) -> dict[str, object]:
    assert resp.status_code == status, resp.text  # type: ignore[attr-defined]
    assert resp.headers["content-type"] == PROBLEM  # type: ignore[attr-defined]
    body: dict[str, object] = resp.json()  # type: ignore[attr-defined]
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert body["status"] == status
    return body


def test_malformed_json_is_400(client: TestClient, world: World) -> None:
    resp = client.post("/api/v1/contacts", content=b'{"email": "a@b.c",',
                       headers={**world.callers["A"].headers, "Content-Type": "application/json"})
    body = assert_problem(resp, 400)
    assert body["type"] == "urn:herald:problem:malformed-json"
    assert "not valid JSON" in str(body["detail"])


def test_field_errors_name_each_field(client: TestClient, world: World) -> None:
    resp = client.post("/api/v1/contacts", headers=world.callers["A"].headers,
                       json={"email": "no-at-sign", "phone": "+1 555", "country": "ZZ", "timezone": "Mars/Base"})
    body = assert_problem(resp, 422)
    fields = {e["field"]: e["reason"] for e in body["errors"]}  # type: ignore[attr-defined]
    assert set(fields) == {"email", "phone", "country", "timezone"}
    assert "@" in fields["email"]
    assert "ISO 3166" in fields["country"]
    assert "IANA" in fields["timezone"]


def test_unknown_fields_are_named(client: TestClient, world: World) -> None:
    body = assert_problem(client.post("/api/v1/contacts", headers=world.callers["A"].headers,
                                      json={"emial": "a@example.com"}), 422)
    assert body["errors"] == [{"field": "emial", "in": "body",  # type: ignore[comparison-overlap]
                               "reason": "unknown field; check its spelling against the API reference"}]


def test_type_errors_in_query_and_body(client: TestClient, world: World) -> None:
    body = assert_problem(client.get("/api/v1/contacts?limit=lots", headers=world.callers["A"].headers), 422)
    assert body["errors"][0]["field"] == "limit" and body["errors"][0]["in"] == "query"  # type: ignore[index]
    body = assert_problem(client.get("/api/v1/contacts?limit=5000", headers=world.callers["A"].headers), 422)
    assert body["errors"][0]["field"] == "limit"  # type: ignore[index]
    body = assert_problem(client.post("/api/v1/contacts", headers=world.callers["A"].headers,
                                      json={"email": "a@example.com", "tags": "vip"}), 422)
    assert body["errors"][0]["field"] == "tags"  # type: ignore[index]


def test_missing_identity_is_explained(client: TestClient, world: World) -> None:
    body = assert_problem(client.post("/api/v1/contacts", headers=world.callers["A"].headers,
                                      json={"first_name": "Ana"}), 422)
    assert "email, phone or external_ids" in str(body["detail"])


def test_bad_cursor(client: TestClient, world: World) -> None:
    body = assert_problem(client.get("/api/v1/contacts?cursor=garbage!", headers=world.callers["A"].headers), 422)
    assert body["errors"][0]["field"] == "cursor"  # type: ignore[index]


def test_unknown_route_and_method(client: TestClient, world: World) -> None:
    assert_problem(client.get("/api/v1/nothing-here", headers=world.callers["A"].headers), 404)
    assert_problem(client.put("/api/v1/contacts", headers=world.callers["A"].headers, json={}), 405)


def test_declared_oversize_body_is_413_before_reading(client: TestClient, world: World) -> None:
    limit = client.app.state.container.settings.max_request_bytes  # type: ignore[attr-defined]
    big = b'{"email": "a@example.com", "attributes": {"blob": "' + b"x" * limit + b'"}}'
    body = assert_problem(client.post("/api/v1/contacts", content=big,
                                      headers={**world.callers["A"].headers, "Content-Type": "application/json"}),
                          413)
    assert str(limit) in str(body["detail"])


def test_streamed_oversize_body_is_413(client: TestClient, world: World) -> None:
    limit = client.app.state.container.settings.max_request_bytes  # type: ignore[attr-defined]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit must count what arrives
        yield b'{"email": "a@example.com", "attributes": {"blob": "'
        for _ in range(limit // 65536 + 2):
            yield b"x" * 65536
        yield b'"}}'

    resp = client.post("/api/v1/contacts", content=chunks(),
                       headers={**world.callers["A"].headers, "Content-Type": "application/json"})
    assert_problem(resp, 413)


def test_openapi_and_docs_are_served(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert "/api/v1/contacts" in spec["paths"]
    post = spec["paths"]["/api/v1/contacts"]["post"]
    assert "422" in post["responses"] and "application/problem+json" in post["responses"]["422"]["content"]
    assert client.get("/docs").status_code == 200


def test_nul_characters_are_refused_not_500(client: TestClient, world: World) -> None:
    """PostgreSQL text and JSONB cannot hold U+0000; it must be a clear 4xx on every backend."""
    headers = world.callers["A"].headers
    body = assert_problem(client.post("/api/v1/contacts", headers=headers,
                                      json={"email": "n@example.com", "attributes": {"note": "a\x00b"}}), 422)
    assert "attributes.note" in str(body["detail"]) and "NUL" in str(body["detail"])
    assert_problem(client.get("/api/v1/contacts?email=a%00b", headers=headers), 400)
    assert_problem(client.get("/api/v1/contacts/ct_%00", headers=headers), 400)
