"""Backfill and reconcile: pull a store's customers, then its orders, page by page through the
platform's API (domain/connectors.StoreApi) and write them like webhook deliveries
(services/commerce.py), so a sync after webhooks were missed repairs what is missing and
changes nothing that is already right.

Resumable: each page is written in one transaction together with the cursor of the next page
(stores.sync_state), so an interrupted sync continues where it stopped. Rate limits: the API
client raises RateLimited(retry_after); we wait that long (bounded) and ask again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, update

from herald.db.tables import stores
from herald.domain.clock import Clock
from herald.domain.commerce import StoreInfo
from herald.domain.connectors import RateLimited, Resource, StoreApi, StoreApiError
from herald.services import commerce

RESOURCES: tuple[Resource, ...] = ("customers", "orders")
MAX_RATE_LIMIT_WAITS = 50  # per page; a store that keeps answering 429 makes the sync fail
MAX_WAIT_SECONDS = 120.0


@dataclass
class SyncReport:
    pages: dict[str, int] = field(default_factory=dict)
    objects: dict[str, int] = field(default_factory=dict)
    written: int = 0  # objects (contacts, orders, consents...) created or changed
    unchanged: int = 0
    waits: int = 0  # rate-limit pauses honoured
    problems: list[str] = field(default_factory=list)


Progress = Callable[[str, int, int], None]  # (resource, pages so far, objects so far)
Sleep = Callable[[float], Awaitable[None]]


async def sync_store(engine: Engine, clock: Clock, store: StoreInfo, api: StoreApi, *,
                     resources: Sequence[Resource] = RESOURCES, progress: Progress | None = None,
                     sleep: Sleep = asyncio.sleep) -> SyncReport:
    report = SyncReport()
    for resource in resources:
        cursor = await asyncio.to_thread(_saved_cursor, engine, store.id, resource)
        report.pages[resource] = report.objects[resource] = 0
        while True:
            page = await _fetch(api, resource, cursor, report, sleep)
            await asyncio.to_thread(_write_page, engine, clock, store, resource, page.objects, page.next_cursor,
                                    report)
            report.pages[resource] += 1
            report.objects[resource] += len(page.objects)
            if progress:
                progress(resource, report.pages[resource], report.objects[resource])
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
    return report


async def _fetch(api: StoreApi, resource: Resource, cursor: str | None, report: SyncReport, sleep: Sleep) -> Any:
    for _ in range(MAX_RATE_LIMIT_WAITS):
        try:
            return await api.page(resource, cursor)
        except RateLimited as exc:
            report.waits += 1
            await sleep(min(max(exc.retry_after, 0.0), MAX_WAIT_SECONDS))
    raise StoreApiError(f"the store kept answering 429 (rate limited) for {resource}; try the sync again later")


def _saved_cursor(engine: Engine, store_id: str, resource: str) -> str | None:
    with engine.begin() as conn:
        state = conn.execute(select(stores.c.sync_state).where(stores.c.id == store_id)).scalar_one() or {}
    cursor = (state.get(resource) or {}).get("cursor")
    return cursor if isinstance(cursor, str) else None


def _write_page(engine: Engine, clock: Clock, store: StoreInfo, resource: str, objects: list[Any],
                next_cursor: str | None, report: SyncReport) -> None:
    """One page and the cursor after it, atomically: a crash repeats at most this page."""
    now = clock.now()
    with engine.begin() as conn:
        result = commerce.apply(conn, store, objects, now, source=store.platform)
        state = dict(conn.execute(select(stores.c.sync_state).where(stores.c.id == store.id)).scalar_one() or {})
        state[resource] = {**(state.get(resource) or {}), **_resource_state(next_cursor, now)}
        conn.execute(update(stores).where(stores.c.id == store.id).values(sync_state=state))
    report.written += result.written + result.consents
    report.unchanged += result.unchanged
    report.problems.extend(result.problems)


def _resource_state(next_cursor: str | None, now: datetime) -> dict[str, Any]:
    if next_cursor is None:
        return {"cursor": None, "last_synced_at": now.isoformat()}
    return {"cursor": next_cursor, "started_at": now.isoformat()}
