"""WhatsApp template sync and submission (services/whatsapp_templates.py) against the local Graph
API (tests/channels/whatsapp/graphserver.py, paging 2 templates per page), on SQLite and
PostgreSQL: Meta's statuses recorded on the variants that reference them (the extra states mapped),
Herald references missing at Meta reported; a variant submitted with the exact components Meta
documents and its pending status recorded; bad submissions refused before any request; Meta's
refusals and silence as clear errors."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from herald.bootstrap import Container
from herald.db.tables import templates as templates_table
from herald.domain.auth import Principal
from herald.domain.delivery import ProviderTemplate
from herald.domain.errors import HeraldError, InvalidInput, NotFound, Unavailable
from herald.services import providers, templates, whatsapp_templates
from herald.services.whatsapp_templates import TemplateText
from tests.channels.whatsapp.graphserver import PHONE_NUMBER_ID, TOKEN, WABA_ID, FakeGraph, serve_graph
from tests.services.support import Shop, make_shop

ORDER_UPDATE = {"en": {"template_name": "order_update", "template_language": "en_US",
                       "parameters": ["{{ contact.first_name }}", "{{ order.name }}"]},
                "pt-BR": {"template_name": "order_update", "template_language": "pt_BR",
                          "parameters": ["{{ contact.first_name }}", "{{ order.name }}"]}}


@pytest.fixture
def graph() -> FakeGraph:
    return FakeGraph(page_size=2)


@pytest.fixture
def base_url(graph: FakeGraph) -> Iterator[str]:
    with serve_graph(graph) as url:
        yield url


def meta_template(name: str, language: str, status: str, category: str = "UTILITY") -> dict[str, Any]:
    return {"id": f"1627{len(name)}{len(language)}", "name": name, "language": language, "category": category,
            "status": status, "components": [{"type": "BODY", "text": "x"}]}


def setup(c: Container, base_url: str, token: str = TOKEN) -> Shop:
    shop = make_shop(c.engine, c.clock.now())
    who = Principal("test", shop.workspace_id, None)
    with c.engine.begin() as conn:
        providers.add_provider(conn, c.adapters, c.master_key, shop.workspace_id, channel="whatsapp",
                               kind="whatsapp_cloud", name="meta",
                               config={"phone_number_id": PHONE_NUMBER_ID, "waba_id": WABA_ID, "base_url": base_url},
                               secrets={"access_token": token}, priority=0, now=c.clock.now())
        templates.create_template(conn, who, name="order update", channel="whatsapp", purpose="transactional",
                                  category="utility", default_language="en", variants=ORDER_UPDATE, store_id=None,
                                  now=c.clock.now())
        templates.create_template(conn, who, name="winback", channel="whatsapp", purpose="marketing",
                                  category="marketing", default_language="es", store_id=None, now=c.clock.now(),
                                  variants={"es": {"template_name": "winback", "template_language": "es",
                                                   "parameters": ["{{ contact.first_name }}"]}})
        templates.create_template(conn, who, name="reply", channel="whatsapp", purpose="transactional",
                                  category="utility", default_language="en", store_id=None, now=c.clock.now(),
                                  variants={"en": {"body": "Thanks {{ contact.first_name }}!"}})
    return shop


def stored(c: Container, name: str) -> dict[str, Any]:
    with c.engine.begin() as conn:
        return dict(conn.execute(select(templates_table).where(templates_table.c.name == name)).mappings().one())


def run(c: Container, work: Any) -> Any:
    async def closing() -> Any:
        try:
            return await work
        finally:
            await c.aclose_providers()
    return asyncio.run(closing())


def test_sync_records_metas_statuses_and_says_what_meta_does_not_have(container: Container, graph: FakeGraph,
                                                                      base_url: str) -> None:
    shop = setup(container, base_url)
    graph.templates = [meta_template("order_update", "en_US", "APPROVED"),
                       meta_template("order_update", "pt_BR", "IN_APPEAL", category="MARKETING"),
                       meta_template("spring_sale", "es", "DISABLED", category="MARKETING"),
                       meta_template("old_notice", "en_US", "LOCKED")]
    report = run(container, whatsapp_templates.sync(container.engine, container.messaging.providers,
                                                    shop.workspace_id))
    assert report.listed == 4                                    # two pages of two
    assert sorted(report.reviews.recorded) == [("order_update", "en_US", "approved"),
                                               ("order_update", "pt_BR", "pending")]
    assert report.reviews.unused == [("spring_sale", "es")]
    assert report.reviews.ignored == [("old_notice", "en_US", "locked")]
    assert report.missing == [("winback", "es")]
    row = stored(container, "order update")
    assert {lang: v["approval_status"] for lang, v in row["variants"].items()} == {"en": "approved",
                                                                                  "pt-BR": "pending"}
    # Meta moved the pt_BR version to marketing: the template is a marketing message now.
    assert (row["approval_status"], row["category"], row["purpose"]) == ("pending", "marketing", "marketing")
    assert stored(container, "winback")["approval_status"] == "pending"
    assert all(seen.headers["authorization"] == f"Bearer {TOKEN}" for seen in graph.seen)


@pytest.mark.parametrize(("meta", "herald"), [
    ("APPROVED", "approved"), ("PENDING", "pending"), ("REJECTED", "rejected"), ("PAUSED", "paused"),
    ("IN_APPEAL", "pending"), ("PENDING_DELETION", "pending"), ("ARCHIVED", "paused"), ("DISABLED", "rejected"),
    ("DELETED", "rejected"), ("LIMIT_EXCEEDED", "rejected"), ("FLAGGED", None), (None, None),
])
def test_metas_statuses_map_to_heralds(meta: str | None, herald: str | None) -> None:
    assert whatsapp_templates.herald_status(meta) == herald


def test_record_reviews_leaves_a_template_alone_for_an_unmapped_status(container: Container, base_url: str) -> None:
    shop = setup(container, base_url)
    with container.engine.begin() as conn:
        whatsapp_templates.record_reviews(conn, shop.workspace_id, [
            ProviderTemplate("winback", "es", "marketing", "approved")])
        report = whatsapp_templates.record_reviews(conn, shop.workspace_id, [
            ProviderTemplate("winback", "es", None, None)])        # e.g. a "flagged" webhook
    assert report.ignored == [("winback", "es", "")] and not report.changed
    assert stored(container, "winback")["approval_status"] == "approved"


def test_submit_sends_the_variant_with_its_examples_and_records_pending(container: Container, graph: FakeGraph,
                                                                       base_url: str) -> None:
    shop = setup(container, base_url)
    text = TemplateText(body="Hi {{1}}, your order {{2}} has shipped.", header="Shipping update",
                        footer="Reply STOP to opt out")
    done = run(container, whatsapp_templates.submit(container.engine, container.messaging.providers,
                                                    shop.workspace_id, "order update", text, language="pt-BR"))
    [request] = [seen for seen in graph.seen if seen.method == "POST"]
    assert request.path == f"/v21.0/{WABA_ID}/message_templates"
    assert request.json() == {
        "name": "order_update", "language": "pt_BR", "category": "UTILITY",
        "components": [{"type": "HEADER", "format": "TEXT", "text": "Shipping update"},
                       {"type": "BODY", "text": "Hi {{1}}, your order {{2}} has shipped.",
                        "example": {"body_text": [["Ana", "#1001"]]}},
                       {"type": "FOOTER", "text": "Reply STOP to opt out"}]}
    assert (done.name, done.language, done.category, done.meta_status, done.status) == (
        "order_update", "pt_BR", "utility", "pending", "pending")
    assert done.meta_id == graph.templates[0]["id"]
    variants = stored(container, "order update")["variants"]
    assert variants["pt-BR"]["approval_status"] == "pending"


def test_given_examples_replace_the_sample_data(container: Container, graph: FakeGraph, base_url: str) -> None:
    shop = setup(container, base_url)
    run(container, whatsapp_templates.submit(
        container.engine, container.messaging.providers, shop.workspace_id, "winback",
        TemplateText(body="We miss you, {{1}}!", examples=["Maria"])))
    body = next(seen for seen in graph.seen if seen.method == "POST").json()
    assert (body["category"], body["components"]) == ("MARKETING", [
        {"type": "BODY", "text": "We miss you, {{1}}!", "example": {"body_text": [["Maria"]]}}])


@pytest.mark.parametrize(("template", "text", "language", "field"), [
    ("order update", TemplateText(body="Hi {{1}}"), None, "body"),                      # 2 parameters, 1 placeholder
    ("order update", TemplateText(body="Hi {{1}} {{3}}"), None, "body"),
    ("order update", TemplateText(body="Hi {{name}} {{2}}"), None, "body"),             # named: Herald is positional
    ("order update", TemplateText(body="   "), None, "body"),
    ("order update", TemplateText(body="x" * 1025), None, "body"),
    ("order update", TemplateText(body="{{1}} {{2}}", header="Order {{1}}"), None, "header"),
    ("order update", TemplateText(body="{{1}} {{2}}", footer="f" * 61), None, "footer"),
    ("order update", TemplateText(body="{{1}} {{2}}", examples=["Ana"]), None, "examples"),
    ("order update", TemplateText(body="{{1}} {{2}}"), "fr", "language"),
    ("reply", TemplateText(body="Thanks {{1}}"), None, "template"),                    # a session message
])
def test_a_bad_submission_is_refused_before_any_request(container: Container, graph: FakeGraph, base_url: str,
                                                        template: str, text: TemplateText, language: str | None,
                                                        field: str) -> None:
    shop = setup(container, base_url)
    with pytest.raises(InvalidInput) as refused:
        run(container, whatsapp_templates.submit(container.engine, container.messaging.providers,
                                                 shop.workspace_id, template, text, language=language))
    assert refused.value.fields[0].field == field
    assert graph.seen == []


def test_metas_refusals_and_silence_are_clear_errors(container: Container, graph: FakeGraph, base_url: str) -> None:
    shop = setup(container, base_url, token="EAAJB-revoked")
    with pytest.raises(HeraldError) as refused:
        run(container, whatsapp_templates.sync(container.engine, container.messaging.providers, shop.workspace_id))
    assert "access_token" in refused.value.detail and "Invalid OAuth access token" in refused.value.detail
    graph.override = lambda _request: None                       # the connection closes unanswered
    with pytest.raises(Unavailable):
        run(container, whatsapp_templates.submit(container.engine, container.messaging.providers,
                                                 shop.workspace_id, "winback", TemplateText(body="Hi {{1}}")))


def test_a_submission_meta_already_has_is_refused_with_metas_words(container: Container, graph: FakeGraph,
                                                                  base_url: str) -> None:
    shop = setup(container, base_url)
    graph.templates = [meta_template("winback", "es", "APPROVED", category="MARKETING")]
    with pytest.raises(HeraldError) as refused:
        run(container, whatsapp_templates.submit(container.engine, container.messaging.providers,
                                                 shop.workspace_id, "winback", TemplateText(body="Hola {{1}}")))
    assert "already exists" in refused.value.detail


def test_without_a_whatsapp_provider_sync_says_what_to_add(container: Container) -> None:
    shop = make_shop(container.engine, container.clock.now())
    with pytest.raises(NotFound) as missing:
        run(container, whatsapp_templates.sync(container.engine, container.messaging.providers, shop.workspace_id))
    assert "whatsapp_cloud" in missing.value.detail and "waba_id" in missing.value.detail
