"""Identity resolution: which contact is this person? Used by every intake path (store webhooks,
backfill, CSV imports, event ingestion), so it is set-based: a call resolves a whole batch with a
handful of queries whatever its size, and re-running the same input writes nothing.

Rules (ARCHITECTURE: one person across the seller's stores):
- a person is matched by external id first (in the order given), then email, then phone;
- a matched contact gains the identities it lacks unless another contact holds them: those are
  reported as `conflicts` and left where they are (merging two contacts is an explicit act,
  `merge`, recorded in contact_merges);
- non-null profile values overwrite, tags are unioned, attributes shallow-merged;
- two people of one call sharing an identity resolve to the same contact.

A store's own customer ids live under namespace store_namespace(store_id), so a Shopify customer
id from a webhook, a Segment userId sent by that store's site and a CSV customer id column are one
identity.

Concurrency: contact_identities is unique per (workspace, kind, namespace, value). Identities are
inserted with ON CONFLICT DO NOTHING and then read back; if a concurrent writer won any of them,
everything this call inserted is removed again and the batch is resolved afresh (it then finds the
winner's rows), so a race never fails the batch nor leaves a half-made contact.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import structlog
from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from herald.db.bulk import insert_many, select_in
from herald.db.tables import (
    checkouts,
    consent_records,
    contact_identities,
    contact_merges,
    contact_stores,
    contacts,
    events,
    messages,
    orders,
)
from herald.domain import contacts as rules
from herald.domain.contacts import IdentityKind, InvalidValue
from herald.domain.errors import FieldProblem, InvalidInput, NotFound
from herald.domain.ids import new_id
from herald.services.contacts import MAX_ATTRIBUTES_BYTES, MAX_TAGS, _attributes, _decorate, _name, _tags

log = structlog.get_logger(__name__)

PROFILE_KEYS = ("first_name", "last_name", "country", "language", "timezone")
CHUNK = 2000  # values per IN list: far below SQLite's and PostgreSQL's bind-parameter limits
MAX_ATTEMPTS = 3  # fresh resolutions after losing an identity race before giving up

Key = tuple[str, str, str]  # (kind, namespace, value), as in contact_identities
_EXTERNAL, _EMAIL, _PHONE = IdentityKind.EXTERNAL.value, IdentityKind.EMAIL.value, IdentityKind.PHONE.value


def store_namespace(store_id: str) -> str:
    """The namespace of a store's own customer ids."""
    return "store:" + store_id.lower()


@dataclass(slots=True)
class Person:
    """An already-normalised person (build one with normalize_person)."""

    external: list[tuple[str, str]]  # [(namespace, value)], tried first, in order
    email: str | None = None
    phone: str | None = None  # E.164
    profile: dict[str, Any] = field(default_factory=dict)  # of PROFILE_KEYS
    tags: list[str] = field(default_factory=list)  # added (union), never removed
    attributes: dict[str, Any] = field(default_factory=dict)  # shallow-merged over the stored ones

    def identity_keys(self) -> list[Key]:
        """Identities in match precedence: external ids, email, phone."""
        found: list[Key] = [(_EXTERNAL, ns, value) for ns, value in self.external]
        if self.email:
            found.append((_EMAIL, "", self.email))
        if self.phone:
            found.append((_PHONE, "", self.phone))
        return found


@dataclass(slots=True)
class Resolved:
    contact_id: str
    created: bool  # a new contact was made
    changed: bool  # anything stored changed (profile, identities, tags, attributes, store link)
    conflicts: list[str]  # identities held by another contact and left there: "email", "phone", "external:<ns>"


# ---- normalisation ------------------------------------------------------------------------------
def normalize_person(*, external: Sequence[tuple[str, str]] = (), email: str | None = None,
                     phone: str | None = None, default_country: str | None = None,
                     profile: dict[str, Any] | None = None, tags: list[str] | None = None,
                     attributes: dict[str, Any] | None = None) -> tuple[Person, list[FieldProblem]]:
    """Normalise raw values with the contact rules (domain/contacts.py, services/contacts.py).

    Invalid values are dropped from the Person and reported, so a row with a bad phone still lands
    by its email. A national phone number uses the person's country, else `default_country`.
    Empty strings count as absent.
    """
    problems: list[FieldProblem] = []

    def clean(name: str, raw: Any, fn: Any) -> Any:
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return None
        try:
            return fn(raw)
        except InvalidValue as exc:
            problems.append(FieldProblem(name, str(exc)))
            return None

    out_profile: dict[str, Any] = {}
    for key, raw in (profile or {}).items():
        fn = _PROFILE_RULES.get(key)
        if fn is None:
            problems.append(FieldProblem(key, f"unknown profile field; use one of {', '.join(PROFILE_KEYS)}"))
            continue
        value = clean(key, raw, fn)
        if value is not None and value != "":
            out_profile[key] = value
    region = out_profile.get("country") or clean("default_country", default_country, _country)
    out_external: list[tuple[str, str]] = []
    for ns, value in external:
        pair = clean(f"external_ids.{ns}", value, lambda v, ns=ns: rules.normalize_external_id(ns, v))
        if pair is not None and pair not in out_external:
            out_external.append(pair)
    person = Person(
        external=out_external,
        email=clean("email", email, normalize_email),
        phone=clean("phone", phone, lambda v: _phone(str(v), region)),
        profile=out_profile,
        tags=clean("tags", tags, _tags) or [],
        attributes=clean("attributes", attributes, _attributes) or {},
    )
    return person, problems


# Plain ASCII addresses (nearly all of them) take a fast path with the same result as
# rules.normalize_email: the local part is an RFC 5322 dot-atom, kept as is, and the domain's
# validation (the costly part) is cached per domain. Anything else takes the full check.
_ATEXT = r"[a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~]+"
_PLAIN = re.compile(rf"({_ATEXT}(?:\.{_ATEXT})*)@([A-Za-z0-9.-]+)")


def normalize_email(raw: str) -> str:
    text = raw.strip()
    match = _PLAIN.fullmatch(text)
    if match is None or len(text) > 254 or len(match[1]) > 64 or "xn--" in match[2].lower():
        return rules.normalize_email(raw)
    return f"{match[1]}@{_email_domain(match[2])}"


@lru_cache(maxsize=8192)
def _email_domain(domain: str) -> str:
    return rules.normalize_email("x@" + domain).split("@", 1)[1]  # raises InvalidValue (cached: no)


# The contact rules are pure functions of their arguments; the ones a batch calls with few distinct
# values (countries, languages, zones) or that are costly (phonenumbers: ~50 µs a number) are
# cached. lru_cache does not cache exceptions: an invalid value is checked, and reported, each time.
_country = lru_cache(maxsize=1024)(rules.normalize_country)
_language = lru_cache(maxsize=1024)(rules.normalize_language)
_timezone = lru_cache(maxsize=1024)(rules.normalize_timezone)
_phone = lru_cache(maxsize=16384)(rules.normalize_phone)  # an orders file repeats a customer's phone per line

_PROFILE_RULES: dict[str, Any] = {
    "first_name": _name, "last_name": _name, "country": _country, "language": _language, "timezone": _timezone,
}


# ---- resolution ---------------------------------------------------------------------------------
@dataclass(slots=True)
class _Plan:
    """What one attempt at a batch decided, before anything is written."""

    results: list[Resolved]
    states: dict[str, dict[str, Any]]  # contact id -> its row as it should end up
    new_contacts: list[str]
    changed_contacts: set[str]  # existing contacts whose row changes
    new_identities: list[dict[str, Any]]
    new_links: list[str]  # contacts to link to the store


def resolve_many(conn: Connection, workspace_id: str, store_id: str | None, people: Sequence[Person],
                 now: datetime) -> list[Resolved]:
    """Resolve a batch of people to contacts (results in input order). See the module docstring."""
    keyed = [person.identity_keys() for person in people]
    for i, keys in enumerate(keyed):
        if not keys:
            raise ValueError(f"person {i} has no identity: give an external id, an email or a phone")
    if not people:
        return []
    for _attempt in range(MAX_ATTEMPTS):
        plan = _plan(conn, workspace_id, store_id, people, keyed, now)
        if _write_identities(conn, plan):
            _write_contacts(conn, workspace_id, store_id, plan, now)
            return plan.results
    raise RuntimeError(f"identity resolution lost {MAX_ATTEMPTS} races in a row; retry the batch")


def resolve(conn: Connection, workspace_id: str, store_id: str | None, person: Person, now: datetime) -> Resolved:
    return resolve_many(conn, workspace_id, store_id, [person], now)[0]


def _plan(conn: Connection, workspace_id: str, store_id: str | None, people: Sequence[Person],
          keyed: list[list[Key]], now: datetime) -> _Plan:
    """`keyed`: each person's identity_keys(), computed once by the caller."""
    owner = _owners(conn, workspace_id, {k for keys in keyed for k in keys})
    states = _rows(conn, set(owner.values()))
    original = {i: {**row, "tags": list(row["tags"]), "attributes": dict(row["attributes"])}
                for i, row in states.items()}
    linked = _linked(conn, store_id, set(states)) if store_id else set()
    plan = _Plan([], states, [], set(), [], [])
    outcomes: list[tuple[str, bool, bool, list[str]]] = []  # contact, created, added rows, conflicts
    contact_ids = iter(new_ids("ct", len(people)))
    identity_ids = iter(new_ids("cid", sum(map(len, keyed))))
    for person, keys in zip(people, keyed, strict=True):
        contact_id = next((owner[k] for k in keys if k in owner), None)
        created = contact_id is None
        if contact_id is None:
            contact_id = next(contact_ids)
            states[contact_id] = _blank(contact_id, workspace_id, now)
            plan.new_contacts.append(contact_id)
        added, conflicts = created, []
        held: set[Key] = set()
        for key in keys:
            holder = owner.get(key)
            if holder is None:
                owner[key] = contact_id
                plan.new_identities.append({"id": next(identity_ids), "workspace_id": workspace_id,
                                            "contact_id": contact_id, "kind": key[0], "namespace": key[1],
                                            "value": key[2], "created_at": now})
                held.add(key)
                added = True
            elif holder == contact_id:
                held.add(key)
            else:
                conflicts.append(key[0] if key[0] != _EXTERNAL else f"external:{key[1]}")
        _apply_person(states[contact_id], person, held)
        if store_id and contact_id not in linked:
            linked.add(contact_id)
            plan.new_links.append(contact_id)
            added = True
        outcomes.append((contact_id, created, added, conflicts))
    # Compare end states, not steps: a batch that sets a value and then sets it back is no change.
    plan.changed_contacts = {i for i, row in original.items() if states[i] != row}
    plan.results = [Resolved(c, created, added or c in plan.changed_contacts, conflicts)
                    for c, created, added, conflicts in outcomes]
    return plan


def _owners(conn: Connection, workspace_id: str, keys: set[Key]) -> dict[Key, str]:
    """Who holds each identity: one query per (kind, namespace) group and chunk."""
    groups: dict[tuple[str, str], list[str]] = {}
    for kind, ns, value in keys:
        groups.setdefault((kind, ns), []).append(value)
    found: dict[Key, str] = {}
    for (kind, ns), values in groups.items():
        for chunk in _chunks(values):
            for value, contact_id in select_in(conn, contact_identities, ("value", "contact_id"),
                                               {"workspace_id": workspace_id, "kind": kind, "namespace": ns},
                                               "value", chunk):
                found[(kind, ns, value)] = contact_id
    return found


STATE_COLUMNS = ("id", "email", "phone", *PROFILE_KEYS, "attributes", "tags")


def _rows(conn: Connection, ids: set[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    columns = [contacts.c[name] for name in STATE_COLUMNS]
    for chunk in _chunks(sorted(ids)):
        for r in conn.execute(select(*columns).where(contacts.c.id.in_(chunk))).mappings():
            out[r["id"]] = {**r, "attributes": dict(r["attributes"] or {}), "tags": list(r["tags"] or [])}
    return out


def _linked(conn: Connection, store_id: str, ids: set[str]) -> set[str]:
    out: set[str] = set()
    for chunk in _chunks(sorted(ids)):
        out.update(conn.execute(select(contact_stores.c.contact_id).where(
            contact_stores.c.store_id == store_id, contact_stores.c.contact_id.in_(chunk))).scalars())
    return out


def _blank(contact_id: str, workspace_id: str, now: datetime) -> dict[str, Any]:
    return {"id": contact_id, "workspace_id": workspace_id, "email": None, "phone": None,
            **dict.fromkeys(PROFILE_KEYS), "attributes": {}, "tags": [], "created_at": now, "updated_at": now}


def _apply_person(state: dict[str, Any], person: Person, held: set[Key]) -> None:
    """Fold a person into a contact's row. The email/phone columns take the person's value only
    when the contact holds that identity (never one that another contact has)."""
    for key, value in person.profile.items():
        if value is not None:
            state[key] = value
    if person.email and (_EMAIL, "", person.email) in held:
        state["email"] = person.email
    if person.phone and (_PHONE, "", person.phone) in held:
        state["phone"] = person.phone
    new_tags = [t for t in person.tags if t not in state["tags"]]
    if new_tags:
        room = MAX_TAGS - len(state["tags"])
        if room < len(new_tags):
            log.warning("contact_tags_full", contact_id=state["id"], dropped=len(new_tags) - max(room, 0))
        if room > 0:
            state["tags"] = state["tags"] + new_tags[:room]
    if person.attributes and any(state["attributes"].get(k, _MISSING) != v for k, v in person.attributes.items()):
        merged = {**state["attributes"], **person.attributes}
        if len(json.dumps(merged)) > MAX_ATTRIBUTES_BYTES:
            log.warning("contact_attributes_full", contact_id=state["id"], limit=MAX_ATTRIBUTES_BYTES)
        else:
            state["attributes"] = merged


_MISSING = object()


def _write_identities(conn: Connection, plan: _Plan) -> bool:
    """Insert the new contacts and identities. False (and everything undone) when a concurrent
    writer took one of the identities first: the caller then plans the batch again."""
    if plan.new_contacts:
        insert_many(conn, contacts, [plan.states[i] for i in plan.new_contacts])
    if not plan.new_identities:
        return True
    inserted = insert_many(conn, contact_identities, plan.new_identities, ignore_conflicts=True)
    ids = [r["id"] for r in plan.new_identities]
    if inserted == len(ids):  # the driver counted every row in: no concurrent writer took any
        return True
    stored: set[str] = set()
    for chunk in _chunks(ids):
        stored.update(conn.execute(select(contact_identities.c.id).where(contact_identities.c.id.in_(chunk)))
                      .scalars())
    if len(stored) == len(ids):
        return True
    log.info("identity_race_lost", identities=len(ids) - len(stored))
    for chunk in _chunks(ids):
        conn.execute(delete(contact_identities).where(contact_identities.c.id.in_(chunk)))
    for chunk in _chunks(plan.new_contacts):
        conn.execute(delete(contacts).where(contacts.c.id.in_(chunk)))
    return False


_UPDATED = ("email", "phone", *PROFILE_KEYS, "attributes", "tags")


def _write_contacts(conn: Connection, workspace_id: str, store_id: str | None, plan: _Plan, now: datetime) -> None:
    if plan.changed_contacts:
        statement = (update(contacts).where(contacts.c.id == bindparam("_id"))
                     .values({name: bindparam(f"_{name}") for name in (*_UPDATED, "updated_at")}))
        conn.execute(statement, [{"_id": i, "_updated_at": now,
                                  **{f"_{name}": plan.states[i][name] for name in _UPDATED}}
                                 for i in sorted(plan.changed_contacts)])
    if store_id and plan.new_links:
        insert_many(conn, contact_stores, [{"contact_id": i, "store_id": store_id, "workspace_id": workspace_id,
                                            "created_at": now} for i in plan.new_links], ignore_conflicts=True)


# Byte -> Crockford base32 digit of its low 5 bits: 256 is a multiple of 32, so a uniformly random
# byte gives a uniformly random digit (5 random bits).
_CROCKFORD_DIGIT = bytes(b"0123456789ABCDEFGHJKMNPQRSTVWXYZ"[b % 32] for b in range(256))


def new_ids(prefix: str, count: int) -> list[str]:
    """`count` ids as domain.ids.new_id(prefix) makes them (prefix, 48-bit millisecond time, then
    80 random bits as 16 Crockford base32 digits), made at once: one urandom call and one
    bytes.translate for the whole batch instead of Python arithmetic per id."""
    if count <= 0:
        return []
    head = new_id(prefix)[:len(prefix) + 11]  # "ct_" + the 10 time digits of this millisecond
    digits = os.urandom(16 * count).translate(_CROCKFORD_DIGIT).decode("ascii")
    return [head + digits[i:i + 16] for i in range(0, 16 * count, 16)]


def _chunks(values: Sequence[str] | Iterable[str]) -> Iterator[list[str]]:
    items = list(values)
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]


# ---- aggregates -----------------------------------------------------------------------------------
AGGREGATES = ("orders_count", "total_spent", "first_order_at", "last_order_at", "last_checkout_at")


def recompute_aggregates(conn: Connection, contact_ids: Iterable[str], now: datetime) -> None:
    """Recompute contacts' commerce aggregates from the orders and checkouts tables (set-based).

    orders_count, first/last_order_at and total_spent ({currency: sum(total - refunded)}) count
    non-cancelled orders; last_checkout_at is the latest checkout start. updated_at is set to `now`
    only for contacts whose aggregates actually changed, so replays leave contacts untouched.
    """
    ids = sorted(set(contact_ids))
    if not ids:
        return
    o, ch = orders.c, checkouts.c
    for chunk in _chunks(ids):
        current = {r["id"]: r for r in conn.execute(
            select(contacts.c.id, contacts.c.orders_count, contacts.c.total_spent, contacts.c.first_order_at,
                   contacts.c.last_order_at, contacts.c.last_checkout_at)
            .where(contacts.c.id.in_(chunk))).mappings()}
        fresh: dict[str, dict[str, Any]] = {
            i: {"orders_count": 0, "total_spent": {}, "first_order_at": None, "last_order_at": None,
                "last_checkout_at": None} for i in current}  # the keys are AGGREGATES
        live = [o.contact_id.in_(chunk), o.cancelled_at.is_(None)]
        for r in conn.execute(select(o.contact_id, func.count(), func.min(o.placed_at), func.max(o.placed_at))
                              .where(*live).group_by(o.contact_id)):
            if r[0] in fresh:
                fresh[r[0]].update(orders_count=r[1], first_order_at=r[2], last_order_at=r[3])
        for r in conn.execute(select(o.contact_id, o.currency, func.sum(o.total_minor - o.refunded_minor))
                              .where(*live).group_by(o.contact_id, o.currency).order_by(o.contact_id, o.currency)):
            if r[0] in fresh:
                fresh[r[0]]["total_spent"][r[1]] = int(r[2])
        for r in conn.execute(select(ch.contact_id, func.max(ch.started_at)).where(ch.contact_id.in_(chunk))
                              .group_by(ch.contact_id)):
            if r[0] in fresh:
                fresh[r[0]]["last_checkout_at"] = r[1]
        changed = [{"_id": i, "_updated_at": now, **{f"_{k}": v for k, v in values.items()}}
                   for i, values in fresh.items() if any(current[i][k] != v for k, v in values.items())]
        if changed:
            names = [*AGGREGATES, "updated_at"]
            conn.execute(update(contacts).where(contacts.c.id == bindparam("_id"))
                         .values({k: bindparam(f"_{k}") for k in names}), changed)


# ---- explicit merge -------------------------------------------------------------------------------
MOVED = (events, orders, checkouts, messages, consent_records)
FILLED = ("email", "phone", *PROFILE_KEYS)


def merge(conn: Connection, workspace_id: str, keep_id: str, merge_id: str, *, reason: str, actor: str,
          now: datetime) -> dict[str, Any]:
    """Merge contact `merge_id` into `keep_id` and delete it; recorded in contact_merges.

    Everything that points at the merged contact moves (identities, store links, consent records,
    events, orders, checkouts, messages). The kept contact's empty profile fields are filled from
    the merged one, tags are unioned, attributes are merged with the kept contact's values winning,
    and the commerce aggregates are recomputed. Returns the kept contact (as services.contacts).
    """
    if keep_id == merge_id:
        raise InvalidInput.on("merge_id", "a contact cannot be merged into itself")
    reason = (reason or "").strip()
    if not reason or len(reason) > 200:
        raise InvalidInput.on("reason", "give a reason of 1-200 characters (it is kept in the merge record)")
    query = select(contacts).where(contacts.c.workspace_id == workspace_id, contacts.c.id.in_([keep_id, merge_id]))
    if conn.dialect.name == "postgresql":
        query = query.with_for_update()
    found = {r["id"]: dict(r) for r in conn.execute(query.order_by(contacts.c.id)).mappings()}
    for name, contact_id in (("contact", keep_id), ("merge_id", merge_id)):
        if contact_id not in found:
            raise NotFound(f"no contact {contact_id!r} in this workspace ({name})")
    keep, gone = found[keep_id], found[merge_id]
    conn.execute(update(contact_identities).where(contact_identities.c.contact_id == merge_id)
                 .values(contact_id=keep_id))
    _move_store_links(conn, workspace_id, keep_id, merge_id)
    for table in MOVED:
        conn.execute(update(table).where(table.c.contact_id == merge_id).values(contact_id=keep_id))
    conn.execute(insert(contact_merges).values(workspace_id=workspace_id, kept_contact_id=keep_id,
                                               merged_contact_id=merge_id, reason=reason, actor=actor[:200],
                                               created_at=now))
    conn.execute(delete(contacts).where(contacts.c.id == merge_id))
    tags = list(dict.fromkeys([*(keep["tags"] or []), *(gone["tags"] or [])]))[:MAX_TAGS]
    attributes = {**(gone["attributes"] or {}), **(keep["attributes"] or {})}
    if len(json.dumps(attributes)) > MAX_ATTRIBUTES_BYTES:
        attributes = keep["attributes"] or {}
    filled = {k: gone[k] for k in FILLED if keep[k] in (None, "") and gone[k] not in (None, "")}
    conn.execute(update(contacts).where(contacts.c.id == keep_id)
                 .values(**filled, tags=tags, attributes=attributes, updated_at=now))
    recompute_aggregates(conn, [keep_id], now)
    row = conn.execute(select(contacts).where(contacts.c.id == keep_id)).mappings().one()
    return _decorate(conn, [dict(row)])[0]


def _move_store_links(conn: Connection, workspace_id: str, keep_id: str, merge_id: str) -> None:
    s = contact_stores.c
    have = set(conn.execute(select(s.store_id).where(s.contact_id == keep_id)).scalars())
    moving = [r for r in conn.execute(select(s.store_id, s.created_at, s.customer_updated_at)
                                      .where(s.contact_id == merge_id)) if r.store_id not in have]
    if moving:
        conn.execute(insert(contact_stores), [{"contact_id": keep_id, "store_id": r.store_id,
                                               "workspace_id": workspace_id, "created_at": r.created_at,
                                               "customer_updated_at": r.customer_updated_at}
                                              for r in moving])
    conn.execute(delete(contact_stores).where(s.contact_id == merge_id))
