"""Mail arriving at `herald inbound-smtp`: bounces to `bounce+<message id>@` (VERP, so a bounce
finds its message even when the report does not quote it), complaint reports (ARF) and mailto
unsubscribes to `unsubscribe+<token>@` (RFC 2369 List-Unsubscribe). Applied in one transaction
per message, committed before the SMTP 250."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import Engine

from herald.domain.delivery import ChannelAdapters, DeliveryEvent
from herald.pipeline.tracking import BadToken, TrackingLinks
from herald.services import feedback


@dataclasses.dataclass
class InboundResult:
    events: int = 0
    applied: int = 0
    unsubscribed: int = 0


def handle(engine: Engine, adapters: ChannelAdapters, links: TrackingLinks, recipients: Sequence[str], raw: bytes,
           now: datetime) -> InboundResult:
    result = InboundResult()
    events: list[DeliveryEvent] = []
    unsubscribes: list[str] = []
    verp_id = None
    for rcpt in recipients:
        local = rcpt.rpartition("@")[0]
        tag = local.partition("+")[2]
        if local.lower().startswith("unsubscribe+"):
            try:
                unsubscribes.append(links.verify(tag, kind="unsubscribe").message_id)
            except BadToken:
                continue  # a forged or mangled address, or another kind of token: nothing to do or reveal
        elif local.lower().startswith("bounce+") and tag:
            verp_id = tag
    if verp_id is not None or not unsubscribes:
        events = adapters.parse_report(raw)
        if verp_id is not None:  # the envelope names our message: trust it over what the report quotes
            events = [dataclasses.replace(e, message_id=verp_id) for e in events]
    with engine.begin() as conn:
        report = feedback.apply_events(conn, events, now=now, source="inbound-smtp")
        for message_id in unsubscribes:
            result.unsubscribed += feedback.unsubscribe(conn, message_id, source="mailto", now=now)
    result.events = len(events)
    result.applied = report.applied
    return result
