"""The send-time policy over the database: preload a batch's context, decide every recipient
(domain/policy.py holds the pure checks), read and write a workspace's policy settings, and count
refusals for reports.

`load_context` is set-based: per chunk of CHUNK contacts one query each for the contacts, their
consent records, their recent marketing sends and (per channel) the suppression list, whatever the
batch size, so a 100,000-recipient campaign costs ~400 queries, not 400,000. Everything is read at
decision time (G8): an unsubscribe committed before a batch is loaded stops that batch's sends.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, func, select, update

from herald.db.tables import message_events, messages, sending_domains, workspaces
from herald.domain.errors import InvalidInput, NotFound
from herald.domain.policy import (
    REFUSALS,
    ConsentKey,
    Decision,
    PolicyContext,
    PolicySettings,
    Recipient,
    SendRequest,
    SettingsInvalid,
    decide_all,
    parse_settings,
    settings_json,
)
from herald.services import suppressions

CHUNK: Final = 1000
SETTINGS_KEY: Final = "policy"


def decide_batch(conn: Connection, workspace_id: str, requests: Sequence[SendRequest], *, now: datetime,
                 settings: PolicySettings | None = None, tombstone_key: bytes | None = None,
                 balance_minor: int | None = None, fallback_timezone: str | None = None) -> list[Decision]:
    """One decision per request, in order (an allowed send counts towards the caps of the
    requests after it).

    The batch is read and decided in parts of CHUNK requests, a loader thread reading part k+1
    while this one decides part k: the database's own work (SQLite's or the PostgreSQL round trip,
    both outside the GIL) overlaps the Python checks. Only one thread uses `conn` at a time."""
    if settings is None:
        settings = get_settings(conn, workspace_id)
    ctx = PolicyContext(settings=settings, balance_minor=balance_minor, fallback_timezone=fallback_timezone)
    ctx.domains = _domains(conn, workspace_id, requests)
    parts = _parts(requests)
    own = {r.message_id for r in requests}

    def load(part: _Part) -> PolicyContext:
        return _load_part(conn, workspace_id, part, now=now, settings=settings, own=own, tombstone_key=tombstone_key)

    decisions: list[Decision] = []
    if len(parts) == 1:  # a single send: no thread
        _absorb(ctx, load(parts[0]))
        return decide_all(parts[0].requests, ctx, now)
    with ThreadPoolExecutor(1, thread_name_prefix="policy-load") as loader:
        pending = loader.submit(load, parts[0]) if parts else None
        for i, part in enumerate(parts):
            assert pending is not None
            loaded = pending.result()
            pending = loader.submit(load, parts[i + 1]) if i + 1 < len(parts) else None
            _absorb(ctx, loaded)
            decisions += decide_all(part.requests, ctx, now)
    return decisions


def load_context(conn: Connection, workspace_id: str, requests: Sequence[SendRequest], *, now: datetime,
                 settings: PolicySettings, tombstone_key: bytes | None = None, balance_minor: int | None = None,
                 fallback_timezone: str | None = None) -> PolicyContext:
    """The whole batch's context, read in this thread (decide_batch overlaps reading and deciding)."""
    ctx = PolicyContext(settings=settings, balance_minor=balance_minor, fallback_timezone=fallback_timezone)
    ctx.domains = _domains(conn, workspace_id, requests)
    own = {r.message_id for r in requests}
    for part in _parts(requests):
        _absorb(ctx, _load_part(conn, workspace_id, part, now=now, settings=settings, own=own,
                                tombstone_key=tombstone_key))
    return ctx


@dataclass(frozen=True, slots=True)
class _Part:
    requests: Sequence[SendRequest]
    new_contacts: list[str]  # contacts not in an earlier part: each contact is read once


def _parts(requests: Sequence[SendRequest]) -> list[_Part]:
    parts: list[_Part] = []
    seen: set[str] = set()
    for start in range(0, len(requests), CHUNK):
        chunk = requests[start:start + CHUNK]
        new = sorted({r.contact_id for r in chunk if r.contact_id is not None} - seen)
        seen.update(new)
        parts.append(_Part(chunk, new))
    return parts


def _load_part(conn: Connection, workspace_id: str, part: _Part, *, now: datetime, settings: PolicySettings,
               own: set[str], tombstone_key: bytes | None) -> PolicyContext:
    ctx = PolicyContext(settings=settings)
    if part.new_contacts:
        ctx.recipients = _recipients(conn, part.new_contacts)
        _load_consents(conn, part.new_contacts, sorted({r.channel for r in part.requests}), ctx.consents)
        if settings.frequency_caps:
            _load_sends(conn, part.new_contacts, now - settings.longest_cap, own, ctx.sends)
    by_channel: dict[str, set[str]] = defaultdict(set)
    for r in part.requests:
        by_channel[r.channel].add(r.address)
    for channel, addresses in by_channel.items():
        found = suppressions.reasons_for(conn, workspace_id, channel, addresses, tombstone_key=tombstone_key)
        if found:  # keyed by the list's form of the address (email lower-cased): map back to the request's
            for address in addresses:
                reason = found.get(suppressions.normalise(channel, address))
                if reason is not None:
                    ctx.suppressed[(channel, address)] = reason
    return ctx


def _absorb(ctx: PolicyContext, part: PolicyContext) -> None:
    """Add a part's reads to the batch's context (its contacts are new to the batch)."""
    ctx.recipients.update(part.recipients)
    ctx.consents.update(part.consents)
    ctx.suppressed.update(part.suppressed)
    for contact_id, sent in part.sends.items():
        ctx.sends.setdefault(contact_id, []).extend(sent)


def _domains(conn: Connection, workspace_id: str, requests: Sequence[SendRequest]) -> dict[str, str]:
    if not any(r.channel == "email" and r.purpose == "marketing" for r in requests):
        return {}
    d = sending_domains.c
    return {row.domain: row.status for row in conn.execute(
        select(d.domain, d.status).where(d.workspace_id == workspace_id))}


def _recipients(conn: Connection, chunk: list[str]) -> dict[str, Recipient]:
    rows = _select_in(conn, "SELECT id, timezone, phone, country, whatsapp_inbound_at FROM contacts "
                            "WHERE id IN ({ids})", (), chunk)
    return {row[0]: Recipient(row[1], row[2], row[3], _utc(row[4])) for row in rows}


def _load_consents(conn: Connection, chunk: list[str], channels: list[str],
                   into: dict[ConsentKey, tuple[datetime, str]]) -> None:
    """The latest (recorded_at, state) per (contact, channel, purpose, store). Rows are read in id
    order; services/consent.py never appends a row older than a key's latest, so the last row
    read per key is its latest (the recorded_at comparison keeps that true for any writer)."""
    rows = _select_in(conn, "SELECT contact_id, channel, purpose, store_id, recorded_at, state FROM consent_records "
                            "WHERE contact_id IN ({ids}) ORDER BY id", (), chunk)
    wanted = set(channels)
    latest: dict[ConsentKey, tuple[Any, str]] = {}  # raw timestamps: one driver's values compare among themselves
    for contact_id, channel, purpose, store_id, recorded_at, state in rows:
        if channel not in wanted:
            continue
        key = (contact_id, channel, purpose, store_id)
        current = latest.get(key)
        if current is None or recorded_at >= current[0]:
            latest[key] = (recorded_at, state)
    into.update((key, (_utc(at), state)) for key, (at, state) in latest.items())


def _load_sends(conn: Connection, chunk: list[str], since: datetime, exclude: set[str],
                into: dict[str, list[tuple[datetime, str]]]) -> None:
    """Marketing messages sent to these contacts since `since`, and those being sent right now
    (status 'sending': they pass the policy before the provider accepts them)."""
    rows = _select_in(conn, "SELECT id, contact_id, sent_at, updated_at, channel FROM messages "
                            "WHERE contact_id IN ({ids}) AND purpose = 'marketing' "
                            "AND (sent_at > {p} OR status = 'sending')", (_db_time(conn, since),), chunk)
    for message_id, contact_id, sent_at, updated_at, channel in rows:
        if message_id not in exclude:
            into.setdefault(contact_id, []).append((_utc(sent_at or updated_at), channel))


# Hot-path reads as SQL with a fixed number of IN placeholders (padded by repeating an id), run on
# the transaction's own driver connection: no statement compiled per chunk and no per-row result
# processing, which together cost more than the queries themselves (bench/policy.py).
_IN_SIZES: Final = (16, 128, CHUNK)


def _select_in(conn: Connection, sql: str, before: tuple[Any, ...], ids: list[str]) -> list[Any]:
    """`sql` with {ids} → the IN placeholders and {p} → one placeholder; `before` are the
    parameters of the {p}s, which come after {ids} in the statement."""
    mark = "?" if conn.dialect.name == "sqlite" else "%s"
    size = next(n for n in _IN_SIZES if n >= len(ids))
    statement = sql.format(ids=", ".join([mark] * size), p=mark)
    padded = tuple(ids) + (ids[0],) * (size - len(ids))
    driver: Any = conn.connection.driver_connection  # sqlite3 or psycopg: both have execute()
    return list(driver.execute(statement, padded + before).fetchall())


def _utc(value: Any) -> Any:
    """A timestamp as the driver returns it (SQLite: naive UTC text; psycopg: aware) → aware UTC."""
    if value is None or (isinstance(value, datetime) and value.tzinfo is not None):
        return value
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value.replace(tzinfo=UTC)


def _db_time(conn: Connection, at: datetime) -> Any:
    """A parameter comparable with stored timestamps (db/types.UTCDateTime's SQLite text form)."""
    if conn.dialect.name == "sqlite":
        return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    return at


# -- settings ---------------------------------------------------------------------------------------

def get_settings(conn: Connection, workspace_id: str) -> PolicySettings:
    raw = _workspace_settings(conn, workspace_id).get(SETTINGS_KEY)
    try:
        return parse_settings(raw)
    except SettingsInvalid as exc:  # stored settings were validated; this means a hand edit
        raise InvalidInput.on(f"policy.{exc.field}", exc.why) from None


def put_settings(conn: Connection, workspace_id: str, raw: Any) -> PolicySettings:
    """Validate and store the workspace's policy settings (absent keys take the defaults)."""
    if not isinstance(raw, dict):
        raise InvalidInput.on("policy", "must be a JSON object")
    try:
        settings = parse_settings(raw)
    except SettingsInvalid as exc:
        raise InvalidInput.on(exc.field, exc.why) from None
    current = _workspace_settings(conn, workspace_id, for_update=True)
    current[SETTINGS_KEY] = settings_json(settings)
    conn.execute(update(workspaces).where(workspaces.c.id == workspace_id).values(settings=current))
    return settings


def _workspace_settings(conn: Connection, workspace_id: str, *, for_update: bool = False) -> dict[str, Any]:
    query = select(workspaces.c.settings).where(workspaces.c.id == workspace_id)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"no workspace {workspace_id!r}")
    return dict(row[0] or {})


# -- reports ----------------------------------------------------------------------------------------

def refusal_counts(conn: Connection, workspace_id: str, *, since: datetime | None = None,
                   until: datetime | None = None, store_id: str | None = None) -> list[dict[str, Any]]:
    """Messages refused by the policy (and deferrals for quiet hours), per reason and channel,
    created in [since, until). Every code the policy stores is countable here."""
    m = messages.c
    refused = (select(m.status_reason, m.channel, func.count().label("n"))
               .where(m.workspace_id == workspace_id, m.status == "suppressed"))
    refused = _window(refused, m.created_at, since, until, m.store_id, store_id).group_by(m.status_reason, m.channel)
    counts = [{"reason": r.status_reason, "channel": r.channel, "kind": "refused", "count": r.n,
               "meaning": REFUSALS.get(r.status_reason or "", r.status_reason)} for r in conn.execute(refused)]
    e = message_events.c
    deferred = (select(e.reason, m.channel, func.count().label("n"))
                .select_from(message_events.join(messages, messages.c.id == e.message_id))
                .where(e.workspace_id == workspace_id, e.status == "deferred", e.reason == "quiet_hours"))
    deferred = _window(deferred, e.occurred_at, since, until, m.store_id, store_id).group_by(e.reason, m.channel)
    counts += [{"reason": r.reason, "channel": r.channel, "kind": "deferred", "count": r.n,
                "meaning": REFUSALS["quiet_hours"]} for r in conn.execute(deferred)]
    return sorted(counts, key=lambda c: (-c["count"], c["reason"] or "", c["channel"]))


def _window(query: Any, column: Any, since: datetime | None, until: datetime | None, store_column: Any,
            store_id: str | None) -> Any:
    if since is not None:
        query = query.where(column >= since)
    if until is not None:
        query = query.where(column < until)
    if store_id is not None:
        query = query.where(store_column == store_id)
    return query

