"""Feedback: what providers, bounce reports and recipients tell us about sent messages, applied
to the messages, their history and the suppression list.

Every `DeliveryEvent` (domain/delivery.py) — from an ESP webhook, a DSN or ARF report at the
inbound SMTP listener, a tracking link — goes through `apply_events` in the caller's transaction:
  * the message is found by our id, else by (provider, provider's id);
  * its history gets the event (a repeat of a status event already recorded is skipped);
  * its status moves only forward (domain/messages.py, G6);
  * a permanent bounce suppresses the address (hard_bounce), a complaint suppresses it
    (complaint), an unsubscribe suppresses it and withdraws the contact's marketing consent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Row, exists, select, update

from herald.db.tables import message_events, messages
from herald.domain.delivery import DeliveryEvent, FailureReason
from herald.domain.messages import status_for_event
from herald.services import consent, suppressions

STATUS_EVENTS = frozenset({"sent", "delivered", "bounced", "rejected", "complained", "deferred"})


@dataclass
class FeedbackReport:
    applied: int = 0
    unmatched: int = 0
    repeated: int = 0


def apply_events(conn: Connection, events: Sequence[DeliveryEvent], *, now: datetime,
                 workspace_id: str | None = None, source: str) -> FeedbackReport:
    """Apply the events; `workspace_id` limits the match to one workspace (a provider's webhook
    belongs to one), None for the inbound SMTP listener (our ids are global)."""
    report = FeedbackReport()
    for event in events:
        message = _find(conn, event, workspace_id)
        if message is None:
            report.unmatched += 1
            continue
        if not _record(conn, message, event, now):
            report.repeated += 1
            continue
        report.applied += 1
        _consequence(conn, message, event, now=now, source=source)
    return report


def _find(conn: Connection, event: DeliveryEvent, workspace_id: str | None) -> Any:
    """The message's row (id, workspace, store, contact, channel, purpose, address, status, ...) or None."""
    m = messages.c
    cols = (m.id, m.workspace_id, m.store_id, m.contact_id, m.channel, m.purpose, m.to_address, m.status,
            m.opened_at, m.clicked_at)
    if event.message_id:
        query = select(*cols).where(m.id == event.message_id)
    elif event.provider_message_id:
        query = select(*cols).where(m.provider == event.provider, m.provider_message_id == event.provider_message_id)
    else:
        return None
    if workspace_id is not None:
        query = query.where(m.workspace_id == workspace_id)
    return conn.execute(query).first()


def _record(conn: Connection, message: Row[Any], event: DeliveryEvent, now: datetime) -> bool:
    """Write the event to the message's history and move its status; False for a repeat."""
    e = message_events.c
    if event.kind in STATUS_EVENTS:  # a status is recorded once, whenever it arrives again
        repeat = exists().where(e.message_id == message.id, e.status == event.kind)
    elif event.provider != "herald" and event.occurred_at is not None:  # a provider's replayed open/click
        repeat = exists().where(e.message_id == message.id, e.status == event.kind, e.occurred_at == event.occurred_at)
    else:
        repeat = None
    if repeat is not None and conn.execute(select(repeat)).scalar():
        return False
    occurred = event.occurred_at or now
    conn.execute(message_events.insert().values(
        workspace_id=message.workspace_id, message_id=message.id, status=event.kind,
        reason=event.reason.value if event.reason else None, detail=_detail(event),
        occurred_at=occurred, recorded_at=now))
    changes: dict[str, Any] = {}
    new_status = status_for_event(message.status, event.kind, event.permanent)
    if new_status is not None:
        changes["status"] = new_status
        if event.reason is not None:
            changes["status_reason"] = event.reason.value
    if event.kind == "opened" and message.opened_at is None:
        changes["opened_at"] = occurred
    if event.kind == "clicked":
        if message.clicked_at is None:
            changes["clicked_at"] = occurred
        if message.opened_at is None:  # a click proves an open (images may be blocked)
            changes["opened_at"] = occurred
    if changes:
        changes["updated_at"] = now
        conn.execute(update(messages).where(messages.c.id == message.id).values(**changes))
    return True


def _detail(event: DeliveryEvent) -> dict[str, Any]:
    detail: dict[str, Any] = {"provider": event.provider}
    for name in ("status", "reply_code", "provider_code", "permanent", "url", "provider_message_id"):
        value = getattr(event, name)
        if value is not None:
            detail[name] = value
    if event.detail:
        detail["diagnostic"] = event.detail[:1000]
    return detail


def _consequence(conn: Connection, message: Row[Any], event: DeliveryEvent, *, now: datetime, source: str) -> None:
    """Suppress the address (and withdraw consent) when the event says so."""
    reason: str | None = None
    if event.kind == "bounced" and event.permanent and event.reason in _HARD_BOUNCE:
        reason = "hard_bounce"
    elif event.kind == "complained":
        reason = "complaint"
    elif event.kind == "unsubscribed":
        reason = "unsubscribed"
        withdraw_marketing(conn, message, source=source, now=now)
    if reason is None:
        return
    # The matched message's recipient, never the address the report names: complaint reports often
    # rewrite it, and an unauthenticated report must not be able to suppress an arbitrary address.
    suppressions.suppress(conn, message.workspace_id, message.channel, message.to_address, reason, source=source,
                          now=now, message_id=message.id, detail=event.detail or None)


# A permanent bounce for these reasons says the address itself is bad; a permanent "blocked" or
# "policy" bounce says the sender or the content was refused, so the address stays usable.
# A full mailbox is treated as soft even when reported permanent (it usually recovers).
_HARD_BOUNCE = frozenset({FailureReason.INVALID_ADDRESS, FailureReason.HOST_UNKNOWN, FailureReason.UNKNOWN, None})


def withdraw_marketing(conn: Connection, message: Row[Any], *, source: str, now: datetime) -> None:
    if message.contact_id is None:
        return
    consent.record_many(conn, message.workspace_id, [consent.ConsentChange(
        contact_id=message.contact_id, store_id=message.store_id, channel=message.channel, purpose="marketing",
        state="withdrawn", source=source, recorded_at=now)])


def unsubscribe(conn: Connection, message_id: str, *, source: str, now: datetime) -> bool:
    """The recipient of this message unsubscribed (one-click POST, hosted page, mailto):
    effective at once. False if the message is unknown."""
    event = DeliveryEvent(kind="unsubscribed", provider="herald", occurred_at=now, message_id=message_id)
    return apply_events(conn, [event], now=now, source=source).unmatched == 0
