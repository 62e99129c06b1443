"""Retention (services/retention.py) on SQLite and PostgreSQL: settings validated and stored
beside other settings keys; each kind deletes only what is past its limit, in small batches; the
per-workspace periodic run commits as it goes and stops when asked."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, func, insert, select, update

from herald.db.tables import (
    checkouts,
    events,
    import_errors,
    imports,
    message_events,
    messages,
    webhook_deliveries,
    workspaces,
)
from herald.domain.clock import ShiftedClock
from herald.domain.errors import InvalidInput, NotFound
from herald.domain.ids import new_id
from herald.services import retention
from tests.services.support import Shop, make_shop

DAY = timedelta(days=1)


def ids(conn: Connection, table: Any) -> set[Any]:
    return set(conn.execute(select(table.c.id)).scalars())


def add_event(conn: Connection, shop: Shop, at: datetime) -> str:
    event_id = new_id("evt")
    conn.execute(insert(events).values(id=event_id, workspace_id=shop.workspace_id, name="x", source="api",
                                       properties={}, occurred_at=at, received_at=at))
    return event_id


def add_message(conn: Connection, shop: Shop, at: datetime, status: str = "delivered",
                events_at: tuple[datetime, ...] = ()) -> str:
    message_id = new_id("msg")
    conn.execute(insert(messages).values(id=message_id, workspace_id=shop.workspace_id, channel="email",
                                         purpose="marketing", to_address="x@example.com", status=status,
                                         created_at=at, updated_at=at))
    for when in events_at:
        conn.execute(insert(message_events).values(workspace_id=shop.workspace_id, message_id=message_id,
                                                   status="delivered", detail={}, occurred_at=when, recorded_at=when))
    return message_id


def add_delivery(conn: Connection, shop: Shop, at: datetime, status: str) -> str:
    delivery_id = new_id("whd")
    conn.execute(insert(webhook_deliveries).values(
        id=delivery_id, workspace_id=shop.workspace_id, store_id=shop.store.id, platform="shopify", topic="t",
        dedupe_key=delivery_id, headers={}, body=b"{}", status=status, received_at=at))
    return delivery_id


def add_checkout(conn: Connection, shop: Shop, at: datetime, completed: bool) -> str:
    checkout_id = new_id("chk")
    conn.execute(insert(checkouts).values(
        id=checkout_id, workspace_id=shop.workspace_id, store_id=shop.store.id, external_id=checkout_id,
        currency="USD", started_at=at, completed_at=at + DAY if completed else None, created_at=at, updated_at=at))
    return checkout_id


def add_import(conn: Connection, shop: Shop, at: datetime, state: str, path: Path, owned: bool,
               errors: int = 0) -> str:
    import_id = new_id("imp")
    path.write_text("email\nx@example.com\n")
    conn.execute(insert(imports).values(
        id=import_id, workspace_id=shop.workspace_id, store_id=shop.store.id, kind="contacts", source_name="x.csv",
        path=str(path), sha256="0" * 64, size_bytes=1, state=state, options={"owned_file": owned} if owned else {},
        created_at=at, updated_at=at, finished_at=at if state == "completed" else None))
    if errors:
        conn.execute(insert(import_errors), [{"import_id": import_id, "line": i + 2, "reason": "bad"}
                                             for i in range(errors)])
    return import_id


def test_settings_are_validated_and_only_their_key_is_written(engine: Engine, clock: ShiftedClock) -> None:
    shop = make_shop(engine, clock.now())
    ws = shop.workspace_id
    with engine.begin() as conn:
        conn.execute(update(workspaces).where(workspaces.c.id == ws).values(
            settings={"policy": {"quiet_hours": True}, "retention_days": {"events": 10}}))
        assert retention.get_settings(conn, ws)["retention_days"] == {**retention.DEFAULTS, "events": 10}
        saved = retention.set_settings(conn, ws, {"messages": 90, "imports": 7})
        stored = conn.execute(select(workspaces.c.settings).where(workspaces.c.id == ws)).scalar_one()
    assert saved["retention_days"] == {**retention.DEFAULTS, "messages": 90, "imports": 7}
    assert saved["overrides"] == {"messages": 90, "imports": 7} and saved["defaults"] == dict(retention.DEFAULTS)
    assert stored == {"policy": {"quiet_hours": True}, "retention_days": {"messages": 90, "imports": 7}}
    with engine.begin() as conn, pytest.raises(InvalidInput) as caught:
        retention.set_settings(conn, ws, {"events": 0, "orders": 5, "messages": "30", "imports": True})
    assert sorted(p.field for p in caught.value.fields) == [
        "retention_days.events", "retention_days.imports", "retention_days.messages", "retention_days.orders"]
    assert "unknown kind" in caught.value.detail and "1 to 36500" in caught.value.detail
    for bad in ([1], "30", None):
        with engine.begin() as conn, pytest.raises(InvalidInput):
            retention.set_settings(conn, ws, bad)
    with engine.begin() as conn, pytest.raises(NotFound):
        retention.get_settings(conn, "ws_nope")


def test_apply_deletes_only_what_is_past_its_limit(engine: Engine, clock: ShiftedClock, tmp_path: Path) -> None:
    now = clock.now()
    shop = make_shop(engine, now)
    other = make_shop(engine, now, slug="other")  # another workspace: never touched
    old, recent = now - 40 * DAY, now - 20 * DAY
    with engine.begin() as conn:
        old_events = {add_event(conn, shop, old - i * DAY) for i in range(5)}
        kept_events = {add_event(conn, shop, recent), add_event(conn, other, old)}
        old_messages = {add_message(conn, shop, old, events_at=(old, old)) for _ in range(3)}
        kept_messages = {add_message(conn, shop, old, status="queued"), add_message(conn, other, old),
                         add_message(conn, shop, recent, events_at=(old, recent))}
        old_deliveries = {add_delivery(conn, shop, old, s) for s in ("processed", "failed", "unknown_topic")}
        kept_deliveries = {add_delivery(conn, shop, old, "received"), add_delivery(conn, shop, recent, "processed")}
        old_checkouts = {add_checkout(conn, shop, old, completed=False) for _ in range(3)}
        kept_checkouts = {add_checkout(conn, shop, old, completed=True), add_checkout(conn, shop, recent, False)}
        owned, given = tmp_path / "uploaded.csv", tmp_path / "operators-own.csv"
        old_imports = {add_import(conn, shop, old, "completed", owned, owned=True, errors=7),
                       add_import(conn, shop, old, "failed", given, owned=False, errors=1)}
        kept_imports = {add_import(conn, shop, old, "running", tmp_path / "running.csv", owned=True, errors=2),
                        add_import(conn, shop, recent, "completed", tmp_path / "new.csv", owned=True)}
        limits = {"events": 30, "messages": 30, "message_events": 30, "webhook_deliveries": 30,
                  "checkouts_abandoned": 30, "imports": 30}
        deleted = retention.apply(conn, shop.workspace_id, limits, now, batch=2)  # several batches per kind
        again = retention.apply(conn, shop.workspace_id, limits, now, batch=2)
        assert ids(conn, events) == kept_events and ids(conn, messages) == kept_messages
        assert ids(conn, webhook_deliveries) == kept_deliveries and ids(conn, checkouts) == kept_checkouts
        assert ids(conn, imports) == kept_imports
        left_events = conn.execute(select(message_events.c.recorded_at)).scalars().all()
        left_errors = conn.execute(select(import_errors.c.import_id)).scalars().all()
    assert deleted == {"events": 5, "messages": 3, "message_events": 1, "webhook_deliveries": 3,
                       "checkouts_abandoned": 3, "imports": 2}
    assert set(again.values()) == {0}
    assert old_events.isdisjoint(kept_events) and old_messages and old_deliveries and old_checkouts and old_imports
    assert [t.date() for t in left_events] == [recent.date()]  # the recent message's old event aged out
    assert set(left_errors) <= kept_imports and len(left_errors) == 2
    assert not owned.exists() and given.exists()  # Herald's upload removed, never the operator's own file
    assert (tmp_path / "running.csv").exists() and (tmp_path / "new.csv").exists()


def test_default_limits_keep_recent_data(engine: Engine, clock: ShiftedClock) -> None:
    now = clock.now()
    shop = make_shop(engine, now)
    with engine.begin() as conn:
        add_event(conn, shop, now - 700 * DAY)
        gone = add_event(conn, shop, now - 731 * DAY)
        add_checkout(conn, shop, now - 170 * DAY, completed=False)
        add_delivery(conn, shop, now - 29 * DAY, "processed")
        deleted = retention.apply(conn, shop.workspace_id, {}, now)
        assert gone not in ids(conn, events)
    assert deleted == {**dict.fromkeys(retention.DEFAULTS, 0), "events": 1}


def test_run_all_applies_each_workspace_its_own_limits(engine: Engine, clock: ShiftedClock) -> None:
    now = clock.now()
    strict, lenient = make_shop(engine, now), make_shop(engine, now, slug="lenient")
    with engine.begin() as conn:
        retention.set_settings(conn, strict.workspace_id, {"events": 5})
        for shop in (strict, lenient):
            for age in (3, 10, 20):
                add_event(conn, shop, now - age * DAY)
    stops = iter([False, True])
    totals, finished = retention.run_all(engine, now, batch=1, should_stop=lambda: next(stops, True))
    assert not finished and totals["events"] == 1  # stopped after one committed batch
    totals, finished = retention.run_all(engine, now, batch=1)
    assert finished and totals["events"] == 1
    with engine.begin() as conn:
        per_workspace = dict(conn.execute(select(events.c.workspace_id, func.count())
                                          .group_by(events.c.workspace_id)).all())
    assert per_workspace == {strict.workspace_id: 1, lenient.workspace_id: 3}
