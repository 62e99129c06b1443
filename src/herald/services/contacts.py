"""Contacts: one person across the workspace's stores, found by any identity (email, E.164
phone, external id), each identity unique per workspace. A store-scoped caller sees only the
contacts linked to its store (contact_stores)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, exists, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError

from herald.db.tables import contact_identities, contact_merges, contact_stores, contacts, stores
from herald.domain import contacts as rules
from herald.domain.auth import Principal
from herald.domain.contacts import IdentityKind, InvalidValue
from herald.domain.errors import Conflict, FieldProblem, InvalidInput, NotFound
from herald.domain.ids import new_id
from herald.services.pagination import Page, decode_cursor, keyset_page, one_visible, page_of

MAX_ATTRIBUTES_BYTES = 16_384
MAX_TAGS = 100
PROFILE_FIELDS = ("email", "phone", "first_name", "last_name", "country", "language", "timezone",
                  "attributes", "tags")
Identity = tuple[str, str, str]  # (kind, namespace, value)


# ---- validation ---------------------------------------------------------------------------
def normalize(data: dict[str, Any], *, current_country: str | None = None) -> dict[str, Any]:
    """Normalise the fields present in `data`; collect every problem before raising."""
    out: dict[str, Any] = {}
    problems: list[FieldProblem] = []

    def field(name: str, fn: Callable[[Any], Any]) -> None:
        if name not in data:
            return
        value = data[name]
        if value is None or value == "":
            out[name] = None if name not in ("attributes", "tags", "external_ids") else fn(value)
            return
        try:
            out[name] = fn(value)
        except InvalidValue as exc:
            problems.append(FieldProblem(name, str(exc)))

    field("country", rules.normalize_country)
    country = out.get("country", current_country)
    field("email", rules.normalize_email)
    field("phone", lambda v: rules.normalize_phone(v, country))
    field("language", rules.normalize_language)
    field("timezone", rules.normalize_timezone)
    field("first_name", _name)
    field("last_name", _name)
    field("attributes", _attributes)
    field("tags", _tags)
    field("external_ids", _external_ids)
    if "store_ids" in data:
        out["store_ids"] = list(dict.fromkeys(data["store_ids"] or []))
    if problems:
        raise InvalidInput("; ".join(f"{p.field}: {p.reason}" for p in problems), fields=problems)
    return out


def _name(value: Any) -> str:
    text = str(value).strip()
    if len(text) > 200:
        raise InvalidValue("must be at most 200 characters")
    return text


def _attributes(value: Any) -> dict[str, Any]:
    value = value or {}
    if not isinstance(value, dict):
        raise InvalidValue("must be a JSON object")
    if len(json.dumps(value)) > MAX_ATTRIBUTES_BYTES:
        raise InvalidValue(f"must serialise to at most {MAX_ATTRIBUTES_BYTES} bytes of JSON")
    return value


def _tags(value: Any) -> list[str]:
    tags = [str(t).strip() for t in (value or [])]
    if any(not t or len(t) > 64 for t in tags):
        raise InvalidValue("each tag must be 1-64 characters")
    unique = list(dict.fromkeys(tags))
    if len(unique) > MAX_TAGS:
        raise InvalidValue(f"at most {MAX_TAGS} tags")
    return unique


def _external_ids(value: Any) -> dict[str, str]:
    if not isinstance(value or {}, dict):
        raise InvalidValue("must be an object of namespace -> id, e.g. {\"shopify\": \"123\"}")
    return dict(rules.normalize_external_id(ns, v) for ns, v in (value or {}).items())


def _identities(fields: dict[str, Any]) -> list[Identity]:
    found: list[Identity] = []
    if fields.get("email"):
        found.append((IdentityKind.EMAIL.value, "", fields["email"]))
    if fields.get("phone"):
        found.append((IdentityKind.PHONE.value, "", fields["phone"]))
    for ns, value in (fields.get("external_ids") or {}).items():
        found.append((IdentityKind.EXTERNAL.value, ns, value))
    return found


# ---- reading ------------------------------------------------------------------------------
def _visible(who: Principal) -> Any:
    query = select(contacts).where(contacts.c.workspace_id == who.workspace_id)
    if who.store_id is not None:
        linked = exists().where(contact_stores.c.contact_id == contacts.c.id,
                                contact_stores.c.store_id == who.store_id)
        query = query.where(linked)
    return query


def _load(conn: Connection, who: Principal, contact_id: str) -> dict[str, Any]:
    return one_visible(conn, _visible(who), contact_id, "contact")


def _decorate(conn: Connection, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Add external_ids and store_ids to a page of contacts with two set-based queries."""
    ids = [r["id"] for r in rows]
    externals: dict[str, dict[str, str]] = {i: {} for i in ids}
    links: dict[str, list[str]] = {i: [] for i in ids}
    if ids:
        for r in conn.execute(select(contact_identities.c.contact_id, contact_identities.c.namespace,
                                     contact_identities.c.value)
                              .where(contact_identities.c.contact_id.in_(ids),
                                     contact_identities.c.kind == IdentityKind.EXTERNAL.value)):
            externals[r.contact_id][r.namespace] = r.value
        for link in conn.execute(select(contact_stores.c.contact_id, contact_stores.c.store_id)
                                 .where(contact_stores.c.contact_id.in_(ids))
                                 .order_by(contact_stores.c.store_id)):
            links[link.contact_id].append(link.store_id)
    return [{**r, "external_ids": externals[r["id"]], "store_ids": links[r["id"]]} for r in rows]


def get_contact(conn: Connection, who: Principal, contact_id: str) -> dict[str, Any]:
    try:
        return _decorate(conn, [_load(conn, who, contact_id)])[0]
    except NotFound as exc:
        kept = _merged_into(conn, who, contact_id)
        if kept is None:
            raise
        raise NotFound(f"{exc.detail}; it was merged into {kept!r}") from None


def _merged_into(conn: Connection, who: Principal, contact_id: str) -> str | None:
    """Where a merged (deleted) contact went, following later merges, if the caller can see it."""
    m = contact_merges.c
    seen = {contact_id}
    current = contact_id
    for _hop in range(20):  # chains of merges are short; the bound only guards against cycles
        kept = conn.execute(select(m.kept_contact_id).where(m.workspace_id == who.workspace_id,
                                                           m.merged_contact_id == current)
                            .order_by(m.id.desc()).limit(1)).scalar()
        if kept is None or kept in seen:
            return None
        if conn.execute(_visible(who).where(contacts.c.id == kept)).first() is not None:
            return str(kept)
        seen.add(kept)
        current = kept
    return None


def list_contacts(conn: Connection, who: Principal, *, limit: int, cursor: str | None,
                  email: str | None = None, phone: str | None = None,
                  store_id: str | None = None) -> Page[dict[str, Any]]:
    query = _visible(who)
    if email:
        query = query.where(contacts.c.email == _lookup(rules.normalize_email, email, "email"))
    if phone:
        query = query.where(contacts.c.phone == _lookup(lambda v: rules.normalize_phone(v), phone, "phone"))
    if store_id:
        query = query.where(exists().where(contact_stores.c.contact_id == contacts.c.id,
                                           contact_stores.c.store_id == store_id))
    page = keyset_page(conn, query, limit=limit, cursor=cursor)
    return Page(_decorate(conn, page.items), page.next_cursor)


def _lookup(fn: Callable[[str], str], value: str, name: str) -> str:
    try:
        return fn(value)
    except InvalidValue as exc:
        raise InvalidInput.on(name, str(exc)) from None


# ---- writing ------------------------------------------------------------------------------
def create_contact(conn: Connection, who: Principal, data: dict[str, Any], now: datetime) -> dict[str, Any]:
    fields = normalize(data)
    identities = _identities(fields)
    if not identities:
        raise InvalidInput("a contact needs at least one of email, phone or external_ids",
                           fields=[FieldProblem("email", "give an email, a phone or an external id")])
    store_ids = _store_links(conn, who, fields.pop("store_ids", None))
    _refuse_taken(conn, who, identities, exclude=None)
    contact_id = new_id("ct")
    row: dict[str, Any] = {"id": contact_id, "workspace_id": who.workspace_id, "created_at": now, "updated_at": now,
           "attributes": {}, "tags": [], **{k: fields.get(k) for k in PROFILE_FIELDS if k in fields}}
    row["attributes"] = row.get("attributes") or {}
    row["tags"] = row.get("tags") or []
    try:
        with conn.begin_nested():
            conn.execute(insert(contacts).values(row))
            _add_identities(conn, who.workspace_id, contact_id, identities, now)
            _link_stores(conn, who.workspace_id, contact_id, store_ids, now)
    except IntegrityError:
        _refuse_taken(conn, who, identities, exclude=None)  # a concurrent writer took one
        raise
    return get_contact(conn, who, contact_id)


def update_contact(conn: Connection, who: Principal, contact_id: str, data: dict[str, Any],
                   now: datetime) -> dict[str, Any]:
    current = _load(conn, who, contact_id)
    fields = normalize(data, current_country=current["country"])
    store_ids = fields.pop("store_ids", None)
    changes = {k: fields[k] for k in PROFILE_FIELDS if k in fields}
    for key in ("attributes", "tags"):
        if key in changes and changes[key] is None:
            changes[key] = {} if key == "attributes" else []
    externals = fields["external_ids"] if "external_ids" in fields else _decorate(conn, [current])[0]["external_ids"]
    identities = _identities({**current, **changes, "external_ids": externals})
    if not identities:
        raise InvalidInput("a contact must keep at least one of email, phone or external_ids")
    _refuse_taken(conn, who, identities, exclude=contact_id)
    conn.execute(update(contacts).where(contacts.c.id == contact_id).values(**changes, updated_at=now))
    conn.execute(delete(contact_identities).where(contact_identities.c.contact_id == contact_id))
    _add_identities(conn, who.workspace_id, contact_id, identities, now)
    if store_ids is not None:
        _link_stores(conn, who.workspace_id, contact_id, _store_links(conn, who, store_ids), now)
    return get_contact(conn, who, contact_id)


def delete_contact(conn: Connection, who: Principal, contact_id: str) -> None:
    """A workspace key deletes the contact. A store key unlinks it from its store, and deletes
    it only when no other store still knows it."""
    _load(conn, who, contact_id)
    if who.store_id is not None:
        conn.execute(delete(contact_stores).where(contact_stores.c.contact_id == contact_id,
                                                  contact_stores.c.store_id == who.store_id))
        remaining = conn.execute(select(contact_stores.c.store_id)
                                 .where(contact_stores.c.contact_id == contact_id)).first()
        if remaining is not None:
            return
    conn.execute(delete(contacts).where(contacts.c.id == contact_id))


def _store_links(conn: Connection, who: Principal, requested: list[str] | None) -> list[str]:
    if who.store_id is not None:
        if requested and set(requested) != {who.store_id}:
            bad = next(i for i, s in enumerate(requested) if s != who.store_id)
            raise NotFound(f"no store {requested[bad]!r} in this workspace")
        return [who.store_id]
    wanted = list(requested or [])
    if not wanted:
        return []
    known = {r.id for r in conn.execute(select(stores.c.id).where(
        stores.c.workspace_id == who.workspace_id, stores.c.id.in_(wanted)))}
    problems = [FieldProblem(f"store_ids.{i}", f"no store {s!r} in this workspace")
                for i, s in enumerate(wanted) if s not in known]
    if problems:
        raise InvalidInput(problems[0].reason, fields=problems)
    return wanted


def _refuse_taken(conn: Connection, who: Principal, identities: list[Identity], exclude: str | None) -> None:
    query = select(contact_identities.c.kind, contact_identities.c.namespace,
                   contact_identities.c.contact_id).where(
        contact_identities.c.workspace_id == who.workspace_id,
        tuple_(contact_identities.c.kind, contact_identities.c.namespace,
               contact_identities.c.value).in_(identities))
    if exclude is not None:
        query = query.where(contact_identities.c.contact_id != exclude)
    taken = conn.execute(query).first()
    if taken is None:
        return
    field = taken.kind if taken.kind != IdentityKind.EXTERNAL.value else f"external_ids.{taken.namespace}"
    detail = f"another contact already has this {field}"
    try:
        _load(conn, who, taken.contact_id)
        detail += f": {taken.contact_id}"
    except NotFound:
        detail += " (in a store this key cannot see)"
    raise Conflict(detail, fields=[FieldProblem(field, "already belongs to another contact")])


def _add_identities(conn: Connection, workspace_id: str, contact_id: str,
                    identities: Iterable[Identity], now: datetime) -> None:
    rows = [{"id": new_id("cid"), "workspace_id": workspace_id, "contact_id": contact_id, "kind": k,
             "namespace": ns, "value": v, "created_at": now} for k, ns, v in identities]
    if rows:
        conn.execute(insert(contact_identities), rows)


def _link_stores(conn: Connection, workspace_id: str, contact_id: str, store_ids: list[str],
                 now: datetime) -> None:
    linked = {r.store_id for r in conn.execute(select(contact_stores.c.store_id)
                                               .where(contact_stores.c.contact_id == contact_id))}
    rows = [{"contact_id": contact_id, "store_id": s, "workspace_id": workspace_id, "created_at": now}
            for s in store_ids if s not in linked]
    if rows:
        conn.execute(insert(contact_stores), rows)


# ---- explicit merges ----------------------------------------------------------------------
def merge_contacts(conn: Connection, who: Principal, keep_id: str, merge_id: str, *, reason: str,
                   now: datetime) -> dict[str, Any]:
    """Merge `merge_id` into `keep_id` (services.identity.merge), both of which the caller must
    see: a store key merges only contacts linked to its store. The kept contact keeps its id and
    gains every identity, store link, order, checkout, event, message and consent record of the
    merged one, which is deleted; the merge is recorded with the caller's key id as actor."""
    from herald.services import identity  # identity builds on this module: import at call time

    _load(conn, who, keep_id)
    if keep_id != merge_id:
        try:
            _load(conn, who, merge_id)
        except NotFound as exc:
            raise NotFound(f"{exc.detail} (merge_id)",
                           fields=[FieldProblem("merge_id", "no such contact visible to this key")]) from None
    return identity.merge(conn, who.workspace_id, keep_id, merge_id, reason=reason, actor=who.api_key_id,
                          now=now)


def list_merges(conn: Connection, who: Principal, contact_id: str, *, limit: int,
                cursor: str | None) -> Page[dict[str, Any]]:
    """The merges a contact kept (oldest first), keyset-paginated by the record's integer id."""
    _load(conn, who, contact_id)
    m = contact_merges.c
    query = (select(m.id, m.kept_contact_id, m.merged_contact_id, m.reason, m.actor, m.created_at)
             .where(m.workspace_id == who.workspace_id, m.kept_contact_id == contact_id))
    after = decode_cursor(cursor)
    if after is not None:
        if not after.isdigit() or len(after) > 19:
            raise InvalidInput.on("cursor", "is not a cursor this API returned; start without one")
        query = query.where(m.id > int(after))
    rows = [dict(r) for r in conn.execute(query.order_by(m.id).limit(limit + 1)).mappings()]
    return page_of(rows, limit, lambda r: str(r["id"]))
