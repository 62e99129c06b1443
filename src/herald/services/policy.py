"""The send-time policy over the database: preload a batch's context, decide every recipient
(domain/policy.py holds the pure checks), read and write a workspace's policy settings, and count
refusals for reports.

`load_context` is set-based and reads only what the checks need: per part of CHUNK recipients,
one query per channel for the consent records on that channel, one for the contacts whose time
zone or WhatsApp window matters (marketing on a channel with quiet hours, SMS, WhatsApp), one for
the marketing sends within the longest cap window and, per channel, the suppression list (each
contact read once per batch), plus one query per batch for messages being sent right now; so a
100,000-recipient batch costs a few hundred queries, not 400,000 (bench/policy.py measures it).
Everything is read at decision time (G8): an unsubscribe committed before a batch is loaded stops
that batch's sends, and the send job decides each message again when it runs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, func, select

from herald.db.tables import message_events, messages, sending_domains
from herald.domain.errors import InvalidInput
from herald.domain.policy import (
    REFUSALS,
    ConsentEntry,
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
from herald.services import suppressions, workspaces

CHUNK: Final = 1000  # requests per part: SQLite binds each id (its IN lists stay small)
PG_CHUNK: Final = 5000  # PostgreSQL takes one array per query: fewer, larger round trips
SETTINGS_KEY: Final = "policy"


def decide_batch(conn: Connection, workspace_id: str, requests: Sequence[SendRequest], *, now: datetime,
                 settings: PolicySettings | None = None, tombstone_key: bytes | None = None,
                 balance_minor: int | None = None, fallback_timezone: str | None = None) -> list[Decision]:
    """One decision per request, in order (an allowed send counts towards the caps of the
    requests after it)."""
    if settings is None:
        settings = get_settings(conn, workspace_id)
    ctx = load_context(conn, workspace_id, requests, now=now, settings=settings, tombstone_key=tombstone_key,
                       balance_minor=balance_minor, fallback_timezone=fallback_timezone)
    return decide_all(requests, ctx, now)


def load_context(conn: Connection, workspace_id: str, requests: Sequence[SendRequest], *, now: datetime,
                 settings: PolicySettings, tombstone_key: bytes | None = None, balance_minor: int | None = None,
                 fallback_timezone: str | None = None) -> PolicyContext:
    """The batch's context, read in parts of CHUNK requests (each contact once)."""
    ctx = PolicyContext(settings=settings, balance_minor=balance_minor, fallback_timezone=fallback_timezone)
    ctx.domains = _domains(conn, workspace_id, requests)
    own = {r.message_id for r in requests}
    if settings.frequency_caps:
        _load_sending(conn, workspace_id, own, ctx.sends)
    size = PG_CHUNK if conn.dialect.name == "postgresql" else CHUNK
    for part in _parts(requests, settings, size):
        _load_part(conn, workspace_id, part, ctx, now=now, own=own, tombstone_key=tombstone_key)
    return ctx


@dataclass(frozen=True, slots=True)
class _Part:
    """CHUNK requests and what is still to be read for them (each item once per batch)."""

    requests: Sequence[SendRequest]
    consents: dict[str, list[str]]  # channel -> contacts whose consent on it is needed
    recipients: list[str]           # contacts whose time zone / phone / WhatsApp window a check needs
    sends: list[str]                # contacts with a marketing request (frequency caps)


def _parts(requests: Sequence[SendRequest], settings: PolicySettings, size: int = CHUNK) -> list[_Part]:
    parts: list[_Part] = []
    seen: dict[str, set[str]] = defaultdict(set)  # what -> contacts already planned
    for start in range(0, len(requests), size):
        chunk = requests[start:start + size]
        consents: dict[str, set[str]] = defaultdict(set)
        recipients: set[str] = set()
        sends: set[str] = set()
        for r in chunk:
            if r.contact_id is None:
                continue
            consents[r.channel].add(r.contact_id)
            if _needs_recipient(r, settings):
                recipients.add(r.contact_id)
            if r.purpose == "marketing":
                sends.add(r.contact_id)
        parts.append(_Part(chunk, {ch: _new(seen, ch, ids) for ch, ids in consents.items()},
                           _new(seen, "recipient", recipients), _new(seen, "sends", sends)))
    return parts


def _needs_recipient(r: SendRequest, settings: PolicySettings) -> bool:
    """WhatsApp (the 24-hour window) and marketing with local hours to respect (the channel's quiet
    hours, the US SMS rule) read the contact's time zone, phone and country; nothing else does."""
    return r.channel == "whatsapp" or (r.purpose == "marketing" and (r.channel == "sms"
                                                                     or r.channel in settings.quiet_hours))


def _new(seen: dict[str, set[str]], what: str, contact_ids: set[str]) -> list[str]:
    fresh = contact_ids - seen[what]
    seen[what] |= fresh
    return list(fresh)


def _load_part(conn: Connection, workspace_id: str, part: _Part, ctx: PolicyContext, *, now: datetime,
               own: set[str], tombstone_key: bytes | None) -> None:
    if part.recipients:
        ctx.recipients.update(_recipients(conn, part.recipients))
    for channel, contact_ids in part.consents.items():
        if contact_ids:
            _load_consents(conn, contact_ids, channel, ctx.consents)
    if part.sends and ctx.settings.frequency_caps:
        _load_sends(conn, part.sends, now - ctx.settings.longest_cap, own, ctx.sends)
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


def _domains(conn: Connection, workspace_id: str, requests: Sequence[SendRequest]) -> dict[str, str]:
    if not any(r.channel == "email" and r.purpose == "marketing" for r in requests):
        return {}
    d = sending_domains.c
    return {row.domain: row.status for row in conn.execute(
        select(d.domain, d.status).where(d.workspace_id == workspace_id))}


def _recipients(conn: Connection, chunk: list[str]) -> dict[str, Recipient]:
    rows = _select_in(conn, "SELECT id, timezone, phone, country, whatsapp_inbound_at FROM contacts "
                            "WHERE {id in ids}", (), chunk)
    return {row[0]: Recipient(row[1], row[2], row[3], _utc(row[4])) for row in rows}


def _load_consents(conn: Connection, chunk: list[str], channel: str, into: dict[ConsentKey, ConsentEntry]) -> None:
    """The latest (recorded_at, state) per (contact, channel, purpose, store) on one channel, ties
    broken by id; recorded_at in the driver's own form (see domain/policy.ConsentEntry).
    Deduplicated here, not in SQL: GROUP BY/DISTINCT ON measured slower than reading the ~2 rows
    per contact."""
    rows = _select_in(conn, "SELECT contact_id, purpose, store_id, recorded_at, id, state FROM consent_records "
                            "WHERE {contact_id in ids} AND channel = {p}", (channel,), chunk)
    latest: dict[ConsentKey, tuple[Any, int, str]] = {}
    for contact_id, purpose, store_id, recorded_at, row_id, state in rows:
        key = (contact_id, channel, purpose, store_id)
        current = latest.get(key)
        if current is None or (recorded_at, row_id) > current[:2]:
            latest[key] = (recorded_at, row_id, state)
    into.update({key: (at, state) for key, (at, _id, state) in latest.items()})


def _load_sends(conn: Connection, chunk: list[str], since: datetime, exclude: set[str],
                into: dict[str, list[tuple[datetime, str]]]) -> None:
    """Marketing messages the provider accepted for these contacts since `since` (an index range
    on (contact_id, sent_at) per contact)."""
    rows = _select_in(conn, "SELECT id, contact_id, sent_at, channel, purpose FROM messages "
                            "WHERE {contact_id in ids} AND sent_at > {p}", (_db_time(conn, since),), chunk)
    for message_id, contact_id, sent_at, channel, purpose in rows:
        if purpose == "marketing" and message_id not in exclude:
            into.setdefault(contact_id, []).append((_utc(sent_at), channel))


def _load_sending(conn: Connection, workspace_id: str, exclude: set[str],
                  into: dict[str, list[tuple[datetime, str]]]) -> None:
    """Marketing messages being sent right now (status 'sending': past the policy, not yet
    accepted) count towards the caps too. They are few: read once per batch."""
    m = messages.c
    query = select(m.id, m.contact_id, m.updated_at, m.channel).where(
        m.workspace_id == workspace_id, m.status == "sending", m.purpose == "marketing", m.contact_id.is_not(None))
    for message_id, contact_id, updated_at, channel in conn.execute(query):
        if message_id not in exclude:
            into.setdefault(contact_id, []).append((updated_at, channel))


# Hot-path reads as SQL run on the transaction's own driver connection: no statement compiled per
# chunk and no per-row result processing, which together cost more than the queries themselves
# (bench/policy.py). SQLite gets a fixed number of IN placeholders (padded by repeating an id);
# PostgreSQL one text parameter split into an array by the server (a short statement psycopg
# parses once, no per-element dumping) and binary results (timestamps load ~40% faster).
_IN_SIZES: Final = (16, 128, CHUNK)
_MEMBERSHIP = re.compile(r"\{(\w+) in ids\}")


def _select_in(conn: Connection, sql: str, after: tuple[Any, ...], ids: list[str]) -> list[Any]:
    """Run `sql`, whose "{column in ids}" becomes that membership test and whose "{p}" marks one
    parameter (`after` holds their values, in order: they must come after the membership test).
    `ids` are Herald ids (never a comma)."""
    driver: Any = conn.connection.driver_connection
    if conn.dialect.name == "postgresql":
        # the ids as one comma-joined text the server splits: psycopg dumps a list element by element
        statement = _MEMBERSHIP.sub(r"\1 = ANY(string_to_array(%s, ','))", sql).replace("{p}", "%s")
        return list(driver.cursor(binary=True).execute(statement, (",".join(ids), *after)).fetchall())
    size = next(n for n in _IN_SIZES if n >= len(ids))
    statement = _MEMBERSHIP.sub(lambda m: f"{m.group(1)} IN ({', '.join('?' * size)})", sql).replace("{p}", "?")
    padded = tuple(ids) + (ids[0],) * (size - len(ids))
    return list(driver.execute(statement, padded + after).fetchall())


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
    return settings_from(workspaces.settings_of(conn, workspace_id))


def settings_from(workspace_settings: Mapping[str, Any]) -> PolicySettings:
    """The policy settings in a workspace's settings JSON already read (the send job reads it once
    for the policy and the sandbox switch)."""
    raw = workspace_settings.get(SETTINGS_KEY)
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
    workspaces.set_setting(conn, workspace_id, SETTINGS_KEY, settings_json(settings))
    return settings


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

