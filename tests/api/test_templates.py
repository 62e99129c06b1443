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


# ---- SMS, WhatsApp, push and inbox (issue 6) ------------------------------------------------------

def _post(client: TestClient, world: World, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    response = client.post("/api/v1/templates", json=body, headers=world.callers["A"].headers)
    return response.status_code, dict(response.json())


def _preview(client: TestClient, world: World, template_id: object, **body: object) -> dict[str, object]:
    response = client.post(f"/api/v1/templates/{template_id}/preview", json=body, headers=world.callers["A"].headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _errors(problem: dict[str, object]) -> dict[str, str]:
    return {e["field"]: e["reason"] for e in problem["errors"]}  # type: ignore[attr-defined]


def test_sms_template_create_update_and_preview_with_segments(client: TestClient, world: World) -> None:
    status, created = _post(client, world, {
        "name": "shipped-sms", "channel": "sms", "purpose": "transactional",
        "variants": {"en": {"body": "Hi {{ contact.first_name }}, order {{ order.name }} shipped: "
                                    "{{ order.tracking.url }}"}}})
    assert status == 201, created
    assert created["channel"] == "sms" and created["category"] is None and created["approval_status"] is None
    assert created["variants"] == {"en": {"body": "Hi {{ contact.first_name }}, order {{ order.name }} shipped: "
                                                 "{{ order.tracking.url }}"}}
    shown = _preview(client, world, created["id"])
    body = shown["fields"]["body"]  # type: ignore[index]
    assert body.startswith("Hi Ana, order #1001 shipped: https://www.ctt.pt/")
    assert shown["subject"] is None and shown["html"] is None
    assert shown["sms"] == {"encoding": "GSM-7", "units": len(body), "segments": 1, "per_segment": 160}

    long_gsm = client.patch(f"/api/v1/templates/{created['id']}", headers=world.callers["A"].headers,
                            json={"variants": {"en": {"body": "x" * 161}}})
    assert long_gsm.status_code == 200 and long_gsm.json()["version"] == 2
    assert _preview(client, world, created["id"])["sms"] == {"encoding": "GSM-7", "units": 161, "segments": 2,
                                                             "per_segment": 153}
    client.patch(f"/api/v1/templates/{created['id']}", headers=world.callers["A"].headers,
                 json={"variants": {"en": {"body": "Olá {{ contact.first_name }} 😊 " + "ã" * 62}}})
    unicode = _preview(client, world, created["id"])["sms"]
    assert unicode == {"encoding": "UCS-2", "units": 4 + 3 + 1 + 2 + 1 + 62, "segments": 2, "per_segment": 67}


def test_push_inbox_and_whatsapp_templates_over_the_api(client: TestClient, world: World) -> None:
    status, push = _post(client, world, {
        "name": "push", "channel": "push", "purpose": "marketing",
        "variants": {"en": {"title": "{{ contact.first_name }}, your cart", "body": "Still there",
                            "url": "{{ checkout.recovery_url }}", "icon": "https://shop.example.com/icon.png"}}})
    assert status == 201, push
    assert _preview(client, world, push["id"])["fields"] == {
        "title": "Ana, your cart", "body": "Still there", "url": "https://shop.example.com/checkouts/c/8f2a1c/recover",
        "icon": "https://shop.example.com/icon.png"}
    status, inbox = _post(client, world, {"name": "inbox", "channel": "inbox", "purpose": "transactional",
                                          "variants": {"en": {"title": "Order {{ order.name }}", "body": "Thanks"}}})
    assert status == 201, inbox
    assert _preview(client, world, inbox["id"], variables={"order": {"name": "#7"}})["fields"] == {
        "title": "Order #7", "body": "Thanks"}

    status, meta = _post(client, world, {
        "name": "order-update", "channel": "whatsapp", "purpose": "transactional", "category": "utility",
        "variants": {"en": {"template_name": "order_update", "template_language": "en_US",
                            "parameters": ["{{ contact.first_name }}", "{{ order.name }}"]},
                     "pt-BR": {"template_name": "order_update", "template_language": "pt_BR",
                               "parameters": ["{{ contact.first_name }}", "{{ order.name }}"]}}})
    assert status == 201, meta
    assert (meta["category"], meta["approval_status"]) == ("utility", "pending")
    assert meta["variants"]["pt-BR"]["approval_status"] == "pending"  # type: ignore[index]
    shown = _preview(client, world, meta["id"], language="pt-PT")
    assert shown["language"] == "pt-BR" and shown["fields"] == {
        "template_name": "order_update", "template_language": "pt_BR", "parameters": ["Ana", "#1001"]}
    renamed = client.patch(f"/api/v1/templates/{meta['id']}", headers=world.callers["A"].headers,
                           json={"default_language": "pt-BR"})
    assert renamed.status_code == 200, renamed.text
    assert renamed.json()["variants"]["en"]["approval_status"] == "pending"

    status, session = _post(client, world, {"name": "reply", "channel": "whatsapp", "purpose": "transactional",
                                            "category": "utility", "variants": {"en": {"body": "Hi {{ x }}"}}})
    assert status == 201 and session["approval_status"] is None
    assert _preview(client, world, session["id"], variables={"x": "there"})["fields"] == {"body": "Hi there"}


def test_text_channel_refusals_name_the_field_and_line(client: TestClient, world: World) -> None:
    status, problem = _post(client, world, {"name": "a", "channel": "sms", "purpose": "marketing",
                                            "variants": {"en": {"body": "Hi", "subject": "no"}}})
    assert status == 422 and set(_errors(problem)) == {"variants.en.subject"}
    status, problem = _post(client, world, {"name": "a", "channel": "sms", "purpose": "marketing",
                                            "variants": {"en": {"body": "Hi\n\n{{ contact.first_name | nope }}"}}})
    assert status == 422 and "body line 3" in _errors(problem)["variants.en.body"]
    status, problem = _post(client, world, {"name": "a", "channel": "push", "purpose": "marketing",
                                            "variants": {"en": {"title": "{% for %}", "body": "b"}}})
    assert status == 422 and "title line 1" in _errors(problem)["variants.en.title"]
    status, problem = _post(client, world, {"name": "a", "channel": "whatsapp", "purpose": "marketing",
                                            "category": "marketing", "variants": {"en": {
                                                "template_name": "promo", "template_language": "en",
                                                "parameters": ["{{ a }}", "{% if b %}"]}}})
    assert status == 422 and "variants.en.parameters.1" in _errors(problem)
    status, problem = _post(client, world, {"name": "a", "channel": "whatsapp", "purpose": "marketing",
                                            "variants": {"en": {"body": "hi"}}})
    assert status == 422 and set(_errors(problem)) == {"category"}
    status, problem = _post(client, world, {"name": "a", "channel": "whatsapp", "purpose": "transactional",
                                            "category": "marketing", "variants": {"en": {"body": "hi"}}})
    assert status == 422 and set(_errors(problem)) == {"purpose"}
    status, problem = _post(client, world, {"name": "a", "channel": "push", "purpose": "marketing",
                                            "category": "utility", "variants": {"en": {"title": "t", "body": "b"}}})
    assert status == 422 and set(_errors(problem)) == {"category"}
    status, problem = _post(client, world, {"name": "a", "channel": "fax", "purpose": "marketing",
                                            "variants": {"en": {"body": "b"}}})
    assert status == 422 and "channel" in _errors(problem)
    status, problem = _post(client, world, {"name": "a", "purpose": "marketing", "variants": {"en": {"body": MJML}}})
    assert status == 422 and set(_errors(problem)) == {"variants.en.subject"}  # email is the default channel
    listed = client.get("/api/v1/templates", headers=world.callers["A"].headers).json()["data"]
    assert "a" not in {t["name"] for t in listed}


def test_email_preview_and_output_keep_their_shape(client: TestClient, world: World) -> None:
    created = _create(client, world)
    assert created["variants"]["en"]["body_format"] == "mjml"  # type: ignore[index]
    assert created["category"] is None and created["approval_status"] is None
    shown = _preview(client, world, created["id"])
    assert shown["channel"] == "email" and shown["fields"] is None and shown["sms"] is None
    assert shown["subject"] == "Order #1001" and "Hello Ana" in str(shown["html"]) and shown["text"]
