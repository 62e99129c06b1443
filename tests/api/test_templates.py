"""Templates over the API: compiled at save (a broken one is refused with field, line and reason),
versioned on change, previewed with sample data; store sender settings; tenancy."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.api.conftest import World

MJML = """<mjml><mj-body><mj-section><mj-column>
  <mj-text>Hello {{ contact.first_name }}, thanks for order {{ order.name }}.</mj-text>
  {% for line in order.lines %}<mj-text>{{ line.quantity }} x {{ line.title }}</mj-text>{% endfor %}
  <mj-button href="{{ order.status_url }}">Your order</mj-button>
</mj-column></mj-section></mj-body></mjml>"""


def _create(client: TestClient, world: World, **overrides: object) -> dict[str, object]:
    body = {"name": "order-confirmation", "purpose": "transactional", "default_language": "en",
            "variants": {"en": {"subject": "Order {{ order.name }}", "body": MJML},
                         "pt-BR": {"subject": "Pedido {{ order.name }}", "body": MJML.replace("Hello", "Olá")}}}
    body.update(overrides)
    response = client.post("/api/v1/templates", json=body, headers=world.callers["A"].headers)
    assert response.status_code == 201, response.text
    return dict(response.json())


def test_create_get_and_preview_with_language_fallback(client: TestClient, world: World) -> None:
    created = _create(client, world)
    assert created["version"] == 1 and set(created["variants"]) == {"en", "pt-BR"}  # type: ignore[arg-type]
    got = client.get(f"/api/v1/templates/{created['id']}", headers=world.callers["A"].headers)
    assert got.status_code == 200 and got.json()["name"] == "order-confirmation"

    preview = client.post(f"/api/v1/templates/{created['id']}/preview", json={"language": "pt-PT"},
                          headers=world.callers["A"].headers)
    assert preview.status_code == 200, preview.text
    shown = preview.json()
    assert shown["language"] == "pt-BR"  # base language "pt" falls to the pt-BR variant
    assert shown["subject"] == "Pedido #1001"
    assert "Olá Ana" in shown["html"] and "Olá Ana" in shown["text"]
    assert "Merino" in shown["html"] or "x" in shown["text"]

    english = client.post(f"/api/v1/templates/{created['id']}/preview",
                          json={"language": "de", "variables": {"contact": {"first_name": "<b>Jo</b>"}}},
                          headers=world.callers["A"].headers).json()
    assert english["language"] == "en"
    assert "&lt;b&gt;Jo&lt;/b&gt;" in english["html"] and "<b>Jo</b>" not in english["html"]


def test_a_broken_template_is_refused_with_field_line_and_reason(client: TestClient, world: World) -> None:
    broken = MJML.replace("{% endfor %}", "")
    response = client.post("/api/v1/templates", headers=world.callers["A"].headers, json={
        "name": "broken", "purpose": "marketing", "variants": {"en": {"subject": "Hi", "body": broken}}})
    assert response.status_code == 422
    problem = response.json()
    fields = {e["field"]: e["reason"] for e in problem["errors"]}
    assert "variants.en.body" in fields, problem
    assert "line" in fields["variants.en.body"]
    listed = client.get("/api/v1/templates", headers=world.callers["A"].headers).json()["data"]
    assert "broken" not in {t["name"] for t in listed}

    bad_subject = client.post("/api/v1/templates", headers=world.callers["A"].headers, json={
        "name": "broken2", "purpose": "marketing", "variants": {"en": {"subject": "Hi {{ name | nosuchfilter }}",
                                                                       "body": MJML}}})
    assert bad_subject.status_code == 422 and "variants.en.subject" in bad_subject.text


def test_default_language_must_have_a_variant_and_update_bumps_the_version(client: TestClient, world: World) -> None:
    missing = client.post("/api/v1/templates", headers=world.callers["A"].headers, json={
        "name": "x", "purpose": "marketing", "default_language": "fr",
        "variants": {"en": {"subject": "s", "body": MJML}}})
    assert missing.status_code == 422 and "default_language" in missing.text

    created = _create(client, world)
    changed = client.patch(f"/api/v1/templates/{created['id']}", headers=world.callers["A"].headers,
                           json={"variants": {"en": {"subject": "Your order {{ order.name }}", "body": MJML}}})
    assert changed.status_code == 200, changed.text
    assert changed.json()["version"] == 2 and set(changed.json()["variants"]) == {"en"}
    refused = client.patch(f"/api/v1/templates/{created['id']}", headers=world.callers["A"].headers,
                           json={"variants": {"en": {"subject": "{% if %}", "body": MJML}}})
    assert refused.status_code == 422
    again = client.get(f"/api/v1/templates/{created['id']}", headers=world.callers["A"].headers).json()
    assert again["version"] == 2  # a refused change changes nothing


def test_templates_are_tenant_scoped(client: TestClient, world: World) -> None:
    created = _create(client, world)
    assert client.get(f"/api/v1/templates/{created['id']}", headers=world.callers["B"].headers).status_code == 404
    assert client.post(f"/api/v1/templates/{created['id']}/preview", json={},
                       headers=world.callers["B1"].headers).status_code == 404
    duplicate = client.post("/api/v1/templates", headers=world.callers["A"].headers, json={
        "name": "order-confirmation", "purpose": "marketing", "variants": {"en": {"subject": "s", "body": MJML}}})
    assert duplicate.status_code == 409


def test_store_sender_settings(client: TestClient, world: World) -> None:
    store = world.ids["A1"]["store"]
    response = client.patch(f"/api/v1/stores/{store}/sender", headers=world.callers["A1"].headers,
                            json={"email_from": "Orders@Shop.Example", "email_from_name": "Shop",
                                  "postal_address": "1 Main St, Springfield"})
    assert response.status_code == 200, response.text
    assert response.json() == {"store_id": store, "email_from": "Orders@shop.example", "email_from_name": "Shop",
                               "postal_address": "1 Main St, Springfield"}
    bad = client.patch(f"/api/v1/stores/{store}/sender", headers=world.callers["A1"].headers,
                       json={"email_from": "not an address"})
    assert bad.status_code == 422 and "email_from" in bad.text
    assert client.get(f"/api/v1/stores/{store}/sender", headers=world.callers["B"].headers).status_code == 404
