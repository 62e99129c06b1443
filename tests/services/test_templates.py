"""Text-channel templates in the service (SMS, WhatsApp, push, inbox), on SQLite and PostgreSQL:
fields checked per channel and every Liquid field compiled at save; the variant for a contact's
language with the email fallback; rendered fields (WhatsApp parameters in order); the compiled
cache per (template, version, language); WhatsApp category rules and Meta's review recorded
per variant by `set_whatsapp_status`."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import Engine, select

from herald.db.tables import templates as templates_table
from herald.domain.auth import Principal
from herald.domain.errors import InvalidInput
from herald.domain.policy import WhatsAppTemplate
from herald.pipeline import render
from herald.services import templates
from tests.services.support import make_shop

NOW = datetime.fromisoformat("2026-11-23T12:00:00+00:00")

ORDER_UPDATE = {"template_name": "order_update", "template_language": "en_US",
                "parameters": ["{{ contact.first_name }}", "{{ order.name }}"]}
PEDIDO = {"template_name": "order_update", "template_language": "pt_BR",
          "parameters": ["{{ contact.first_name }}", "{{ order.name }}"]}


def _who(engine: Engine) -> Principal:
    return Principal("test", make_shop(engine, NOW).workspace_id, None)


def _create(engine: Engine, who: Principal, channel: str, variants: dict[str, dict[str, Any]], *,
            name: str = "t", purpose: str = "transactional", category: str | None = None) -> dict[str, Any]:
    with engine.begin() as conn:
        return templates.create_template(conn, who, name=name, channel=channel, purpose=purpose,
                                         default_language="en", variants=variants, store_id=None, now=NOW,
                                         category=category)


def _refusal(engine: Engine, who: Principal, channel: str, variants: dict[str, dict[str, Any]],
             **kw: Any) -> dict[str, str]:
    with pytest.raises(InvalidInput) as caught:
        _create(engine, who, channel, variants, **kw)
    return {problem.field: problem.reason for problem in caught.value.fields}


def test_each_text_channel_renders_its_fields_with_language_fallback(engine: Engine) -> None:
    who = _who(engine)
    variables = {"contact": {"first_name": "Ana"}, "order": {"name": "#1001", "status_url": "https://s.example/1"}}
    text = _create(engine, who, "sms", {"en": {"body": "Hi {{ contact.first_name }}"},
                                        "pt-BR": {"body": "Olá {{ contact.first_name }}"}}, name="sms")
    assert templates.render_text_variant(text, "pt-PT", variables) == ("pt-BR", {"body": "Olá Ana"})
    assert templates.render_text_variant(text, "de", variables) == ("en", {"body": "Hi Ana"})

    push = _create(engine, who, "push", {"en": {"title": "Order {{ order.name }}", "body": "On its way",
                                                "url": "{{ order.status_url }}", "icon": "https://s.example/i.png"}},
                   name="push")
    assert templates.render_text_variant(push, None, variables)[1] == {
        "title": "Order #1001", "body": "On its way", "url": "https://s.example/1", "icon": "https://s.example/i.png"}
    inbox = _create(engine, who, "inbox", {"en": {"title": "Hi", "body": "{{ contact.first_name }}",
                                                  "url": "{{ checkout.recovery_url }}"}}, name="inbox")
    rendered = templates.render_text_variant(inbox, "en", variables)[1]
    assert rendered == {"title": "Hi", "body": "Ana"}  # the url rendered empty: left out

    spaced = {"contact": {"first_name": "Ana\n  Maria"}, "order": {"name": "#1001"}}
    meta = _create(engine, who, "whatsapp", {"en": ORDER_UPDATE}, name="wa", category="utility")
    assert templates.render_text_variant(meta, "en", spaced) == ("en", {
        "template_name": "order_update", "template_language": "en_US", "parameters": ["Ana Maria", "#1001"]})
    session = _create(engine, who, "whatsapp", {"en": {"body": "Thanks {{ contact.first_name }}!"}},
                      name="wa-session", category="utility")
    assert templates.render_text_variant(session, "en", variables)[1] == {"body": "Thanks Ana!"}
    assert session["approval_status"] is None and templates.whatsapp_policy_template(session, "en") is None


def test_compiled_text_is_cached_per_version_and_refuses_email(engine: Engine) -> None:
    who = _who(engine)
    row = _create(engine, who, "sms", {"en": {"body": "v1 {{ contact.first_name }}"}})
    first = templates.compiled_text(row, "en")
    assert templates.compiled_text(row, "en")[1] is first[1]
    assert "contact.first_name" in first[1].referenced
    with engine.begin() as conn:
        changed = templates.update_template(conn, who, row["id"], now=NOW, variants={"en": {"body": "v2"}})
    assert changed["version"] == 2
    assert render.render_text(templates.compiled_text(changed, "en")[1], {}) == {"body": "v2"}

    email = _create(engine, who, "email", {"en": {"subject": "s", "body": "<p>x</p>", "body_format": "html"}},
                    name="mail")
    with pytest.raises(InvalidInput, match="email template"):
        templates.compiled_text(email, "en")
    with pytest.raises(InvalidInput, match="sms template"):
        templates.compiled(row, "en")


def test_fields_are_checked_per_channel_and_liquid_errors_name_field_and_line(engine: Engine) -> None:
    who = _who(engine)
    assert _refusal(engine, who, "sms", {"en": {"body": "x", "title": "t"}}) == {
        "variants.en.title": "is not a field of SMS variants; they have: body"}
    assert set(_refusal(engine, who, "push", {"en": {"body": "x"}})) == {"variants.en.title"}
    assert set(_refusal(engine, who, "inbox", {"en": {"title": "t", "body": "x", "icon": "https://i"}})) == {
        "variants.en.icon"}
    assert "absolute" in _refusal(engine, who, "push", {"en": {"title": "t", "body": "b", "icon": "/i.png"}})[
        "variants.en.icon"]
    assert _refusal(engine, who, "sms", {"en": {"body": "  "}}) == {"variants.en.body": "is empty"}

    broken = _refusal(engine, who, "push", {"en": {"title": "ok", "body": "line one\n{% if x %}never closed"}})
    assert list(broken) == ["variants.en.body"] and "body line 2" in broken["variants.en.body"]
    bad_filter = _refusal(engine, who, "inbox", {"en": {"title": "{{ x | nosuch }}", "body": "b"}})
    assert "title line 1" in bad_filter["variants.en.title"] and "nosuch" in bad_filter["variants.en.title"]
    bad_parameter = _refusal(engine, who, "whatsapp", {"en": {**ORDER_UPDATE, "parameters": ["ok", "{{ a | }}"]}},
                             category="utility")
    assert list(bad_parameter) == ["variants.en.parameters.1"]
    assert "parameters.1 line 1" in bad_parameter["variants.en.parameters.1"]


def test_whatsapp_variants_and_category_rules(engine: Engine) -> None:
    who = _who(engine)
    both = _refusal(engine, who, "whatsapp", {"en": {**ORDER_UPDATE, "body": "hi"}}, category="utility")
    assert "not both" in both["variants.en.body"]
    assert set(_refusal(engine, who, "whatsapp", {"en": {"template_name": "Order Update!",
                                                         "template_language": "pt-BR"}}, category="utility")) == {
        "variants.en.template_name", "variants.en.template_language"}
    assert set(_refusal(engine, who, "whatsapp", {"en": {"parameters": ["x"]}}, category="utility")) == {
        "variants.en.template_name", "variants.en.template_language"}
    mixed = _refusal(engine, who, "whatsapp", {"en": ORDER_UPDATE, "pt": {"body": "Olá"}}, category="utility")
    assert list(mixed) == ["variants.pt"] and "same kind" in mixed["variants.pt"]
    assert set(_refusal(engine, who, "whatsapp", {"en": ORDER_UPDATE})) == {"category"}
    assert set(_refusal(engine, who, "whatsapp", {"en": ORDER_UPDATE}, category="promo")) == {"category"}
    assert set(_refusal(engine, who, "sms", {"en": {"body": "x"}}, category="utility")) == {"category"}
    assert set(_refusal(engine, who, "whatsapp", {"en": ORDER_UPDATE}, category="marketing",
                        purpose="transactional")) == {"purpose"}

    row = _create(engine, who, "whatsapp", {"en": ORDER_UPDATE}, category="marketing", purpose="marketing")
    assert row["approval_status"] == "pending" and row["variants"]["en"]["approval_status"] == "pending"
    with engine.begin() as conn, pytest.raises(InvalidInput) as caught:
        templates.update_template(conn, who, row["id"], now=NOW, purpose="transactional")
    assert caught.value.fields[0].field == "purpose"


def test_set_whatsapp_status_records_meta_review_per_variant(engine: Engine) -> None:
    who = _who(engine)
    row = _create(engine, who, "whatsapp", {"en": ORDER_UPDATE, "pt-BR": PEDIDO}, category="utility")
    other = _create(engine, who, "whatsapp", {"en": {**ORDER_UPDATE, "template_name": "other"}}, name="other",
                    category="utility")

    def stored(template_id: str) -> dict[str, Any]:
        with engine.begin() as conn:
            found = conn.execute(select(templates_table).where(templates_table.c.id == template_id)).mappings().one()
            return dict(found)

    with engine.begin() as conn:
        assert templates.set_whatsapp_status(conn, who.workspace_id, "order_update", "en_US", "APPROVED", None) == [
            row["id"]]
    now = stored(row["id"])
    assert now["approval_status"] == "pending"       # pt_BR is still under review
    assert now["variants"]["en"]["approval_status"] == "approved" and now["version"] == 1
    assert templates.whatsapp_policy_template(now, "en") == WhatsAppTemplate("utility", approved=True)
    assert templates.whatsapp_policy_template(now, "pt-BR") == WhatsAppTemplate("utility", approved=False)

    with engine.begin() as conn:
        templates.set_whatsapp_status(conn, who.workspace_id, "order_update", "pt_BR", "approved", None)
    assert stored(row["id"])["approval_status"] == "approved"
    assert stored(other["id"])["approval_status"] == "pending"

    with engine.begin() as conn:     # Meta moved it to marketing and paused it
        templates.set_whatsapp_status(conn, who.workspace_id, "order_update", "pt_BR", "paused", "MARKETING")
    now = stored(row["id"])
    assert (now["approval_status"], now["category"], now["purpose"]) == ("paused", "marketing", "marketing")

    with engine.begin() as conn:     # an edit keeps the review of unchanged references, new ones start pending
        changed = templates.update_template(conn, who, row["id"], now=NOW, variants={
            "en": ORDER_UPDATE, "es": {**ORDER_UPDATE, "template_language": "es"}})
    assert changed["variants"]["en"]["approval_status"] == "approved"
    assert changed["variants"]["es"]["approval_status"] == "pending" and changed["approval_status"] == "pending"
    with engine.begin() as conn:     # and so does an edit that does not touch the variants
        kept = templates.update_template(conn, who, row["id"], now=NOW, default_language="es")
    assert kept["variants"]["en"]["approval_status"] == "approved"

    with engine.begin() as conn:
        assert templates.set_whatsapp_status(conn, who.workspace_id, "unknown", "en", "approved", None) == []
        with pytest.raises(InvalidInput) as caught:
            templates.set_whatsapp_status(conn, who.workspace_id, "order_update", "en_US", "in_appeal", None)
    assert caught.value.fields[0].field == "status"
