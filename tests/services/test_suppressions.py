"""The suppression list (services/suppressions.py) on SQLite and PostgreSQL: tombstones, lookups
that see erased addresses, CSV import with bad rows and re-import, export round trip, removal."""

from __future__ import annotations

import io
from datetime import timedelta

import pytest
from sqlalchemy import Engine, select

from herald.bootstrap import Container, derive_key
from herald.db.tables import suppressions as table
from herald.domain.clock import ShiftedClock
from herald.domain.errors import Conflict, InvalidInput, NotFound
from herald.services import suppressions
from tests.services.support import make_shop


def listed(engine: Engine, workspace_id: str) -> list[tuple[str, str, str, str | None]]:
    s = table.c
    with engine.begin() as conn:
        return [tuple(r) for r in conn.execute(select(s.channel, s.address, s.reason, s.detail)
                                               .where(s.workspace_id == workspace_id).order_by(s.id))]


def test_tombstone_is_keyed_normalised_and_per_channel() -> None:
    key = derive_key(b"k" * 32, suppressions.TOMBSTONE_PURPOSE)
    stone = suppressions.tombstone(key, "email", " Ana@Example.COM ")
    assert stone == suppressions.tombstone(key, "email", "ana@example.com")
    assert suppressions.is_tombstone(stone) and len(stone) == 69
    assert "ana" not in stone
    assert stone != suppressions.tombstone(key, "sms", "ana@example.com")
    assert stone != suppressions.tombstone(derive_key(b"x" * 32, suppressions.TOMBSTONE_PURPOSE), "email",
                                           "ana@example.com")


def test_container_key_is_the_derived_tombstone_key(container: Container) -> None:
    assert container.tombstone_key == derive_key(container.master_key, b"suppression tombstones v1")


def test_reasons_for_finds_tombstones_only_with_the_key(container: Container, clock: ShiftedClock) -> None:
    engine, key, now = container.engine, container.tombstone_key, clock.now()
    shop = make_shop(engine, now)
    addresses = [f"user{i}@example.com" for i in range(1500)]  # more than one chunk
    with engine.begin() as conn:
        suppressions.suppress(conn, shop.workspace_id, "email", "User7@Example.com", "unsubscribed",
                              source="test", now=now)
        suppressions.suppress(conn, shop.workspace_id, "email",
                              suppressions.tombstone(key, "email", "user1200@example.com"), "erased",
                              source="erasure", now=now)
        # Both forms of one address: erased wins.
        suppressions.suppress(conn, shop.workspace_id, "email", "user3@example.com", "manual", source="t", now=now)
        suppressions.suppress(conn, shop.workspace_id, "email",
                              suppressions.tombstone(key, "email", "user3@example.com"), "erased",
                              source="erasure", now=now)
        plain = suppressions.reasons_for(conn, shop.workspace_id, "email", addresses)
        both = suppressions.reasons_for(conn, shop.workspace_id, "email", addresses, tombstone_key=key)
        other_channel = suppressions.reasons_for(conn, shop.workspace_id, "sms", ["user1200@example.com"],
                                                 tombstone_key=key)
    assert plain == {"user7@example.com": "unsubscribed", "user3@example.com": "manual"}
    assert both == {"user7@example.com": "unsubscribed", "user3@example.com": "erased",
                    "user1200@example.com": "erased"}
    assert other_channel == {}


CSV_WITH_PROBLEMS = (
    "\ufeffChannel,Address,Reason,Detail\r\n"
    "email,Ana.Souza@Example.COM,unsubscribed,asked by phone\r\n"
    ",bruno@example.com,,\r\n"  # defaults: email, manual
    "sms,+55 11 98765-4321,complaint,\r\n"
    "whatsapp,+5511987654321,,\r\n"
    "email,not an email,manual,\r\n"  # line 6
    "sms,11987654321,manual,\r\n"  # line 7: no country code
    "fax,+5511987654321,manual,\r\n"  # line 8
    "email,carla@example.com,erased,\r\n"  # line 9: reserved reason
    "email,dora@example.com,bored,\r\n"  # line 10
    "\r\n"
    "email,ANA.SOUZA@example.com,manual,\r\n"  # a repeat: the first reason stays
    "email,\"multi\r\nline@example.com\",manual,\r\n"  # lines 13-14: not an address
)


def test_import_reports_bad_rows_keeps_good_ones_and_reimport_changes_nothing(engine: Engine,
                                                                               clock: ShiftedClock) -> None:
    now = clock.now()
    shop = make_shop(engine, now)
    with engine.begin() as conn:
        report = suppressions.import_csv(conn, shop.workspace_id, io.StringIO(CSV_WITH_PROBLEMS, newline=""),
                                         source="import", now=now)
    assert (report.added, report.unchanged, report.failed) == (4, 1, 6)
    assert [e.line for e in report.errors] == [6, 7, 8, 9, 10, 13]
    reasons = {e.line: e.reason for e in report.errors}
    assert "country code" in reasons[7]
    assert "fax" in reasons[8] and "email, sms, whatsapp" in reasons[8]
    assert "erased" in reasons[9] and "bored" in reasons[10]
    assert listed(engine, shop.workspace_id) == [
        ("email", "ana.souza@example.com", "unsubscribed", "asked by phone"),
        ("email", "bruno@example.com", "manual", None),
        ("sms", "+5511987654321", "complaint", None),
        ("whatsapp", "+5511987654321", "manual", None),
    ]
    clock.advance(timedelta(minutes=5))
    with engine.begin() as conn:
        again = suppressions.import_csv(conn, shop.workspace_id, io.StringIO(CSV_WITH_PROBLEMS, newline=""),
                                        default_reason="unsubscribed", source="import", now=clock.now())
    assert (again.added, again.unchanged, again.failed) == (0, 5, 6)
    assert len(listed(engine, shop.workspace_id)) == 4


@pytest.mark.parametrize(("text", "problem"), [
    ("", "is empty"),
    ("channel,reason\nemail,manual\n", "no `address` column"),
    ("address,emial\nx@example.com,y\n", "unknown column(s) 'emial'"),
])
def test_import_refuses_a_file_without_a_usable_header(engine: Engine, clock: ShiftedClock, text: str,
                                                       problem: str) -> None:
    shop = make_shop(engine, clock.now())
    with engine.begin() as conn, pytest.raises(InvalidInput) as caught:
        suppressions.import_csv(conn, shop.workspace_id, io.StringIO(text), now=clock.now())
    assert problem in caught.value.detail


def test_import_refuses_an_unknown_default_reason(engine: Engine, clock: ShiftedClock) -> None:
    shop = make_shop(engine, clock.now())
    with engine.begin() as conn, pytest.raises(InvalidInput) as caught:
        suppressions.import_csv(conn, shop.workspace_id, io.StringIO("address\nx@example.com\n"),
                                default_reason="erased", now=clock.now())
    assert caught.value.fields[0].field == "reason"


def test_export_round_trips_through_import_with_formula_cells(container: Container, clock: ShiftedClock) -> None:
    engine, key, now = container.engine, container.tombstone_key, clock.now()
    shop = make_shop(engine, now)
    other = make_shop(engine, now, slug="other")
    with engine.begin() as conn:
        suppressions.suppress(conn, shop.workspace_id, "email", "=cmd@example.com", "complaint", source="feedback",
                              now=now, detail="=HYPERLINK(\"http://x\")")
        suppressions.suppress(conn, shop.workspace_id, "sms", "+14155550111", "unsubscribed", source="sms", now=now)
        suppressions.suppress(conn, shop.workspace_id, "email",
                              suppressions.tombstone(key, "email", "gone@example.com"), "erased",
                              source="erasure", now=now)
        for i in range(7):
            suppressions.suppress(conn, shop.workspace_id, "email", f"u{i}@example.com", "hard_bounce",
                                  source="smtp", now=now, detail=f"550 5.1.1 line, \"quoted\" {i}")
        rows = list(suppressions.export_rows(conn, shop.workspace_id, batch=3))  # several keyset pages
        text = "".join(suppressions.csv_lines(rows))
    assert len(rows) == 10 and [r["id"] for r in rows] == sorted(r["id"] for r in rows)
    assert text.startswith("channel,address,reason,source,created_at,detail\r\n")
    assert "'=cmd@example.com" in text and "'=HYPERLINK" in text and ",+14155550111," in text
    with engine.begin() as conn:
        report = suppressions.import_csv(conn, other.workspace_id, io.StringIO(text, newline=""), now=now,
                                         tombstone_key=key)
        again = suppressions.import_csv(conn, shop.workspace_id, io.StringIO(text, newline=""), now=now,
                                        tombstone_key=key)
    assert (report.added, report.failed) == (10, 0)
    assert (again.added, again.unchanged, again.failed) == (0, 10, 0)
    assert listed(engine, other.workspace_id) == listed(engine, shop.workspace_id)
    with engine.begin() as conn:
        sms_rows = list(suppressions.export_rows(conn, shop.workspace_id, "sms"))
    assert [r["address"] for r in sms_rows] == ["+14155550111"]


def test_an_erased_address_is_neither_re_added_nor_removed(container: Container, clock: ShiftedClock) -> None:
    engine, key, now = container.engine, container.tombstone_key, clock.now()
    shop = make_shop(engine, now)
    ws = shop.workspace_id
    stone = suppressions.tombstone(key, "email", "gone@example.com")
    with engine.begin() as conn:
        suppressions.suppress(conn, ws, "email", stone, "erased", source="erasure", now=now)
        suppressions.suppress(conn, ws, "email", "kept@example.com", "manual", source="t", now=now)
        added = suppressions.add_many(conn, ws, [suppressions.clean_entry("email", "Gone@example.com", None, None)],
                                      source="api", now=now, tombstone_key=key)
    assert added == (0, 1)
    assert all(address != "gone@example.com" for _c, address, _r, _d in listed(engine, ws))
    for address in ("gone@example.com", stone):
        with engine.begin() as conn, pytest.raises(Conflict):
            suppressions.unsuppress(conn, ws, "email", address, tombstone_key=key)
    with engine.begin() as conn, pytest.raises(NotFound):
        suppressions.unsuppress(conn, ws, "email", "never@example.com", tombstone_key=key)
    with engine.begin() as conn:
        removed = suppressions.unsuppress(conn, ws, "email", " Kept@Example.com ", tombstone_key=key)
    assert removed["address"] == "kept@example.com"
    assert [r[1] for r in listed(engine, ws)] == [stone]


def test_list_page_filters_and_finds_an_erased_address(container: Container, clock: ShiftedClock) -> None:
    engine, key, now = container.engine, container.tombstone_key, clock.now()
    shop = make_shop(engine, now)
    ws = shop.workspace_id
    with engine.begin() as conn:
        for i in range(5):
            suppressions.suppress(conn, ws, "email", f"u{i}@example.com", "manual" if i % 2 else "unsubscribed",
                                  source="t", now=now)
        suppressions.suppress(conn, ws, "sms", suppressions.tombstone(key, "sms", "+14155550111"), "erased",
                              source="erasure", now=now)
        first = suppressions.list_page(conn, ws, limit=2, cursor=None)
        second = suppressions.list_page(conn, ws, limit=2, cursor=first.next_cursor)
        manual = suppressions.list_page(conn, ws, limit=50, cursor=None, reason="manual")
        erased = suppressions.list_page(conn, ws, limit=50, cursor=None, address="+14155550111", tombstone_key=key)
    assert [r["address"] for r in first.items + second.items] == [f"u{i}@example.com" for i in range(4)]
    assert [r["address"] for r in manual.items] == ["u1@example.com", "u3@example.com"]
    assert [(r["channel"], r["reason"]) for r in erased.items] == [("sms", "erased")]
