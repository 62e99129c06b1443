"""SMS keywords and inbound messages, on SQLite and PostgreSQL: STOP suppresses the number and
withdraws SMS marketing consent in the same transaction, before the reply is handed back; START
undoes exactly that; HELP answers; the WhatsApp window only ever moves forward."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select, update

from herald.db.tables import consent_records, contacts, suppressions, workspaces
from herald.domain.auth import Principal
from herald.domain.clock import ShiftedClock
from herald.domain.errors import InvalidInput
from herald.domain.keywords import Keyword
from herald.services import consent, keywords
from herald.services import contacts as contact_service
from herald.services import suppressions as suppression_list
from herald.services.preferences import latest_records
from tests.services.support import Shop, make_shop

PHONE = "+14155550123"


@dataclass
class Buyer:
    shop: Shop
    contact_id: str


@pytest.fixture
def buyer(engine: Engine, clock: ShiftedClock) -> Buyer:
    now = clock.now()
    shop = make_shop(engine, now)
    who = Principal("test", shop.workspace_id, None)
    with engine.begin() as conn:
        contact = contact_service.create_contact(
            conn, who, {"phone": PHONE, "store_ids": [shop.store.id, shop.other.id]}, now)
        consent.record_many(conn, shop.workspace_id, [
            consent.ConsentChange(contact_id=contact["id"], store_id=store_id, channel="sms", purpose="marketing",
                                  state="granted", source="checkout", recorded_at=now - timedelta(days=2))
            for store_id in (shop.store.id, None)] + [
            consent.ConsentChange(contact_id=contact["id"], store_id=shop.store.id, channel="email",
                                  purpose="marketing", state="granted", source="checkout",
                                  recorded_at=now - timedelta(days=2))])
    return Buyer(shop, contact["id"])


def sms_marketing(engine: Engine, contact_id: str) -> dict[str | None, tuple[str, str]]:
    with engine.begin() as conn:
        return {key[2]: (r.state, r.source) for key, r in latest_records(conn, contact_id).items()
                if key[:2] == ("sms", "marketing")}


def suppression_of(engine: Engine, workspace_id: str, number: str = PHONE) -> tuple[str, str] | None:
    with engine.begin() as conn:
        row = conn.execute(select(suppressions.c.reason, suppressions.c.source).where(
            suppressions.c.workspace_id == workspace_id, suppressions.c.channel == "sms",
            suppressions.c.address == number)).first()
    return (row.reason, row.source) if row else None


def test_stop_suppresses_and_withdraws_before_the_reply_is_returned(engine: Engine, clock: ShiftedClock,
                                                                   buyer: Buyer) -> None:
    ws = buyer.shop.workspace_id
    with engine.begin() as conn:
        result = keywords.handle_inbound_sms(conn, ws, "+1 (415) 555-0123", " Stop. ", clock.now())
        # the reply exists only now, and everything STOP means is already written in this transaction
        assert result.kind is Keyword.STOP and result.reply_text and "unsubscribed" in result.reply_text
        assert result.contact_id == buyer.contact_id
        assert suppression_list.reasons_for(conn, ws, "sms", [PHONE]) == {PHONE: "unsubscribed"}
        states = {key: r.state for key, r in latest_records(conn, buyer.contact_id).items()}
        assert states[("sms", "marketing", buyer.shop.store.id)] == "withdrawn"
        assert states[("sms", "marketing", None)] == "withdrawn"
        assert states[("email", "marketing", buyer.shop.store.id)] == "granted"   # SMS only
    # committed together: another connection sees both
    assert suppression_of(engine, ws) == ("unsubscribed", "sms:STOP")
    assert sms_marketing(engine, buyer.contact_id) == {buyer.shop.store.id: ("withdrawn", "sms:STOP"),
                                                       None: ("withdrawn", "sms:STOP")}


def test_stop_is_rolled_back_with_the_callers_transaction(engine: Engine, clock: ShiftedClock,
                                                          buyer: Buyer) -> None:
    def stop_then_fail() -> None:
        with engine.begin() as conn:
            keywords.handle_inbound_sms(conn, buyer.shop.workspace_id, PHONE, "STOP", clock.now())
            raise RuntimeError("the reply could not be queued")

    with pytest.raises(RuntimeError):
        stop_then_fail()
    assert suppression_of(engine, buyer.shop.workspace_id) is None
    assert sms_marketing(engine, buyer.contact_id)[None] == ("granted", "checkout")


def test_stop_always_records_even_at_the_same_instant(engine: Engine, clock: ShiftedClock, buyer: Buyer) -> None:
    """A keyword is the buyer's own act: it is never dropped as "older" than the ledger's latest row."""
    at = clock.now()
    with engine.begin() as conn:
        consent.record_many(conn, buyer.shop.workspace_id, [consent.ConsentChange(
            contact_id=buyer.contact_id, store_id=None, channel="sms", purpose="marketing", state="granted",
            source="api", recorded_at=at + timedelta(minutes=5))])   # a statement stamped ahead of our clock
        consent.record_many(conn, buyer.shop.workspace_id, [consent.ConsentChange(
            contact_id=buyer.contact_id, store_id=buyer.shop.store.id, channel="sms", purpose="marketing",
            state="withdrawn", source="api", recorded_at=at - timedelta(days=1))])
        keywords.handle_inbound_sms(conn, buyer.shop.workspace_id, PHONE, "STOP", at)
    assert sms_marketing(engine, buyer.contact_id)[None] == ("withdrawn", "sms:STOP")


def test_start_after_stop_restores_what_stop_took(engine: Engine, clock: ShiftedClock, buyer: Buyer) -> None:
    ws = buyer.shop.workspace_id
    with engine.begin() as conn:
        keywords.handle_inbound_sms(conn, ws, PHONE, "STOP", clock.now())
    clock.advance(timedelta(hours=1))
    with engine.begin() as conn:
        result = keywords.handle_inbound_sms(conn, ws, PHONE, "start", clock.now())
    assert result.kind is Keyword.START and result.reply_text
    assert suppression_of(engine, ws) is None
    assert sms_marketing(engine, buyer.contact_id) == {buyer.shop.store.id: ("granted", "sms:START"),
                                                       None: ("granted", "sms:START")}
    with engine.begin() as conn:   # the whole story stays in the ledger
        sources = list(conn.execute(select(consent_records.c.source).where(
            consent_records.c.contact_id == buyer.contact_id, consent_records.c.channel == "sms",
            consent_records.c.store_id.is_(None)).order_by(consent_records.c.id)).scalars())
    assert sources == ["checkout", "sms:STOP", "sms:START"]


def test_start_never_lifts_another_suppression_reason(engine: Engine, clock: ShiftedClock, buyer: Buyer) -> None:
    ws = buyer.shop.workspace_id
    with engine.begin() as conn:
        suppression_list.suppress(conn, ws, "sms", PHONE, "complaint", source="carrier", now=clock.now())
        keywords.handle_inbound_sms(conn, ws, PHONE, "START", clock.now())
    assert suppression_of(engine, ws) == ("complaint", "carrier")


def test_start_from_a_contact_without_a_stop_grants_all_stores(engine: Engine, clock: ShiftedClock) -> None:
    now = clock.now()
    shop = make_shop(engine, now)
    with engine.begin() as conn:
        contact = contact_service.create_contact(conn, Principal("t", shop.workspace_id, None),
                                                 {"phone": "+447911123456"}, now)
        keywords.handle_inbound_sms(conn, shop.workspace_id, "+447911123456", "YES", now)
    assert sms_marketing(engine, contact["id"]) == {None: ("granted", "sms:START")}


def test_stop_from_an_unknown_number_still_suppresses_it(engine: Engine, clock: ShiftedClock) -> None:
    shop = make_shop(engine, clock.now())
    with engine.begin() as conn:
        result = keywords.handle_inbound_sms(conn, shop.workspace_id, "+33612345678", "ARRÊT", clock.now())
    assert result.kind is Keyword.STOP and result.contact_id is None
    assert suppression_of(engine, shop.workspace_id, "+33612345678") == ("unsubscribed", "sms:STOP")


def test_help_and_ordinary_messages_change_nothing(engine: Engine, clock: ShiftedClock, buyer: Buyer) -> None:
    ws = buyer.shop.workspace_id
    with engine.begin() as conn:
        help_result = keywords.handle_inbound_sms(conn, ws, PHONE, "help", clock.now())
        chat = keywords.handle_inbound_sms(conn, ws, PHONE, "please stop sending the blue one", clock.now())
    assert help_result.kind is Keyword.HELP and "Seller" in (help_result.reply_text or "")
    assert (chat.kind, chat.reply_text) == (None, None)
    assert suppression_of(engine, ws) is None
    assert sms_marketing(engine, buyer.contact_id)[None] == ("granted", "checkout")


def test_replies_come_from_the_workspace_settings(engine: Engine, clock: ShiftedClock, buyer: Buyer) -> None:
    ws = buyer.shop.workspace_id
    with engine.begin() as conn:
        conn.execute(update(workspaces).where(workspaces.c.id == ws).values(settings={
            "sms_keywords": {"help_text": "Shop: call +1 555 0100. Reply STOP to stop.", "stop_text": "  ",
                             "start_text": 42},
            "policy": {"unrelated": True}}))
        assert keywords.handle_inbound_sms(conn, ws, PHONE, "HELP", clock.now()).reply_text == (
            "Shop: call +1 555 0100. Reply STOP to stop.")
        stop = keywords.handle_inbound_sms(conn, ws, PHONE, "STOP", clock.now()).reply_text
        start = keywords.handle_inbound_sms(conn, ws, PHONE, "START", clock.now()).reply_text
    assert stop == keywords.DEFAULT_REPLIES["stop_text"].format(name="Seller")   # blank: the default
    assert start == keywords.DEFAULT_REPLIES["start_text"].format(name="Seller")   # not text: the default


def test_a_keyword_from_a_malformed_number_names_the_field(engine: Engine, clock: ShiftedClock) -> None:
    shop = make_shop(engine, clock.now())
    with pytest.raises(InvalidInput) as raised, engine.begin() as conn:
        keywords.handle_inbound_sms(conn, shop.workspace_id, "4155550123", "STOP", clock.now())
    assert raised.value.fields[0].field == "from_number"


def test_whatsapp_inbound_time_only_moves_forward(engine: Engine, clock: ShiftedClock, buyer: Buyer) -> None:
    ws = buyer.shop.workspace_id
    first = clock.now()

    def inbound_at() -> object:
        with engine.begin() as conn:
            return conn.execute(select(contacts.c.whatsapp_inbound_at).where(
                contacts.c.id == buyer.contact_id)).scalar()

    with engine.begin() as conn:
        assert keywords.record_inbound(conn, ws, "whatsapp", PHONE, first) == buyer.contact_id
    assert inbound_at() == first
    with engine.begin() as conn:   # a delayed webhook of an older message
        keywords.record_inbound(conn, ws, "whatsapp", PHONE, first - timedelta(hours=3))
    assert inbound_at() == first
    later = first + timedelta(minutes=7)
    with engine.begin() as conn:
        keywords.record_inbound(conn, ws, "whatsapp", "+1 415 555 0123", later)
        keywords.record_inbound(conn, ws, "whatsapp", PHONE, later)   # a replay
    assert inbound_at() == later
    with engine.begin() as conn:
        assert keywords.record_inbound(conn, ws, "sms", PHONE, later + timedelta(hours=1)) == buyer.contact_id
        assert keywords.record_inbound(conn, ws, "whatsapp", "+447911123999", later) is None
    assert inbound_at() == later   # SMS does not open the WhatsApp window
    with pytest.raises(ValueError, match="channel"), engine.begin() as conn:
        keywords.record_inbound(conn, ws, "fax", PHONE, later)
