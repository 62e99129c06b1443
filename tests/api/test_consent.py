"""The consent API and the hosted consent pages, on SQLite and PostgreSQL: recording and reading
the ledger, validation, store scoping, double opt-in end to end (a GET never confirms, an old link
never undoes a withdrawal) and the preference centre round trip with its suppression side effects."""

from __future__ import annotations

import html
import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from herald.bootstrap import Container
from herald.db.tables import consent_records, jobs, messages, stores, suppressions
from herald.domain.auth import Principal
from herald.domain.clock import ShiftedClock
from herald.services import contacts, templates
from herald.services import suppressions as suppression_list
from tests.api.conftest import World

BASE = "http://127.0.0.1:8000"   # the test settings' public base URL


def consent_of(client: TestClient, world: World, contact_id: str, caller: str = "A", **params: Any) -> Any:
    resp = client.get(f"/api/v1/contacts/{contact_id}/consent", headers=world.callers[caller].headers, params=params)
    assert resp.status_code == 200, resp.text
    return resp.json()


def post(client: TestClient, world: World, contact_id: str, *changes: dict[str, Any], caller: str = "A",
         **headers: str) -> Any:
    return client.post(f"/api/v1/contacts/{contact_id}/consent", json={"changes": list(changes)},
                       headers={**world.callers[caller].headers, **headers})


def current(body: Any) -> dict[tuple[str, str, str | None], str]:
    return {(r["channel"], r["purpose"], r["store_id"]): r["state"] for r in body["current"]}


def ledger(container: Container, contact_id: str) -> list[dict[str, Any]]:
    with container.engine.begin() as conn:
        return [dict(r) for r in conn.execute(select(consent_records).where(
            consent_records.c.contact_id == contact_id).order_by(consent_records.c.id)).mappings()]


def path_of(url: str) -> str:
    assert url.startswith(BASE + "/"), url
    return url.removeprefix(BASE)


# ---- the API --------------------------------------------------------------------------------------

def test_record_and_read_with_history_newest_first(client: TestClient, world: World) -> None:
    a1 = world.ids["A1"]
    resp = post(client, world, a1["contact"],
                {"channel": "email", "purpose": "marketing", "state": "granted", "store_id": a1["store"],
                 "source": "signup_form", "wording_version": "v3"},
                {"channel": "sms", "purpose": "marketing", "state": "granted", "ip": "2001:db8::1",
                 "user_agent": "Shop/1.0", "recorded_at": "2026-01-02T03:04:05Z"})
    assert resp.status_code == 200, resp.text
    assert [(r["state"], r["recorded"], r["confirmation_url"]) for r in resp.json()["results"]] == [
        ("granted", True, None), ("granted", True, None)]

    # repeating the current state appends nothing; an older statement is kept out
    again = post(client, world, a1["contact"],
                 {"channel": "email", "purpose": "marketing", "state": "granted", "store_id": a1["store"]},
                 {"channel": "sms", "purpose": "marketing", "state": "withdrawn",
                  "recorded_at": "2025-12-01T00:00:00Z"})
    assert [(r["state"], r["recorded"]) for r in again.json()["results"]] == [("granted", False), ("granted", False)]
    withdrawn = post(client, world, a1["contact"], {"channel": "sms", "purpose": "marketing", "state": "withdrawn"})
    assert withdrawn.json()["results"][0] == {
        "channel": "sms", "purpose": "marketing", "store_id": None, "state": "withdrawn", "recorded": True,
        "confirmation_url": None, "confirmation_expires_at": None, "confirmation_message_id": None}

    body = consent_of(client, world, a1["contact"])
    assert current(body) == {("email", "marketing", a1["store"]): "granted", ("sms", "marketing", None): "withdrawn"}
    assert [(r["channel"], r["state"]) for r in body["history"]] == [
        ("sms", "withdrawn"), ("email", "granted"), ("sms", "granted")]   # newest first
    email_row = body["history"][1]
    assert (email_row["source"], email_row["wording_version"], email_row["ip"]) == ("signup_form", "v3", "testclient")
    assert email_row["user_agent"] == "testclient"   # the request's, by default
    sms_row = body["history"][2]
    assert (sms_row["ip"], sms_row["user_agent"], sms_row["recorded_at"]) == (
        "2001:db8::1", "Shop/1.0", "2026-01-02T03:04:05Z")

    pages, cursor = [], None
    for _ in range(5):
        page = consent_of(client, world, a1["contact"], limit=1, **({"cursor": cursor} if cursor else {}))
        pages += [r["id"] for r in page["history"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == [r["id"] for r in body["history"]]
    bad = client.get(f"/api/v1/contacts/{a1['contact']}/consent", headers=world.callers["A"].headers,
                     params={"cursor": "nonsense"})
    assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "cursor"


@pytest.mark.parametrize(("change", "field"), [
    ({"channel": "fax", "purpose": "marketing", "state": "granted"}, "changes.0.channel"),
    ({"channel": "email", "purpose": "spam", "state": "granted"}, "changes.0.purpose"),
    ({"channel": "email", "purpose": "marketing", "state": "pending"}, "changes.0.state"),
    ({"channel": "email", "purpose": "marketing"}, "changes.0.state"),
    ({"channel": "email", "purpose": "marketing", "state": "granted", "recorded_at": "2026-01-01T00:00:00"},
     "changes.0.recorded_at"),
    ({"channel": "email", "purpose": "marketing", "state": "granted", "recorded_at": "2999-01-01T00:00:00Z"},
     "changes.0.recorded_at"),
    ({"channel": "email", "purpose": "marketing", "state": "granted", "ip": "999.1.1.1"}, "changes.0.ip"),
    ({"channel": "email", "purpose": "marketing", "state": "granted", "store_id": "st_nope"}, "changes.0.store_id"),
    ({"channel": "email", "purpose": "marketing", "state": "granted", "colour": "red"}, "changes.0.colour"),
    ({"channel": "email", "purpose": "marketing", "state": "withdrawn", "double_opt_in": True},
     "changes.0.double_opt_in"),
    ({"channel": "email", "purpose": "marketing", "state": "granted", "confirmation_template_id": "tpl_x"},
     "changes.0.confirmation_template_id"),
    ({"channel": "email", "purpose": "marketing", "state": "granted", "source": ""}, "changes.0.source"),
])
def test_validation_names_the_field(client: TestClient, world: World, container: Container,
                                    change: dict[str, Any], field: str) -> None:
    contact_id = world.ids["A1"]["contact"]
    resp = post(client, world, contact_id, change)
    assert resp.status_code == 422, resp.text
    assert resp.json()["errors"][0]["field"] == field, resp.json()
    assert ledger(container, contact_id) == []


def test_one_change_per_key_and_at_least_one_change(client: TestClient, world: World) -> None:
    contact_id = world.ids["A1"]["contact"]
    same = {"channel": "email", "purpose": "marketing", "state": "granted"}
    resp = post(client, world, contact_id, same, {**same, "state": "withdrawn"})
    assert resp.status_code == 422 and resp.json()["errors"][0]["field"] == "changes.1"
    empty = post(client, world, contact_id)
    assert empty.status_code == 422 and empty.json()["errors"][0]["field"] == "changes"


def test_store_keys_touch_only_their_store(client: TestClient, world: World, container: Container) -> None:
    a1, a2 = world.ids["A1"], world.ids["A2"]
    grant = {"channel": "email", "purpose": "marketing", "state": "granted"}
    resp = post(client, world, a1["contact"], grant, caller="A1")
    assert resp.status_code == 200 and resp.json()["results"][0]["store_id"] == a1["store"]   # its store, implied
    forbidden = post(client, world, a1["contact"], {**grant, "store_id": a2["store"]}, caller="A1")
    assert forbidden.status_code == 403 and "changes.0.store_id" in forbidden.json()["detail"]
    assert post(client, world, a2["contact"], grant, caller="A1").status_code == 404   # not its contact
    assert post(client, world, a1["contact"], grant, caller="B").status_code == 404    # another workspace
    # the workspace key records for all stores and for the other store; the store key sees its own + all stores
    post(client, world, a1["contact"], {**grant, "channel": "sms"}, {**grant, "store_id": a2["store"]})
    seen_by_store = current(consent_of(client, world, a1["contact"], caller="A1"))
    assert seen_by_store == {("email", "marketing", a1["store"]): "granted", ("sms", "marketing", None): "granted"}
    assert len(consent_of(client, world, a1["contact"], caller="A1")["history"]) == 2
    assert len(current(consent_of(client, world, a1["contact"], caller="A"))) == 3
    assert client.get(f"/api/v1/contacts/{a1['contact']}/consent", headers=world.callers["A2"].headers
                      ).status_code == 404


def test_a_replayed_idempotency_key_records_once(client: TestClient, world: World, container: Container) -> None:
    contact_id = world.ids["A1"]["contact"]
    change = {"channel": "email", "purpose": "marketing", "state": "granted", "double_opt_in": True}
    first = post(client, world, contact_id, change, **{"Idempotency-Key": "k-1"})
    again = post(client, world, contact_id, change, **{"Idempotency-Key": "k-1"})
    assert first.status_code == again.status_code == 200
    assert again.headers.get("idempotent-replayed") == "true" and again.json() == first.json()
    assert len(ledger(container, contact_id)) == 1


# ---- double opt-in ----------------------------------------------------------------------------------

def double_opt_in(client: TestClient, world: World, contact_id: str, **extra: Any) -> Any:
    resp = post(client, world, contact_id, {"channel": "email", "purpose": "marketing", "state": "granted",
                                            "double_opt_in": True, "wording_version": "nl-2", **extra})
    assert resp.status_code == 200, resp.text
    return resp.json()["results"][0]


def test_double_opt_in_end_to_end(client: TestClient, world: World, container: Container,
                                  clock: ShiftedClock) -> None:
    a1 = world.ids["A1"]
    result = double_opt_in(client, world, a1["contact"], store_id=a1["store"])
    assert result["state"] == "pending" and result["recorded"] is True
    url = result["confirmation_url"]
    assert url.startswith(BASE + "/c/")
    expires = datetime.fromisoformat(result["confirmation_expires_at"])
    assert timedelta(days=6, hours=23) < expires - clock.now() <= timedelta(days=7)

    page = client.get(path_of(url))   # what a mail scanner's prefetch does
    assert page.status_code == 200 and "<form method=\"post\">" in page.text and "A1" in page.text
    assert page.headers["cache-control"].startswith("no-store") and page.headers["referrer-policy"] == "no-referrer"
    assert "set-cookie" not in page.headers and "<script" not in page.text
    assert current(consent_of(client, world, a1["contact"]))[("email", "marketing", a1["store"])] == "pending"

    clock.advance(timedelta(minutes=3))
    done = client.post(path_of(url), data={"confirm": "yes"}, headers={"User-Agent": "Mozilla/5.0 (buyer)"})
    assert done.status_code == 200 and "Subscription confirmed" in done.text
    rows = ledger(container, a1["contact"])
    assert [(r["state"], r["source"]) for r in rows] == [("pending", "api"), ("granted", "double_opt_in")]
    assert (rows[1]["wording_version"], rows[1]["ip"], rows[1]["user_agent"]) == (
        "nl-2", "testclient", "Mozilla/5.0 (buyer)")

    again = client.post(path_of(url))
    assert again.status_code == 200 and "already confirmed" in again.text
    assert len(ledger(container, a1["contact"])) == 2
    # asking again once granted changes nothing and needs no link
    assert double_opt_in(client, world, a1["contact"], store_id=a1["store"]) == {
        "channel": "email", "purpose": "marketing", "store_id": a1["store"], "state": "granted", "recorded": False,
        "confirmation_url": None, "confirmation_expires_at": None, "confirmation_message_id": None}


def test_tampered_and_expired_links_record_nothing(client: TestClient, world: World, container: Container,
                                                   clock: ShiftedClock) -> None:
    contact_id = world.ids["A1"]["contact"]
    url = path_of(double_opt_in(client, world, contact_id)["confirmation_url"])
    tampered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    for method in ("GET", "POST"):
        resp = client.request(method, tampered)
        assert resp.status_code == 404 and "not valid" in resp.text
    assert client.post("/c/" + "x" * 40).status_code == 404
    clock.advance(timedelta(days=7, seconds=1))
    for method in ("GET", "POST"):
        resp = client.request(method, url)
        assert resp.status_code == 400 and "expired" in resp.text
    assert [r["state"] for r in ledger(container, contact_id)] == ["pending"]


def test_an_old_link_never_undoes_a_withdrawal(client: TestClient, world: World, container: Container,
                                               clock: ShiftedClock) -> None:
    contact_id = world.ids["A1"]["contact"]
    old = path_of(double_opt_in(client, world, contact_id)["confirmation_url"])
    clock.advance(timedelta(minutes=1))
    post(client, world, contact_id, {"channel": "email", "purpose": "marketing", "state": "withdrawn"})
    resp = client.post(old)
    assert resp.status_code == 409 and "Nothing was changed" in resp.text
    assert [r["state"] for r in ledger(container, contact_id)] == ["pending", "withdrawn"]

    # a new request: the old link still cannot confirm it, the new one can
    clock.advance(timedelta(minutes=1))
    new = path_of(double_opt_in(client, world, contact_id)["confirmation_url"])
    assert client.post(old).status_code == 409
    assert client.post(new).status_code == 200
    assert [r["state"] for r in ledger(container, contact_id)] == ["pending", "withdrawn", "pending", "granted"]


def test_asking_again_while_pending_resends_a_working_link(client: TestClient, world: World,
                                                           container: Container, clock: ShiftedClock) -> None:
    contact_id = world.ids["A1"]["contact"]
    first = path_of(double_opt_in(client, world, contact_id)["confirmation_url"])
    clock.advance(timedelta(hours=1))
    second = double_opt_in(client, world, contact_id)
    assert (second["state"], second["recorded"]) == ("pending", False)
    assert client.post(path_of(second["confirmation_url"])).status_code == 200
    assert client.post(first).status_code == 200   # the same request: already confirmed
    assert [r["state"] for r in ledger(container, contact_id)] == ["pending", "granted"]


def test_a_confirmation_email_is_queued_with_the_link(client: TestClient, world: World, container: Container) -> None:
    a1 = world.ids["A1"]
    now = container.clock.now()
    who = Principal("t", world.callers["A"].principal.workspace_id, None)
    with container.engine.begin() as conn:
        confirm_tpl = templates.create_template(
            conn, who, name="confirm", channel="email", purpose="transactional", default_language="en",
            variants={"en": {"subject": "Confirm", "body": "<p>{{ confirmation_url }}</p>", "body_format": "html"}},
            store_id=None, now=now)
        phone_only = contacts.create_contact(conn, who, {"phone": "+14155550188", "store_ids": [a1["store"]]}, now)
    result = double_opt_in(client, world, a1["contact"], store_id=a1["store"],
                           confirmation_template_id=confirm_tpl["id"])
    with container.engine.begin() as conn:
        message = conn.execute(select(messages).where(messages.c.id == result["confirmation_message_id"])
                               ).mappings().one()
        job = conn.execute(select(jobs.c.payload).where(jobs.c.kind == "message.send")).scalar()
    assert (message["purpose"], message["to_address"], message["store_id"], message["contact_id"]) == (
        "transactional", "buyer0@a1.example", a1["store"], a1["contact"])
    assert message["context"] == {"variables": {"confirmation_url": result["confirmation_url"]}}
    assert job == {"message_id": message["id"]}

    problems = [
        (a1["contact"], {"confirmation_template_id": a1["template"], "store_id": a1["store"]}, "transactional"),
        (a1["contact"], {"confirmation_template_id": confirm_tpl["id"], "channel": "sms"}, "store to send from"),
        (phone_only["id"], {"confirmation_template_id": confirm_tpl["id"], "store_id": a1["store"]},
         "no email address"),
        (a1["contact"], {"confirmation_template_id": world.ids["B1"]["template"]}, "no template"),
    ]
    for contact_id, extra, why in problems:
        resp = post(client, world, contact_id, {"channel": "email", "purpose": "marketing", "state": "granted",
                                                "double_opt_in": True, **extra})
        assert resp.status_code == 422, resp.text
        assert resp.json()["errors"][0]["field"] == "changes.0.confirmation_template_id" and why in resp.text


# ---- the preference centre ---------------------------------------------------------------------

def form_of(page: str) -> tuple[list[str], list[str]]:
    """(ticked boxes, shown states) of a preference page."""
    ticked = [html.unescape(v) for v in re.findall(r'name="box" value="([^"]+)"[^>]*checked', page)]
    shown = [html.unescape(v) for v in re.findall(r'name="shown" value="([^"]+)"', page)]
    return ticked, shown


def preference_path(container: Container, contact_id: str) -> str:
    return path_of(container.consent_links.preferences_url(contact_id, container.clock.now()))


def email_suppression(container: Container, address: str) -> tuple[str, str] | None:
    with container.engine.begin() as conn:
        row = conn.execute(select(suppressions.c.reason, suppressions.c.source).where(
            suppressions.c.channel == "email", suppressions.c.address == address)).first()
    return (row.reason, row.source) if row else None


@pytest.fixture
def subscriber(client: TestClient, world: World, container: Container) -> dict[str, str]:
    """Contact A1 with a phone too, linked to both stores, granted marketing email in A1 and SMS for all."""
    a1, a2 = world.ids["A1"], world.ids["A2"]
    resp = client.patch(f"/api/v1/contacts/{a1['contact']}", headers=world.callers["A"].headers,
                        json={"phone": "+14155550142", "store_ids": [a1["store"], a2["store"]]})
    assert resp.status_code == 200, resp.text
    post(client, world, a1["contact"],
         {"channel": "email", "purpose": "marketing", "state": "granted", "store_id": a1["store"],
          "recorded_at": (container.clock.now() - timedelta(days=1)).isoformat()},
         {"channel": "sms", "purpose": "marketing", "state": "granted",
          "recorded_at": (container.clock.now() - timedelta(days=1)).isoformat()})
    return {"contact": a1["contact"], "email": "buyer0@a1.example", "a1": a1["store"], "a2": a2["store"]}


def test_the_preference_page_shows_the_grid_and_changes_nothing(client: TestClient, container: Container,
                                                                 subscriber: dict[str, str]) -> None:
    before = ledger(container, subscriber["contact"])
    page = client.get(preference_path(container, subscriber["contact"]))
    assert page.status_code == 200 and "set-cookie" not in page.headers and "<script" not in page.text
    assert page.headers["x-frame-options"] == "DENY"
    ticked, shown = form_of(page.text)
    assert sorted(ticked) == sorted([f"email:marketing:{subscriber['a1']}", "sms:marketing:all"])
    # email, SMS and WhatsApp (the contact has an email and a phone) x 2 purposes x (all + 2 stores)
    assert len(shown) == 3 * 2 * 3
    assert "Unsubscribe from all marketing" in page.text and "A2" in page.text
    assert ledger(container, subscriber["contact"]) == before


def test_preference_centre_withdraw_and_regrant(client: TestClient, container: Container, clock: ShiftedClock,
                                                subscriber: dict[str, str]) -> None:
    path = preference_path(container, subscriber["contact"])
    ticked, shown = form_of(client.get(path).text)
    email_a1 = f"email:marketing:{subscriber['a1']}"
    unticked = [b for b in ticked if b != email_a1]
    saved = client.post(path, data={"box": unticked, "shown": shown, "action": "save"},
                        headers={"User-Agent": "Buyer browser"})
    assert saved.status_code == 200 and "preferences are saved" in saved.text
    assert form_of(saved.text)[0] == unticked
    last = ledger(container, subscriber["contact"])[-1]
    assert (last["channel"], last["store_id"], last["state"], last["source"], last["ip"], last["user_agent"]) == (
        "email", subscriber["a1"], "withdrawn", "preference_centre", "testclient", "Buyer browser")
    # no marketing email consent left in any store: the address is suppressed as unsubscribed
    assert email_suppression(container, subscriber["email"]) == ("unsubscribed", "preference_centre")

    clock.advance(timedelta(minutes=1))
    ticked, shown = form_of(client.get(path).text)
    regrant = client.post(path, data={"box": [*ticked, f"email:marketing:{subscriber['a2']}"], "shown": shown})
    assert regrant.status_code == 200
    assert email_suppression(container, subscriber["email"]) is None   # the suppression it made is lifted
    states = {(r["channel"], r["store_id"]): r["state"] for r in ledger(container, subscriber["contact"])}
    assert states[("email", subscriber["a2"])] == "granted" and states[("email", subscriber["a1"])] == "withdrawn"


def test_withdrawing_one_store_keeps_the_address_when_another_store_has_consent(
        client: TestClient, container: Container, clock: ShiftedClock, subscriber: dict[str, str]) -> None:
    path = preference_path(container, subscriber["contact"])
    ticked, shown = form_of(client.get(path).text)
    client.post(path, data={"box": [*ticked, f"email:marketing:{subscriber['a2']}"], "shown": shown})
    clock.advance(timedelta(minutes=1))
    ticked, shown = form_of(client.get(path).text)
    client.post(path, data={"box": [b for b in ticked if b != f"email:marketing:{subscriber['a1']}"], "shown": shown})
    assert email_suppression(container, subscriber["email"]) is None


def test_regrant_never_lifts_a_suppression_of_another_source_or_reason(
        client: TestClient, container: Container, clock: ShiftedClock, subscriber: dict[str, str]) -> None:
    path = preference_path(container, subscriber["contact"])
    with container.engine.begin() as conn:
        ws = conn.execute(select(stores.c.workspace_id).where(stores.c.id == subscriber["a1"])).scalar()
        assert ws is not None
        suppression_list.suppress(conn, ws, "email", subscriber["email"], "complaint", source="arf",
                                  now=clock.now())
    ticked, shown = form_of(client.get(path).text)
    client.post(path, data={"box": [b for b in ticked if not b.startswith("email:")], "shown": shown})
    clock.advance(timedelta(minutes=1))
    ticked, shown = form_of(client.get(path).text)
    client.post(path, data={"box": [*ticked, f"email:marketing:{subscriber['a1']}"], "shown": shown})
    assert email_suppression(container, subscriber["email"]) == ("complaint", "arf")


def test_unsubscribe_from_all_marketing_is_one_click(client: TestClient, container: Container,
                                                     subscriber: dict[str, str]) -> None:
    path = preference_path(container, subscriber["contact"])
    ticked, shown = form_of(client.get(path).text)
    resp = client.post(path, data={"box": ticked, "shown": shown, "action": "unsubscribe_all"})
    assert resp.status_code == 200 and "unsubscribed from all marketing" in resp.text
    states = {}
    for r in ledger(container, subscriber["contact"]):
        states[(r["channel"], r["purpose"], r["store_id"])] = r["state"]
    marketing = {k: v for k, v in states.items() if k[1] == "marketing"}
    assert len(marketing) == 3 * 3 and set(marketing.values()) == {"withdrawn"}   # every channel x store
    assert form_of(resp.text)[0] == []
    assert email_suppression(container, subscriber["email"]) == ("unsubscribed", "preference_centre")


def test_a_box_changed_elsewhere_is_not_overwritten_by_a_stale_form(
        client: TestClient, world: World, container: Container, clock: ShiftedClock,
        subscriber: dict[str, str]) -> None:
    """Only boxes the person changed on the page are recorded: a STOP received after the page was
    loaded is not undone by submitting the (still ticked) SMS box unchanged."""
    path = preference_path(container, subscriber["contact"])
    ticked, shown = form_of(client.get(path).text)
    clock.advance(timedelta(minutes=1))
    post(client, world, subscriber["contact"], {"channel": "sms", "purpose": "marketing", "state": "withdrawn"})
    client.post(path, data={"box": [*ticked, "whatsapp:marketing:all"], "shown": shown})
    states = {(r["channel"], r["store_id"]): r["state"] for r in ledger(container, subscriber["contact"])}
    assert states[("sms", None)] == "withdrawn" and states[("whatsapp", None)] == "granted"


def test_bad_preference_links_and_forms(client: TestClient, container: Container, clock: ShiftedClock,
                                        subscriber: dict[str, str]) -> None:
    path = preference_path(container, subscriber["contact"])
    before = ledger(container, subscriber["contact"])
    assert client.get(path[:-2] + "zz").status_code == 404
    assert client.post(path[:-2] + "zz", data={"action": "unsubscribe_all"}).status_code == 404
    forged_box = client.post(path, data={"box": ["email:marketing:st_OTHER"], "shown": ["email:marketing:st_OTHER:0"]})
    assert forged_box.status_code == 409
    garbage = client.post(path, data={"box": ["nonsense"]})
    assert garbage.status_code == 400
    clock.advance(timedelta(days=181))
    assert client.get(path).status_code == 400
    assert client.post(path, data={"action": "unsubscribe_all"}).status_code == 400
    assert ledger(container, subscriber["contact"]) == before


def test_the_preference_page_escapes_what_it_shows(client: TestClient, world: World, container: Container,
                                                  subscriber: dict[str, str]) -> None:
    with container.engine.begin() as conn:
        conn.execute(stores.update().where(stores.c.id == subscriber["a2"]).values(name='<script>alert("x")</script>'))
    page = client.get(preference_path(container, subscriber["contact"])).text
    assert "<script>" not in page and "&lt;script&gt;" in page


def test_the_unsubscribe_page_links_the_preference_centre(client: TestClient, world: World,
                                                          container: Container) -> None:
    a1 = world.ids["A1"]
    now = container.clock.now()
    with container.engine.begin() as conn:
        conn.execute(messages.insert().values(
            id="msg_01J00000000000000000000000", workspace_id=world.callers["A"].principal.workspace_id,
            store_id=a1["store"], contact_id=a1["contact"], channel="email", purpose="marketing",
            to_address="buyer0@a1.example", status="sent", created_at=now, updated_at=now))
    unsubscribe = path_of(container.email.links.unsubscribe_url("msg_01J00000000000000000000000"))
    page = client.get(unsubscribe)
    found = re.search(r'href="([^"]+/p/[^"]+)"', page.text)
    assert page.status_code == 200 and found
    assert client.get(path_of(html.unescape(found.group(1)))).status_code == 200
    done = client.post(unsubscribe, data={"confirm": "yes"})
    assert done.status_code == 200 and "/p/" in done.text


def test_the_preference_link_follows_a_merge(client: TestClient, world: World, container: Container) -> None:
    a1 = world.ids["A1"]
    who = world.callers["A"].principal
    with container.engine.begin() as conn:
        other = contacts.create_contact(conn, who, {"email": "second@a1.example"}, container.clock.now())
    path = preference_path(container, other["id"])
    merged = client.post(f"/api/v1/contacts/{a1['contact']}/merge", headers=world.callers["A"].headers,
                         json={"merge_id": other["id"], "reason": "same person"})
    assert merged.status_code == 200, merged.text
    page = client.get(path)
    assert page.status_code == 200 and "email:marketing:all" in page.text

