"""Messages contacts send us (SMS, WhatsApp), parsed from a provider's verified webhook:
  * an SMS keyword (STOP / HELP / START, services/keywords.py) is acted on first (STOP suppresses
    the number and withdraws SMS marketing consent) and its reply is then queued as a transactional
    SMS to the sender, in the same transaction;
  * a WhatsApp message opens the contact's 24-hour window (contacts.whatsapp_inbound_at), the
    window the policy checks before any free-form WhatsApp message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from herald.domain.delivery import InboundMessage
from herald.services import keywords, messaging


@dataclass
class InboundReport:
    received: int = 0
    keywords: list[str] = field(default_factory=list)  # the keyword kinds acted on
    replies: list[str] = field(default_factory=list)   # message ids of the queued replies


def apply_inbound(conn: Connection, provider_row: Mapping[str, Any], inbound: Sequence[InboundMessage],
                  now: datetime) -> InboundReport:
    report = InboundReport()
    workspace_id = str(provider_row["workspace_id"])
    for message in inbound:
        report.received += 1
        at = message.received_at or now
        if message.channel == "whatsapp":
            keywords.record_inbound(conn, workspace_id, "whatsapp", message.sender, at)
            continue
        if message.channel != "sms":
            continue
        result = keywords.handle_inbound_sms(conn, workspace_id, message.sender, message.text, now)
        if result.kind is None or not result.reply_text:
            continue
        report.keywords.append(result.kind.value)
        report.replies.append(messaging.queue_text(
            conn, workspace_id=workspace_id, channel="sms", to=message.sender, text=result.reply_text, now=now,
            store_id=None, contact_id=result.contact_id))
    return report
