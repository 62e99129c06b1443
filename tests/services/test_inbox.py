"""The in-site inbox service: delivery (idempotent on the message), scoped reading, marking read,
the stream cursor (late commits inside the look-back window), the in-process notifier and the
widget tokens. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, insert, select

from herald.db.tables import inbox_items, messages
from herald.domain.auth import Principal
from herald.domain.clock import ShiftedClock
from herald.domain.errors import InvalidInput, NotFound
from herald.domain.ids import new_id
from herald.pipeline.consent_links import ConsentLinks
from herald.services import contacts, inbox
from herald.services.inbox import InboxScope, InboxTokens
from tests.services.support import Shop, make_shop


@pytest.fixture
def shop(engine: Engine, clock: ShiftedClock) -> Shop:
    return make_shop(engine, clock.now())


def _contact(engine: Engine, shop: Shop, now: datetime, email: str = "ana@example.com") -> str:
    with engine.begin() as conn:
        row = contacts.create_contact(conn, Principal("test", shop.workspace_id, None),
                                      {"email": email, "store_ids": [shop.store.id, shop.other.id]}, now)
    return str(row["id"])


def _message(engine: Engine, workspace_id: str, contact_id: str, now: datetime) -> str:
    message_id = new_id("msg")
    with engine.begin() as conn:
        conn.execute(insert(messages).values(
            id=message_id, workspace_id=workspace_id, contact_id=contact_id, channel="inbox",
            purpose="transactional", to_address=contact_id, status="queued", created_at=now, updated_at=now))
    return message_id


def _deliver(engine: Engine, shop: Shop, contact_id: str, now: datetime, title: str = "Hello", *,
             store_id: str | None = None, message_id: str | None = None) -> str:
    with engine.begin() as conn:
        return inbox.deliver(conn, shop.workspace_id, contact_id, message_id, store_id or shop.store.id, title,
                             "Your order shipped.", "https://shop.example/orders/1", now)


# ---- delivery --------------------------------------------------------------------------------------

def test_delivery_is_idempotent_on_the_message(engine: Engine, shop: Shop, clock: ShiftedClock) -> None:
    now = clock.now()
    contact_id = _contact(engine, shop, now)
    message_id = _message(engine, shop.workspace_id, contact_id, now)
    first = _deliver(engine, shop, contact_id, now, "Shipped", message_id=message_id)
    again = _deliver(engine, shop, contact_id, now, "Something else", message_id=message_id)
    assert again == first
    assert inbox.is_item_id(first)
    with engine.connect() as conn:
        rows = conn.execute(select(inbox_items)).mappings().all()
    assert len(rows) == 1
    assert rows[0]["title"] == "Shipped"
    assert rows[0]["message_id"] == message_id
    assert rows[0]["url"] == "https://shop.example/orders/1"


def test_deliveries_without_a_message_are_separate_items(engine: Engine, shop: Shop, clock: ShiftedClock) -> None:
    contact_id = _contact(engine, shop, clock.now())
    assert _deliver(engine, shop, contact_id, clock.now()) != _deliver(engine, shop, contact_id, clock.now())


@pytest.mark.parametrize(("field", "title", "body", "url"), [
    ("title", "   ", "b", None),
    ("title", "x" * 501, "b", None),
    ("body", "t", "x" * (inbox.MAX_BODY_CHARS + 1), None),
    ("body", "t", "nul \x00 here", None),
    ("url", "t", "b", "javascript:alert(1)"),
    ("url", "t", "b", "/relative/path"),
    ("url", "t", "b", "https://shop.example/a b"),
])
def test_bad_content_is_refused_naming_the_field(engine: Engine, shop: Shop, clock: ShiftedClock, field: str,
                                                 title: str, body: str, url: str | None) -> None:
    contact_id = _contact(engine, shop, clock.now())
    with engine.begin() as conn, pytest.raises(InvalidInput) as err:
        inbox.deliver(conn, shop.workspace_id, contact_id, None, None, title, body, url, clock.now())
    assert err.value.fields[0].field == field


def test_delivery_needs_the_contact_and_store_of_the_workspace(engine: Engine, shop: Shop,
                                                               clock: ShiftedClock) -> None:
    now = clock.now()
    contact_id = _contact(engine, shop, now)
    elsewhere = make_shop(engine, now, slug="other-seller")
    foreign_contact = _contact(engine, elsewhere, now, "bo@example.com")
    with engine.begin() as conn:
        with pytest.raises(NotFound, match="contact"):
            inbox.deliver(conn, shop.workspace_id, foreign_contact, None, None, "t", "b", None, now)
        with pytest.raises(NotFound, match="store"):
            inbox.deliver(conn, shop.workspace_id, contact_id, None, elsewhere.store.id, "t", "b", None, now)


# ---- reading ---------------------------------------------------------------------------------------

def test_items_are_listed_newest_first_in_keyset_pages(engine: Engine, shop: Shop, clock: ShiftedClock) -> None:
    contact_id = _contact(engine, shop, clock.now())
    made = [_deliver(engine, shop, contact_id, clock.now(), f"item {i}") for i in range(5)]
    scope = InboxScope(shop.workspace_id, contact_id)
    seen: list[str] = []
    cursor: str | None = None
    with engine.connect() as conn:
        for _page in range(10):
            page = inbox.list_items(conn, scope, limit=2, cursor=cursor)
            seen += [r["id"] for r in page.items]
            cursor = page.next_cursor
            if cursor is None:
                break
    assert seen == list(reversed(made))


def test_scope_limits_to_the_store_and_the_contact(engine: Engine, shop: Shop, clock: ShiftedClock) -> None:
    now = clock.now()
    contact_id = _contact(engine, shop, now)
    other_contact = _contact(engine, shop, now, "bo@example.com")
    mine = _deliver(engine, shop, contact_id, now, "store one")
    theirs = _deliver(engine, shop, contact_id, now, "store two", store_id=shop.other.id)
    _deliver(engine, shop, other_contact, now, "someone else")
    with engine.connect() as conn:
        def ids(scope: InboxScope) -> list[str]:
            return [r["id"] for r in inbox.list_items(conn, scope, limit=50, cursor=None).items]

        assert ids(InboxScope(shop.workspace_id, contact_id, shop.store.id)) == [mine]
        assert ids(InboxScope(shop.workspace_id, contact_id, shop.other.id)) == [theirs]
        assert ids(InboxScope(shop.workspace_id, contact_id)) == [theirs, mine]
        assert ids(InboxScope("ws_nobody", contact_id)) == []
        assert inbox.counts(conn, InboxScope(shop.workspace_id, contact_id, shop.store.id)) == inbox.Counts(1, 1)


def test_mark_read_by_ids_and_up_to(engine: Engine, shop: Shop, clock: ShiftedClock) -> None:
    now = clock.now()
    contact_id = _contact(engine, shop, now)
    _a, b, c, d = (_deliver(engine, shop, contact_id, now, f"item {i}") for i in range(4))
    other_store = _deliver(engine, shop, contact_id, now, "other store", store_id=shop.other.id)
    scope = InboxScope(shop.workspace_id, contact_id, shop.store.id)
    with engine.begin() as conn:
        assert inbox.counts(conn, scope) == inbox.Counts(unread=4, total=4)
        assert inbox.mark_read(conn, scope, now, ids=[b, other_store]) == 1  # the other store's is out of scope
        assert inbox.mark_read(conn, scope, now, ids=[b]) == 0               # already read
        assert inbox.mark_read(conn, scope, now, up_to=c) == 2               # a and c
        unread = inbox.list_items(conn, scope, limit=50, cursor=None, unread_only=True)
        assert [r["id"] for r in unread.items] == [d]
        assert inbox.counts(conn, scope) == inbox.Counts(unread=1, total=4)
        assert inbox.counts(conn, InboxScope(shop.workspace_id, contact_id)) == inbox.Counts(unread=2, total=5)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({}, "ids"),
    ({"ids": ["inb_01ARZ3NDEKTSV4RRFFQ69G5FAV"], "up_to": "inb_01ARZ3NDEKTSV4RRFFQ69G5FAV"}, "ids"),
    ({"ids": []}, "ids"),
    ({"ids": ["ct_01ARZ3NDEKTSV4RRFFQ69G5FAV"]}, "ids.0"),
    ({"up_to": "nonsense"}, "up_to"),
])
def test_mark_read_refuses_unclear_requests(engine: Engine, shop: Shop, clock: ShiftedClock,
                                            kwargs: dict[str, object], field: str) -> None:
    contact_id = _contact(engine, shop, clock.now())
    with engine.begin() as conn, pytest.raises(InvalidInput) as err:
        inbox.mark_read(conn, InboxScope(shop.workspace_id, contact_id), clock.now(), **kwargs)  # type: ignore[arg-type]
    assert err.value.fields[0].field == field


# ---- the stream cursor -----------------------------------------------------------------------------

def _insert_with_id(engine: Engine, shop: Shop, contact_id: str, item_id: str, now: datetime) -> None:
    """An item whose id was made earlier than its commit (a slow concurrent transaction)."""
    with engine.begin() as conn:
        conn.execute(insert(inbox_items).values(id=item_id, workspace_id=shop.workspace_id, store_id=shop.store.id,
                                                contact_id=contact_id, title="late", body="", created_at=now))


def _late_id(before: str, ms: int) -> str:
    return inbox.id_floor(inbox.item_id_ms(before) - ms)[:-1] + "1"


def test_a_stream_sends_each_new_item_once(engine: Engine, shop: Shop, clock: ShiftedClock) -> None:
    now = clock.now()
    contact_id = _contact(engine, shop, now)
    old = _deliver(engine, shop, contact_id, now, "before the stream")
    scope = InboxScope(shop.workspace_id, contact_id, shop.store.id)
    with engine.connect() as conn:
        cursor = inbox.open_cursor(conn, scope, None)
    assert old in cursor.seen
    new = _deliver(engine, shop, contact_id, now, "after")
    with engine.connect() as conn:
        assert [r["id"] for r in inbox.fresh_items(conn, scope, cursor)[0]] == [new]
        assert inbox.fresh_items(conn, scope, cursor) == ([], False)
    assert cursor.after == new


def test_replay_after_a_last_event_id(engine: Engine, shop: Shop, clock: ShiftedClock) -> None:
    contact_id = _contact(engine, shop, clock.now())
    a, b, c = (_deliver(engine, shop, contact_id, clock.now(), f"item {i}") for i in range(3))
    scope = InboxScope(shop.workspace_id, contact_id)
    with engine.connect() as conn:
        cursor = inbox.open_cursor(conn, scope, a)
        assert [r["id"] for r in inbox.fresh_items(conn, scope, cursor)[0]] == [b, c]


def test_a_late_commit_inside_the_window_is_still_sent(engine: Engine, shop: Shop, clock: ShiftedClock) -> None:
    now = clock.now()
    contact_id = _contact(engine, shop, now)
    scope = InboxScope(shop.workspace_id, contact_id)
    with engine.connect() as conn:
        cursor = inbox.open_cursor(conn, scope, None)
    sent = _deliver(engine, shop, contact_id, now)
    with engine.connect() as conn:
        assert [r["id"] for r in inbox.fresh_items(conn, scope, cursor)[0]] == [sent]
    late = _late_id(sent, 5_000)                            # made 5 s before the newest sent, committed now
    too_late = _late_id(sent, inbox.LOOKBACK_MS + 5_000)    # beyond the window: documented as missed
    _insert_with_id(engine, shop, contact_id, late, now)
    _insert_with_id(engine, shop, contact_id, too_late, now)
    with engine.connect() as conn:
        assert [r["id"] for r in inbox.fresh_items(conn, scope, cursor)[0]] == [late]
        assert inbox.fresh_items(conn, scope, cursor)[0] == []


def test_a_forged_future_last_event_id_does_not_silence_the_stream(engine: Engine, shop: Shop,
                                                                     clock: ShiftedClock) -> None:
    contact_id = _contact(engine, shop, clock.now())
    scope = InboxScope(shop.workspace_id, contact_id)
    with engine.connect() as conn:
        cursor = inbox.open_cursor(conn, scope, "inb_7ZZZZZZZZZZZZZZZZZZZZZZZZZ")
    new = _deliver(engine, shop, contact_id, clock.now())
    with engine.connect() as conn:
        assert [r["id"] for r in inbox.fresh_items(conn, scope, cursor)[0]] == [new]


def test_a_poll_reads_a_bounded_number_of_pages(engine: Engine, shop: Shop, clock: ShiftedClock,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbox, "STREAM_PAGE", 2)
    contact_id = _contact(engine, shop, clock.now())
    scope = InboxScope(shop.workspace_id, contact_id)
    with engine.connect() as conn:
        cursor = inbox.open_cursor(conn, scope, None)
    made = [_deliver(engine, shop, contact_id, clock.now(), f"item {i}") for i in range(5)]
    got: list[str] = []
    with engine.connect() as conn:
        for _poll in range(5):
            items, more = inbox.fresh_items(conn, scope, cursor)
            assert len(items) <= 2
            got += [r["id"] for r in items]
            if not more:
                break
    assert got == made


def test_item_ids_of_one_process_only_grow() -> None:
    ids = [inbox.new_item_id() for _ in range(2_000)]   # many share a millisecond
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert all(inbox.is_item_id(i) for i in ids)
    assert inbox._next_ulid("0" * 25 + "Z") == "0" * 24 + "10"


def test_id_floor_orders_below_every_id_of_its_millisecond() -> None:
    item = inbox.new_item_id()
    ms = inbox.item_id_ms(item)
    assert inbox.id_floor(ms) <= item < inbox.id_floor(ms + 1)
    assert inbox.is_item_id(inbox.id_floor(ms))
    assert not inbox.is_item_id("inb_short") and not inbox.is_item_id(None)


# ---- the notifier -----------------------------------------------------------------------------------

def test_the_notifier_wakes_a_stream_from_another_thread(engine: Engine) -> None:
    notifier = inbox.notifier_for(engine)
    assert inbox.notifier_for(engine) is notifier

    async def wait_for_wake() -> int:
        listener = notifier.subscribe("ws_1", "ct_1")
        other = notifier.subscribe("ws_1", "ct_2")
        try:
            thread = threading.Thread(target=notifier.publish, args=("ws_1", "ct_1"))
            thread.start()
            await asyncio.wait_for(listener.event.wait(), 10)
            thread.join(10)
            assert not other.event.is_set()
            return notifier.listening("ws_1", "ct_1")
        finally:
            notifier.unsubscribe(listener)
            notifier.unsubscribe(other)

    assert asyncio.run(wait_for_wake()) == 1
    assert notifier.listening("ws_1", "ct_1") == 0
    assert notifier.publish("ws_1", "ct_1") == 0


# ---- tokens ---------------------------------------------------------------------------------------

KEY = b"k" * 32
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def test_a_token_opens_one_contacts_inbox_until_it_expires() -> None:
    tokens = InboxTokens(KEY)
    token = tokens.issue("ws_1", "st_1", "ct_1", NOW + timedelta(hours=1))
    access = tokens.verify(token, NOW)
    assert (access.workspace_id, access.store_id, access.contact_id) == ("ws_1", "st_1", "ct_1")
    assert access.scope == InboxScope("ws_1", "ct_1", "st_1")
    with pytest.raises(inbox.ExpiredToken):
        tokens.verify(token, NOW + timedelta(hours=1))


def test_a_tampered_or_foreign_token_is_refused() -> None:
    tokens = InboxTokens(KEY)
    token = tokens.issue("ws_1", "st_1", "ct_1", NOW + timedelta(hours=1))
    for i in range(len(token)):
        changed = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
        with pytest.raises(inbox.BadToken):
            tokens.verify(changed, NOW)
    with pytest.raises(inbox.BadToken):
        InboxTokens(b"x" * 32).verify(token, NOW)
    with pytest.raises(inbox.BadToken):   # our expired tokens are told apart only when the MAC holds
        InboxTokens(b"x" * 32).verify(token, NOW + timedelta(days=1))
    preference = ConsentLinks("https://h.example", KEY).preferences_url("ct_1", NOW).rsplit("/", 1)[1]
    with pytest.raises(inbox.BadToken):
        tokens.verify(preference, NOW)
    for junk in ("", "!!!", "a" * 1000, token + "="):
        with pytest.raises(inbox.BadToken):
            tokens.verify(junk, NOW)


def test_previous_keys_still_verify() -> None:
    token = InboxTokens(b"old-key-" * 4).issue("ws_1", "st_1", "ct_1", NOW + timedelta(hours=1))
    assert InboxTokens(KEY, previous_keys=(b"old-key-" * 4,)).verify(token, NOW).contact_id == "ct_1"

