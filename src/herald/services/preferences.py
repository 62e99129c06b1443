"""A contact's consent as the API and the contact see it: the current state and history from the
ledger (services/consent.py), changes asked through the API (with double opt-in), the double
opt-in confirmation, and the hosted preference centre.

Rules kept here:
  * A change recorded by the API obeys the ledger: a statement older than the latest one of its
    (contact, channel, purpose, store) is kept out, and repeating the current state appends nothing.
  * Double opt-in records `pending` and hands out a link bound to that very pending record: it
    confirms only while the latest record is still that one, so a later withdrawal (or a newer
    request) is never undone by an old link. A request for a key that is already granted changes
    nothing.
  * What the contact does on a hosted page (confirm, tick, untick) is always recorded: it is
    stamped just after the key's latest record if that one is not older than now.
  * Marketing email withdrawn on the preference centre also suppresses the contact's email
    addresses (reason `unsubscribed`, source `preference_centre`) when no marketing email consent
    is left in any store; an explicit grant by the contact (preference centre or double opt-in
    confirmation) lifts exactly those suppressions, never one of another source or reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from sqlalchemy import Connection, and_, delete, func, or_, select

from herald.db.tables import (
    consent_records,
    contact_identities,
    contact_merges,
    contact_stores,
    contacts,
    messages,
    stores,
    workspaces,
)
from herald.db.tables import suppressions as suppressions_table
from herald.domain.auth import Principal
from herald.domain.errors import FieldProblem, Forbidden, InvalidInput, NotFound
from herald.pipeline.consent_links import CONFIRMATION_TTL, Confirmation, ConsentLinks
from herald.services import consent, suppressions, templates
from herald.services.email import queue_email
from herald.services.pagination import Page, decode_cursor, encode_cursor

ConsentKey = tuple[str, str, str | None]   # (channel, purpose, store_id); store None = all stores
PREFERENCE_SOURCE: Final = "preference_centre"
DOUBLE_OPT_IN_SOURCE: Final = "double_opt_in"
MAX_MERGE_HOPS: Final = 20
_TICK: Final = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Record:
    """One row of the ledger."""

    id: int
    channel: str
    purpose: str
    store_id: str | None
    state: str
    source: str
    wording_version: str | None
    ip: str | None
    user_agent: str | None
    recorded_at: datetime

    @property
    def key(self) -> ConsentKey:
        return (self.channel, self.purpose, self.store_id)

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


_RECORD_COLUMNS: Final = ("id", "channel", "purpose", "store_id", "state", "source", "wording_version", "ip",
                          "user_agent", "recorded_at")


# ---- reading the ledger -------------------------------------------------------------------------

def latest_records(conn: Connection, contact_id: str) -> dict[ConsentKey, Record]:
    """The latest record per (channel, purpose, store) of one contact: its current state."""
    c = consent_records.c
    rank = func.row_number().over(partition_by=(c.channel, c.purpose, c.store_id),
                                  order_by=(c.recorded_at.desc(), c.id.desc())).label("rank")
    ranked = select(*(c[n] for n in _RECORD_COLUMNS), rank).where(c.contact_id == contact_id).subquery()
    rows = conn.execute(select(*(ranked.c[n] for n in _RECORD_COLUMNS)).where(ranked.c.rank == 1)).mappings()
    found = [Record(**r) for r in rows]
    return {r.key: r for r in found}


def _in_scope(store_id: str | None, scope: str | None) -> bool:
    """A store-scoped caller sees its store's records and the workspace-wide (all stores) ones."""
    return scope is None or store_id is None or store_id == scope


def current_state(conn: Connection, who: Principal, contact_id: str) -> list[dict[str, Any]]:
    """The current state per (channel, purpose, store) the caller may see, in a stable order."""
    latest = [r for r in latest_records(conn, contact_id).values() if _in_scope(r.store_id, who.store_id)]
    latest.sort(key=lambda r: (r.channel, r.purpose, r.store_id or ""))
    return [r.as_dict() for r in latest]


def history(conn: Connection, who: Principal, contact_id: str, *, limit: int,
            cursor: str | None) -> Page[dict[str, Any]]:
    """Every record of the contact the caller may see, newest first (recorded_at, then id)."""
    c = consent_records.c
    query = select(*(c[n] for n in _RECORD_COLUMNS)).where(c.workspace_id == who.workspace_id,
                                                           c.contact_id == contact_id)
    if who.store_id is not None:
        query = query.where(or_(c.store_id.is_(None), c.store_id == who.store_id))
    after = _history_cursor(cursor)
    if after is not None:
        at, row_id = after
        query = query.where(or_(c.recorded_at < at, and_(c.recorded_at == at, c.id < row_id)))
    rows = [dict(r) for r in conn.execute(query.order_by(c.recorded_at.desc(), c.id.desc()).limit(limit + 1))
            .mappings()]
    if len(rows) <= limit:
        return Page(rows, None)
    rows = rows[:limit]
    last = rows[-1]
    return Page(rows, encode_cursor(f"{last['recorded_at'].isoformat()}|{last['id']}"))


def _history_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    raw = decode_cursor(cursor)
    if raw is None:
        return None
    at, _, row_id = raw.partition("|")
    try:
        moment = datetime.fromisoformat(at)
        number = int(row_id)
    except ValueError:
        raise InvalidInput.on("cursor", "is not a cursor this API returned; start without one") from None
    if moment.tzinfo is None:
        raise InvalidInput.on("cursor", "is not a cursor this API returned; start without one")
    return moment, number


# ---- changes asked through the API --------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Requested:
    """One change asked through the API (already checked for shape)."""

    channel: str
    purpose: str
    state: Literal["granted", "withdrawn"]
    store_id: str | None = None
    source: str = "api"
    wording_version: str | None = None
    ip: str | None = None
    user_agent: str | None = None
    recorded_at: datetime | None = None
    double_opt_in: bool = False
    confirmation_template_id: str | None = None


@dataclass(slots=True)
class Applied:
    """What became of one requested change: the key's state afterwards and whether a row was added."""

    channel: str
    purpose: str
    store_id: str | None
    state: str | None
    recorded: bool
    confirmation_url: str | None = None
    confirmation_expires_at: datetime | None = None
    confirmation_message_id: str | None = None


def record_requested(conn: Connection, who: Principal, contact_id: str, requested: Sequence[Requested], *,
                     links: ConsentLinks, now: datetime) -> list[Applied]:
    """Record the changes for a contact the caller can see (checked by the caller), in order.
    Raises InvalidInput naming `changes.<i>.<field>`, Forbidden for another store's key."""
    contact = _contact_row(conn, contact_id)
    if contact is None or contact["workspace_id"] != who.workspace_id:
        raise NotFound(f"no contact {contact_id!r} in this workspace")
    scoped = [_scoped(conn, who, i, change, now) for i, change in enumerate(requested)]
    _no_repeated_keys(scoped)
    chosen = {i: _confirmation_template(conn, who, i, change, contact) for i, change in enumerate(scoped)
              if change.confirmation_template_id is not None}
    results: list[Applied] = []
    for i, change in enumerate(scoped):
        if change.double_opt_in:
            results.append(_request_confirmation(conn, who.workspace_id, contact, change, chosen.get(i),
                                                 links=links, now=now))
        else:
            results.append(_record_one(conn, who.workspace_id, contact_id, change, change.state, now))
    return results


def _scoped(conn: Connection, who: Principal, i: int, change: Requested, now: datetime) -> Requested:
    """The change with its store filled in for a store key, after the checks that need the database."""
    store_id = change.store_id
    if who.store_id is not None:
        if store_id is not None and store_id != who.store_id:
            raise Forbidden(f"changes.{i}.store_id: a store-scoped API key can only record consent for its own "
                            f"store ({who.store_id!r})")
        store_id = who.store_id
    elif store_id is not None and conn.execute(select(stores.c.id).where(
            stores.c.id == store_id, stores.c.workspace_id == who.workspace_id)).first() is None:
        raise InvalidInput.on(f"changes.{i}.store_id", f"no store {store_id!r} in this workspace")
    if change.recorded_at is not None:
        if change.recorded_at.tzinfo is None:
            raise InvalidInput.on(f"changes.{i}.recorded_at", "give a time zone (e.g. 2026-05-01T10:00:00Z)")
        if change.recorded_at > now:
            raise InvalidInput.on(f"changes.{i}.recorded_at", "may not be in the future")
    if change.double_opt_in and change.state != "granted":
        raise InvalidInput.on(f"changes.{i}.double_opt_in", "only a change to `granted` can ask for confirmation")
    if change.confirmation_template_id is not None and not change.double_opt_in:
        raise InvalidInput.on(f"changes.{i}.confirmation_template_id", "only with `double_opt_in: true`")
    return replace(change, store_id=store_id)


def _no_repeated_keys(changes: Sequence[Requested]) -> None:
    first: dict[ConsentKey, int] = {}
    for i, change in enumerate(changes):
        key = (change.channel, change.purpose, change.store_id)
        if key in first:
            raise InvalidInput.on(f"changes.{i}", f"the same channel, purpose and store as changes.{first[key]}; "
                                  "send one change per key")
        first[key] = i


def _confirmation_template(conn: Connection, who: Principal, i: int, change: Requested,
                           contact: Mapping[str, Any]) -> dict[str, Any]:
    name = f"changes.{i}.confirmation_template_id"
    assert change.confirmation_template_id is not None
    try:
        template = templates.get_template(conn, who, change.confirmation_template_id)
    except NotFound:
        raise InvalidInput.on(name, f"no template {change.confirmation_template_id!r} this key can use") from None
    problems = []
    if template["channel"] != "email":
        problems.append("must be an email template")
    if template["purpose"] != "transactional":
        problems.append("must be a transactional template (a confirmation request is not marketing)")
    if not contact.get("email"):
        problems.append("the contact has no email address to send the confirmation to")
    if change.store_id is None and template["store_id"] is None:
        problems.append("the confirmation email needs a store to send from: give store_id or use a store's template")
    if problems:
        raise InvalidInput(f"{name}: " + "; ".join(problems), fields=[FieldProblem(name, p) for p in problems])
    return template


def _record_one(conn: Connection, workspace_id: str, contact_id: str, change: Requested, state: str,
                now: datetime) -> Applied:
    appended = consent.record_many(conn, workspace_id, [consent.ConsentChange(
        contact_id=contact_id, store_id=change.store_id, channel=change.channel, purpose=change.purpose,
        state=state, source=change.source, recorded_at=change.recorded_at or now,
        wording_version=change.wording_version, ip=change.ip, user_agent=change.user_agent)])
    key = (change.channel, change.purpose, change.store_id)
    current = latest_records(conn, contact_id).get(key)
    return Applied(change.channel, change.purpose, change.store_id, current.state if current else None,
                   recorded=appended > 0)


def _request_confirmation(conn: Connection, workspace_id: str, contact: Mapping[str, Any], change: Requested,
                          template: Mapping[str, Any] | None, *, links: ConsentLinks, now: datetime) -> Applied:
    key = (change.channel, change.purpose, change.store_id)
    current = latest_records(conn, contact["id"]).get(key)
    if current is not None and current.state == "granted":
        return Applied(*key, state="granted", recorded=False)
    applied = _record_one(conn, workspace_id, contact["id"], change, "pending", now)
    pending = latest_records(conn, contact["id"]).get(key)
    if pending is None or pending.state != "pending":
        return applied   # a stale request: the ledger already holds a newer statement
    confirmation = Confirmation(contact["id"], change.channel, change.purpose, change.store_id,
                                change.wording_version or pending.wording_version, pending.recorded_at,
                                expires_at=now + CONFIRMATION_TTL)
    applied.confirmation_url = links.confirmation_url(confirmation)
    applied.confirmation_expires_at = confirmation.expires_at
    if template is not None:
        applied.confirmation_message_id = queue_email(
            conn, workspace_id=workspace_id, template=template, to=contact["email"], now=now,
            store_id=change.store_id, contact_id=contact["id"], purpose="transactional",
            context={"variables": {"confirmation_url": applied.confirmation_url}})
    return applied


# ---- the contact, from a hosted page ------------------------------------------------------------

def _contact_row(conn: Connection, contact_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(contacts).where(contacts.c.id == contact_id)).mappings().first()
    return dict(row) if row is not None else None


def find_contact(conn: Connection, contact_id: str) -> dict[str, Any] | None:
    """The contact a link was made for, following merges (a link in mail outlives a merge)."""
    seen: set[str] = set()
    current = contact_id
    for _hop in range(MAX_MERGE_HOPS):
        row = _contact_row(conn, current)
        if row is not None:
            return row
        seen.add(current)
        m = contact_merges.c
        kept = conn.execute(select(m.kept_contact_id).where(m.merged_contact_id == current)
                            .order_by(m.id.desc()).limit(1)).scalar()
        if kept is None or kept in seen:
            return None
        current = str(kept)
    return None


def contact_of_message(conn: Connection, message_id: str) -> str | None:
    return conn.execute(select(messages.c.contact_id).where(messages.c.id == message_id)).scalar()


def own_act_time(latest: Record | None, now: datetime) -> datetime:
    """When to record the contact's own act: now, or just after the key's latest record."""
    if latest is not None and latest.recorded_at >= now:
        return latest.recorded_at + _TICK
    return now


ConfirmOutcome = Literal["confirmed", "already_granted", "no_longer_pending", "unknown_contact"]


def confirm(conn: Connection, confirmation: Confirmation, *, ip: str | None, user_agent: str | None,
            now: datetime) -> ConfirmOutcome:
    """The contact confirmed a double opt-in request (POST on its link)."""
    contact = find_contact(conn, confirmation.contact_id)
    if contact is None:
        return "unknown_contact"
    key = (confirmation.channel, confirmation.purpose, confirmation.store_id)
    latest = latest_records(conn, contact["id"]).get(key)
    if latest is None or latest.state != "pending" or latest.recorded_at != confirmation.pending_since:
        return "already_granted" if latest is not None and latest.state == "granted" else "no_longer_pending"
    consent.record_many(conn, contact["workspace_id"], [consent.ConsentChange(
        contact_id=contact["id"], store_id=confirmation.store_id, channel=confirmation.channel,
        purpose=confirmation.purpose, state="granted", source=DOUBLE_OPT_IN_SOURCE,
        recorded_at=own_act_time(latest, now), wording_version=confirmation.wording_version, ip=ip,
        user_agent=user_agent)])
    if key[:2] == ("email", "marketing"):
        _lift_own_suppressions(conn, contact)
    return "confirmed"


# ---- the preference centre ----------------------------------------------------------------------

@dataclass(slots=True)
class Centre:
    """What the preference centre shows: a box per (channel, purpose, store) of the grid."""

    contact: dict[str, Any]
    workspace_name: str
    stores: list[tuple[str | None, str]]   # (store id, name), "all stores" (None) first
    channels: list[str]
    latest: dict[ConsentKey, Record] = field(default_factory=dict)

    @property
    def keys(self) -> list[ConsentKey]:
        return [(ch, purpose, store_id) for ch in self.channels for purpose in consent.PURPOSES
                for store_id, _name in self.stores]

    def state(self, key: ConsentKey) -> str | None:
        record = self.latest.get(key)
        return record.state if record is not None else None


def preference_centre(conn: Connection, contact_id: str) -> Centre | None:
    """The grid for a contact: its stores plus "all stores", the channels it has an address for
    (or records of), and the current states. None when the contact no longer exists."""
    contact = find_contact(conn, contact_id)
    if contact is None:
        return None
    latest = latest_records(conn, contact["id"])
    linked = select(contact_stores.c.store_id).where(contact_stores.c.contact_id == contact["id"])
    recorded = {key[2] for key in latest if key[2] is not None}
    store_rows = conn.execute(select(stores.c.id, stores.c.name).where(
        stores.c.workspace_id == contact["workspace_id"],
        or_(stores.c.id.in_(linked), stores.c.id.in_(sorted(recorded))))
        .order_by(stores.c.name, stores.c.id)).all()
    name = conn.execute(select(workspaces.c.name).where(workspaces.c.id == contact["workspace_id"])).scalar()
    channels = [ch for ch in consent.CHANNELS
                if (ch == "email" and contact["email"]) or (ch in ("sms", "whatsapp") and contact["phone"])
                or any(key[0] == ch for key in latest)]
    return Centre(contact, str(name or ""), [(None, "All stores"), *((r.id, r.name) for r in store_rows)],
                  channels, latest)


class UnknownBox(ValueError):
    """A submitted box that is not in the contact's grid (a stale or forged form)."""


def apply_preferences(conn: Connection, centre: Centre, shown: Mapping[ConsentKey, bool],
                      ticked: Iterable[ConsentKey], *, unsubscribe_all: bool, ip: str | None,
                      user_agent: str | None, now: datetime) -> int:
    """Record what the contact changed: each box whose ticked state differs from what the page
    showed (`shown`: key -> was ticked), or, for "unsubscribe from all marketing", a withdrawal of
    every marketing key of the grid not withdrawn yet. Returns how many changes were recorded."""
    allowed = set(centre.keys)
    ticked_set = set(ticked)
    unknown = (set(shown) | ticked_set) - allowed
    if unknown:
        raise UnknownBox("the form does not match your preferences any more; reload the page")
    if unsubscribe_all:
        wanted = {key: "withdrawn" for key in centre.keys
                  if key[1] == "marketing" and centre.state(key) != "withdrawn"}
    else:
        wanted = {key: ("granted" if key in ticked_set else "withdrawn")
                  for key, was in shown.items() if (key in ticked_set) != was}
    changes = [consent.ConsentChange(contact_id=centre.contact["id"], store_id=key[2], channel=key[0],
                                     purpose=key[1], state=state, source=PREFERENCE_SOURCE,
                                     recorded_at=own_act_time(centre.latest.get(key), now), ip=ip,
                                     user_agent=user_agent)
               for key, state in wanted.items()]
    recorded = consent.record_many(conn, centre.contact["workspace_id"], changes)
    _email_suppression(conn, centre.contact, wanted, now)
    return recorded


def _email_suppression(conn: Connection, contact: Mapping[str, Any], wanted: Mapping[ConsentKey, str],
                       now: datetime) -> None:
    email_marketing = {state for key, state in wanted.items() if key[:2] == ("email", "marketing")}
    if "granted" in email_marketing:
        _lift_own_suppressions(conn, contact)
    if "withdrawn" not in email_marketing:
        return
    left = [r for key, r in latest_records(conn, contact["id"]).items()
            if key[:2] == ("email", "marketing") and r.state == "granted"]
    if left:
        return
    for address in _email_addresses(conn, contact):
        suppressions.suppress(conn, contact["workspace_id"], "email", address, "unsubscribed",
                              source=PREFERENCE_SOURCE, now=now)


def _lift_own_suppressions(conn: Connection, contact: Mapping[str, Any]) -> None:
    """Remove the `unsubscribed` suppressions the preference centre made for these addresses."""
    s = suppressions_table.c
    addresses = [suppressions.normalise("email", a) for a in _email_addresses(conn, contact)]
    if addresses:
        conn.execute(delete(suppressions_table).where(
            s.workspace_id == contact["workspace_id"], s.channel == "email", s.address.in_(addresses),
            s.reason == "unsubscribed", s.source == PREFERENCE_SOURCE))


def _email_addresses(conn: Connection, contact: Mapping[str, Any]) -> list[str]:
    i = contact_identities.c
    found = set(conn.execute(select(i.value).where(i.contact_id == contact["id"], i.kind == "email")).scalars())
    if contact.get("email"):
        found.add(contact["email"])
    return sorted(found)


def sender_name(conn: Connection, contact: Mapping[str, Any], store_id: str | None) -> str:
    """Who the contact hears from for this store (the store's name, else the workspace's)."""
    if store_id is not None:
        name = conn.execute(select(stores.c.name).where(stores.c.id == store_id,
                                                        stores.c.workspace_id == contact["workspace_id"])).scalar()
        if name:
            return str(name)
    return str(conn.execute(select(workspaces.c.name).where(workspaces.c.id == contact["workspace_id"])).scalar()
               or "")
