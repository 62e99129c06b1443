"""Consent ledger writes: append-only consent_records, one row per change of state.

The current state of a (contact, channel, purpose, store) is its latest row, ordered by
(recorded_at, id). record_many reads those latest rows for a whole batch in one query per chunk
(a window function, on SQLite and PostgreSQL alike) and appends a row only where the state
changes, so replaying the same input (a webhook delivered twice, an import run again) appends
nothing (a repeated state is appended only when a newer record of another store scope, e.g. a
workspace-wide withdrawal, stands between: see _newest_per_scope). A change recorded at or before
the latest row's time is stale and skipped: deliveries arrive out of order, and an older
statement never overrides a newer one.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Connection, func, select

from herald.db.bulk import insert_many
from herald.db.tables import consent_records

CHANNELS = ("email", "sms", "whatsapp", "push")
PURPOSES = ("marketing", "transactional")
STATES = ("granted", "withdrawn", "pending")
CHUNK = 2000

Key = tuple[str, str, str, str | None]  # (contact, channel, purpose, store)


@dataclass(frozen=True, slots=True)
class ConsentChange:
    contact_id: str
    store_id: str | None
    channel: str  # email | sms | whatsapp | push
    purpose: str  # marketing | transactional
    state: str  # granted | withdrawn | pending
    source: str  # e.g. "shopify", "csv:imp_…", "segment"
    recorded_at: datetime
    wording_version: str | None = None
    ip: str | None = None
    user_agent: str | None = None

    @property
    def key(self) -> Key:
        return (self.contact_id, self.channel, self.purpose, self.store_id)


def record_many(conn: Connection, workspace_id: str, changes: Sequence[ConsentChange], *,
                new_contacts: Collection[str] = ()) -> int:
    """Append the changes that change a state; returns how many rows were appended.

    `new_contacts`: contacts created in this transaction (identity.Resolved.created). They have
    no consent records yet, so their latest states are not read (an import's first run creates
    nearly every contact it touches)."""
    for i, change in enumerate(changes):
        _check(i, change)
    if not changes:
        return 0
    latest = _latest(conn, sorted({c.contact_id for c in changes if c.contact_id not in new_contacts}))
    newest = _newest_per_scope(latest)
    rows = []
    for change in changes:
        current = latest.get(change.key)
        scope = change.key[:3]
        if current is not None and (change.recorded_at <= current[0]
                                    or (current[1] == change.state and current[0] >= newest[scope])):
            continue
        latest[change.key] = (change.recorded_at, change.state)
        newest[scope] = max(newest.get(scope, change.recorded_at), change.recorded_at)
        rows.append({"workspace_id": workspace_id, "contact_id": change.contact_id, "store_id": change.store_id,
                     "channel": change.channel, "purpose": change.purpose, "state": change.state,
                     "source": change.source[:64], "wording_version": change.wording_version,
                     "ip": change.ip, "user_agent": (change.user_agent or None) and change.user_agent[:512],
                     "recorded_at": change.recorded_at})
    if rows:
        insert_many(conn, consent_records, rows)
    return len(rows)


def _newest_per_scope(latest: dict[Key, tuple[datetime, str]]) -> dict[tuple[str, str, str], datetime]:
    """The newest record time per (contact, channel, purpose) over every store and the
    workspace-wide key. A change that repeats its key's state is skipped only when that key holds
    the newest record: a store's re-grant after a newer workspace-wide withdrawal (or the reverse)
    changes what applies (domain/policy.consent_state), so it is recorded."""
    newest: dict[tuple[str, str, str], datetime] = {}
    for key, (at, _state) in latest.items():
        scope = key[:3]
        if scope not in newest or at > newest[scope]:
            newest[scope] = at
    return newest


def _check(i: int, change: ConsentChange) -> None:
    for name, value, allowed in (("channel", change.channel, CHANNELS), ("purpose", change.purpose, PURPOSES),
                                 ("state", change.state, STATES)):
        if value not in allowed:
            raise ValueError(f"consent change {i}: {name} {value!r} is not one of {', '.join(allowed)}")
    if change.recorded_at.tzinfo is None:
        raise ValueError(f"consent change {i}: recorded_at must be an aware (UTC) datetime")


def _latest(conn: Connection, contact_ids: list[str]) -> dict[Key, tuple[datetime, str]]:
    """The latest (recorded_at, state) per key of these contacts."""
    c = consent_records.c
    found: dict[Key, tuple[datetime, str]] = {}
    for start in range(0, len(contact_ids), CHUNK):
        rank = func.row_number().over(partition_by=(c.contact_id, c.channel, c.purpose, c.store_id),
                                      order_by=(c.recorded_at.desc(), c.id.desc())).label("rank")
        ranked = (select(c.contact_id, c.channel, c.purpose, c.store_id, c.state, c.recorded_at, rank)
                  .where(c.contact_id.in_(contact_ids[start:start + CHUNK])).subquery())
        for r in conn.execute(select(ranked).where(ranked.c.rank == 1)):
            found[(r.contact_id, r.channel, r.purpose, r.store_id)] = (r.recorded_at, r.state)
    return found


def current_states(conn: Connection, contact_ids: Sequence[str]) -> dict[Key, str]:
    """The current state per (contact, channel, purpose, store) of these contacts."""
    return {key: state for key, (_at, state) in _latest(conn, sorted(set(contact_ids))).items()}
