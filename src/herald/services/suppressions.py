"""The suppression list: addresses a message may not go to. A hard bounce, a complaint, an
unsubscribe or an erasure adds the address; marketing email is refused for any suppressed
address, transactional email only for addresses that cannot or must not receive mail
(hard bounce, complaint, invalid, erased). Issue 5 extends this with import/export."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Final

from sqlalchemy import Connection, select

from herald.db.bulk import insert_many
from herald.db.tables import suppressions

REASONS: Final = ("unsubscribed", "hard_bounce", "complaint", "invalid", "erased", "manual")
# Reasons that also block transactional messages: the address cannot or must not receive mail.
BLOCKS_TRANSACTIONAL: Final = frozenset({"hard_bounce", "complaint", "invalid", "erased"})


def normalise(channel: str, address: str) -> str:
    return address.strip().lower() if channel == "email" else address.strip()


def suppress(conn: Connection, workspace_id: str, channel: str, address: str, reason: str, *, source: str,
             now: datetime, message_id: str | None = None, detail: str | None = None) -> bool:
    """Add the address (idempotent: the first reason stays). True if it was added now."""
    if reason not in REASONS:
        raise ValueError(f"suppression reason {reason!r} is not one of {', '.join(REASONS)}")
    row = {"workspace_id": workspace_id, "channel": channel, "address": normalise(channel, address),
           "reason": reason, "source": source[:64], "message_id": message_id,
           "detail": detail[:2000] if detail else None, "created_at": now}
    return insert_many(conn, suppressions, [row], ignore_conflicts=True) != 0


def reasons_for(conn: Connection, workspace_id: str, channel: str, addresses: Iterable[str]) -> dict[str, str]:
    """address (normalised) -> suppression reason, for the suppressed ones among `addresses`."""
    wanted = sorted({normalise(channel, a) for a in addresses})
    found: dict[str, str] = {}
    s = suppressions.c
    for start in range(0, len(wanted), 1000):
        chunk = wanted[start:start + 1000]
        query = select(s.address, s.reason).where(s.workspace_id == workspace_id, s.channel == channel,
                                                    s.address.in_(chunk))
        found.update({r.address: r.reason for r in conn.execute(query)})
    return found


def refusal(reason: str | None, purpose: str) -> str | None:
    """The refusal code for a send of `purpose` to an address with this suppression, or None."""
    if reason is None:
        return None
    if purpose == "marketing" or reason in BLOCKS_TRANSACTIONAL:
        return f"suppressed:{reason}"
    return None
