"""Delivery receipts and incoming SMS that arrive over a provider's own connection (an SMPP bind,
channels/sms/smpp.py) rather than by HTTP callback: while a worker runs, one consumer task per
enabled provider row of such a kind, in every workspace not in sandbox mode, iterates the
provider object's `events()` and applies each item in its own transaction:
  * a DeliveryEvent through services/feedback.apply_events (limited to the row's workspace, source
    = the provider kind), so the message moves to delivered / bounced / rejected (G6);
  * an InboundMessage through services/conversations.apply_inbound (STOP suppresses the number and
    queues the reply; the worker is woken to send it).

The provider object is the one the send path uses (the container's ProviderCache, keyed by the
row's id and updated_at), so receipts arrive on the bind that sent. The rows are read again every
`rescan_seconds`: a new row starts a consumer; a disabled, deleted or changed row (a changed row
is a new provider object) has its old object closed (unbind), and its consumer stops once the
items already acknowledged to the SMSC are applied (a send still in flight on the old object is
retried by its job, maybe_sent). A consumer that ended by a bug restarts at the next scan. At
worker stop, after the jobs have drained, every object is closed the same way.

An item acknowledged by the SMSC is lost only if the process dies before it is applied, or if the
database stays unavailable through every retry (`APPLY_ATTEMPTS`, about a minute), logged."""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import structlog
from sqlalchemy import Engine, select
from sqlalchemy.exc import DBAPIError

from herald.db.tables import providers as providers_table
from herald.domain.delivery import DeliveryEvent, EventSource, InboundMessage
from herald.domain.errors import HeraldError
from herald.services import conversations, feedback, sandbox
from herald.services.providers import ProviderCache

log = structlog.get_logger("herald.provider_events")

# Provider kinds whose receipts come over their own connection (channels/registry.py gives them no
# callback parser); their provider objects are EventSources.
EVENT_STREAM_KINDS: Final = frozenset({"smpp"})
RESCAN_SECONDS: Final = 60.0
APPLY_ATTEMPTS: Final = 8          # backoff 0.5 s doubling to 30 s: about a minute of database outage
STOP_WAIT_SECONDS: Final = 30.0    # for a stopping consumer to apply what was already acknowledged


@dataclass
class _Consumer:
    row: dict[str, Any]
    source: EventSource
    task: asyncio.Task[None]


class ReceiptConsumers:
    """The consumer tasks of one worker process; `run(stop)` is the worker's background companion."""

    def __init__(self, engine: Engine, providers: ProviderCache, now: Callable[[], datetime], *,
                 rescan_seconds: float = RESCAN_SECONDS, wake: Callable[[], None] | None = None) -> None:
        self.engine = engine
        self.providers = providers
        self.now = now
        self.rescan_seconds = rescan_seconds
        self.wake = wake                     # called when an inbound message queued a reply
        self._consumers: dict[str, _Consumer] = {}
        self._closed: weakref.WeakSet[Any] = weakref.WeakSet()   # provider objects we closed
        self._reported: set[tuple[str, object]] = set()          # row versions already logged as unusable

    @property
    def provider_ids(self) -> list[str]:
        """The rows with a running consumer."""
        return sorted(pid for pid, c in self._consumers.items() if not c.task.done())

    async def run(self, stop: asyncio.Event) -> None:
        """Scan now and every `rescan_seconds` until `stop`, then stop every consumer."""
        try:
            while not stop.is_set():
                try:
                    await self.rescan()
                except Exception:  # the database is down, or a bug: keep what runs, scan again later
                    log.exception("provider event consumers: scan failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.rescan_seconds)
        finally:
            await self.stop_all()

    async def rescan(self) -> None:
        wanted: dict[str, tuple[dict[str, Any], EventSource]] = {}
        for row in await asyncio.to_thread(self._rows):
            source = self._source(row)
            if source is not None:
                wanted[row["id"]] = (row, source)
        for provider_id, consumer in list(self._consumers.items()):
            hit = wanted.get(provider_id)
            if hit is None or hit[1] is not consumer.source:
                await self._stop(provider_id)
            elif consumer.task.done():
                del self._consumers[provider_id]      # ended by a bug (logged): started again below
        for provider_id, (row, source) in wanted.items():
            if provider_id not in self._consumers:
                self._start(row, source)

    async def stop_all(self) -> None:
        await asyncio.gather(*(self._stop(provider_id) for provider_id in list(self._consumers)))

    # -- the rows and their provider objects

    def _rows(self) -> list[dict[str, Any]]:
        p = providers_table.c
        with self.engine.begin() as conn:
            rows = [dict(r) for r in conn.execute(
                select(providers_table).where(p.kind.in_(sorted(EVENT_STREAM_KINDS)), p.enabled.is_(True))
                .order_by(p.id)).mappings()]
            sandboxed = {ws for ws in {r["workspace_id"] for r in rows} if sandbox.enabled(conn, ws)}
        return [r for r in rows if r["workspace_id"] not in sandboxed]   # sandbox: real providers are never used

    def _source(self, row: dict[str, Any]) -> EventSource | None:
        try:
            provider = self.providers.provider(row)
        except Exception as exc:  # unusable settings, or secrets that no longer unseal: say so once per version
            self._report(row, f"cannot build the provider: {type(exc).__name__}: {exc}")
            return None
        if not isinstance(provider, EventSource):
            return None
        if provider in self._closed:   # the row was disabled and enabled again without changing
            self._report(row, "its provider object was closed when the row was disabled; "
                              "update the provider (a new updated_at) to rebuild it")
            return None
        return provider

    def _report(self, row: dict[str, Any], problem: str) -> None:
        version = (row["id"], row["updated_at"])
        if version not in self._reported:
            self._reported.add(version)
            log.error("provider events not consumed", provider_id=row["id"], kind=row["kind"], problem=problem)

    # -- one consumer

    def _start(self, row: dict[str, Any], source: EventSource) -> None:
        task = asyncio.create_task(self._consume(row, source), name=f"provider-events-{row['id']}")
        self._consumers[row["id"]] = _Consumer(row, source, task)
        log.info("provider events consumer started", provider_id=row["id"], kind=row["kind"])

    async def _stop(self, provider_id: str) -> None:
        """Close the provider object (unbind); its events() ends after the items already queued,
        which the consumer applies first."""
        consumer = self._consumers.pop(provider_id, None)
        if consumer is None:
            return
        self._closed.add(consumer.source)
        try:   # bounded: a provider that hangs in aclose must not hold up the scan or the worker's stop
            await asyncio.wait_for(consumer.source.aclose(), STOP_WAIT_SECONDS)
        except Exception:
            log.exception("closing the provider failed", provider_id=provider_id)
        _, pending = await asyncio.wait([consumer.task], timeout=STOP_WAIT_SECONDS)
        if pending:
            consumer.task.cancel()
            log.warning("provider events consumer cancelled before its queue was applied", provider_id=provider_id)
        await asyncio.gather(consumer.task, return_exceptions=True)
        log.info("provider events consumer stopped", provider_id=provider_id)

    async def _consume(self, row: dict[str, Any], source: EventSource) -> None:
        try:
            async for item in source.events():
                await self._apply(row, item)
        except Exception:
            log.exception("provider events consumer failed; it restarts at the next scan", provider_id=row["id"])

    async def _apply(self, row: dict[str, Any], item: DeliveryEvent | InboundMessage) -> None:
        """Apply one item in its own transaction, retrying while the database is unavailable."""
        for attempt in range(1, APPLY_ATTEMPTS + 1):
            try:
                replied = await asyncio.to_thread(self._apply_tx, row, item)
            except DBAPIError as exc:
                if attempt == APPLY_ATTEMPTS:
                    log.error("provider event lost: the database stayed unavailable", provider_id=row["id"],
                              **_described(item), error=str(exc.orig))
                    return
                log.warning("database unavailable; retrying the provider event", provider_id=row["id"],
                            attempt=attempt, error=str(exc.orig))
                await asyncio.sleep(min(0.5 * 2 ** (attempt - 1), 30.0))
                continue
            except HeraldError as exc:   # e.g. a keyword from a sender that is no phone number
                log.warning("provider event ignored", provider_id=row["id"], **_described(item),
                            problem=type(exc).__name__, fields=[f.field for f in exc.fields])
                return
            except Exception:
                log.exception("provider event could not be applied; skipped", provider_id=row["id"],
                              **_described(item))
                return
            if replied and self.wake is not None:
                self.wake()
            return

    def _apply_tx(self, row: dict[str, Any], item: DeliveryEvent | InboundMessage) -> bool:
        """True when a reply was queued."""
        now = self.now()
        with self.engine.begin() as conn:
            if isinstance(item, DeliveryEvent):
                report = feedback.apply_events(conn, [item], now=now, workspace_id=str(row["workspace_id"]),
                                               source=str(row["kind"]))
                log.debug("receipt applied", provider_id=row["id"], kind=item.kind, applied=report.applied,
                          unmatched=report.unmatched, repeated=report.repeated)
                return False
            inbound = conversations.apply_inbound(conn, row, [item], now)
            return bool(inbound.replies)


def _described(item: DeliveryEvent | InboundMessage) -> dict[str, Any]:
    """What may be logged about an item: never an address or a text."""
    if isinstance(item, DeliveryEvent):
        return {"event": item.kind, "message_id": item.message_id, "provider_message_id": item.provider_message_id}
    return {"event": "inbound", "channel": item.channel}
