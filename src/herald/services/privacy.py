"""GDPR/CCPA: export everything held about a contact, and erase a contact.

Export (`export_contact`) is one JSON document, streamed in keyset pages so memory stays bounded
whatever the contact's history: the contact row, contacts merged into it (merged_into_id), its
identities, store links, consent history, merges naming it, suppressions of its addresses,
checkouts, orders (with lines, fulfilments and refunds), events, and messages with their events.
Dates are ISO 8601.

Erasure (`erase`) runs in the caller's ONE transaction and leaves only what reports need, with no
personal data:
- each email/phone of the contact (row and identities) becomes an `erased` tombstone suppression
  ("hmac:…", services/suppressions.py: for a phone on each of sms and whatsapp); plain suppression
  rows of those addresses are replaced by it;
- events, checkouts (also a checkout that only names one of the addresses), consent records,
  identities, store links and the merge records naming the contact are deleted;
- messages (its own, or sent to one of its addresses) are kept for counts and cost, with
  to_address -> its tombstone, context -> {}, subject -> NULL, contact_id -> NULL; their
  message_events keep status and time with detail -> {}; the jobs that sent them lose their error
  text (a provider's error can quote the address); a message still queued ends `suppressed`
  (suppressed:erased);
- orders keep their amounts for revenue reports, with contact_id -> NULL;
- stored API responses (idempotency keys) and processed store webhook bodies that contain one of
  the addresses are blanked;
- the contact row (and every contact merged into it) is deleted, and one `erasures` row records
  the actor and the counts. A second erase answers 404.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    text,
    true,
    tuple_,
    update,
)

from herald.db.tables import (
    api_keys,
    checkouts,
    consent_records,
    contact_identities,
    contact_merges,
    contact_stores,
    contacts,
    erasures,
    events,
    fulfillments,
    idempotency_keys,
    inbox_items,
    jobs,
    message_events,
    messages,
    order_lines,
    orders,
    push_subscriptions,
    refunds,
    suppressions,
    webhook_deliveries,
)
from herald.domain.errors import NotFound
from herald.services import suppressions as suppression_list

FORMAT: Final = "herald.contact-export.v1"
PAGE = 500  # rows per keyset page of an export or an erasure step
MAX_MERGE_DEPTH = 20  # contacts merged into contacts merged into ...: a bound against cycles


# ---- the people and addresses concerned --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Subject:
    """A contact and everything that identifies it: the contacts merged into it and its addresses
    as stored (emails keep the local part's case) and as the suppression list normalises them."""

    workspace_id: str
    contact_id: str
    contact_ids: tuple[str, ...]
    emails: tuple[str, ...]
    phones: tuple[str, ...]

    @property
    def email_keys(self) -> list[str]:
        return sorted({suppression_list.normalise("email", e) for e in self.emails})

    def pairs(self) -> list[tuple[str, str]]:
        """(channel, normalised address) of every address, on every channel it can be suppressed on."""
        found = [("email", e) for e in self.email_keys]
        found += [(ch, p) for p in self.phones for ch in suppression_list.PHONE_CHANNELS]
        return found


def load_subject(conn: Connection, workspace_id: str, contact_id: str, *, lock: bool = False) -> Subject:
    """The contact (404 if it is not in the workspace), the contacts merged into it, and their addresses."""
    query = select(contacts.c.id).where(contacts.c.workspace_id == workspace_id, contacts.c.id == contact_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    if conn.execute(query).first() is None:
        raise NotFound(f"no contact {contact_id!r} in this workspace")
    ids = _with_merged(conn, workspace_id, contact_id)
    emails: set[str] = set()
    phones: set[str] = set()
    for r in conn.execute(select(contacts.c.email, contacts.c.phone).where(contacts.c.id.in_(ids))):
        emails.update([r.email] if r.email else [])
        phones.update([r.phone] if r.phone else [])
    ci = contact_identities.c
    for r in conn.execute(select(ci.kind, ci.value).where(ci.contact_id.in_(ids), ci.kind.in_(("email", "phone")))):
        (emails if r.kind == "email" else phones).add(r.value)
    return Subject(workspace_id, contact_id, tuple(ids), tuple(sorted(emails)), tuple(sorted(phones)))


def _with_merged(conn: Connection, workspace_id: str, contact_id: str) -> list[str]:
    found = [contact_id]
    frontier = [contact_id]
    for _depth in range(MAX_MERGE_DEPTH):
        frontier = [i for i in conn.execute(select(contacts.c.id).where(
            contacts.c.workspace_id == workspace_id, contacts.c.merged_into_id.in_(frontier))).scalars()
            if i not in found]
        if not frontier:
            break
        found += frontier
    return found


# ---- export -----------------------------------------------------------------------------------------------
Reader = Callable[[Any], list[dict[str, Any]]]  # a query -> its rows


def export_contact(source: Engine | Connection, workspace_id: str, contact_id: str, *, now: datetime,
                   tombstone_key: bytes | None = None, store_id: str | None = None) -> Iterator[str]:
    """The export document as JSON text chunks. Raises NotFound at once (before any chunk) for an
    unknown contact. Given an Engine, every page is read in its own short transaction (a slow
    client then holds no lock); given a Connection, it must stay open until the chunks are consumed.

    With `store_id` (a store-scoped caller) the contact must be linked to that store, and the rows
    that belong to a store (store links, checkouts, orders, events, messages, store consent) are
    only that store's; the document says so in "scope"."""
    read = _reader(source)
    if store_id is not None and not read(select(contact_stores.c.contact_id).where(
            contact_stores.c.contact_id == contact_id, contact_stores.c.store_id == store_id)):
        raise NotFound(f"no contact {contact_id!r} in this workspace")
    if isinstance(source, Engine):
        with source.begin() as conn:
            subject = load_subject(conn, workspace_id, contact_id)
    else:
        subject = load_subject(source, workspace_id, contact_id)
    return _document(read, subject, now, tombstone_key, store_id)


def _reader(source: Engine | Connection) -> Reader:
    def read(query: Any) -> list[dict[str, Any]]:
        if isinstance(source, Engine):
            with source.begin() as conn:
                return [dict(r) for r in conn.execute(query).mappings()]
        return [dict(r) for r in source.execute(query).mappings()]
    return read


def _document(read: Reader, subject: Subject, now: datetime, tombstone_key: bytes | None,
              store_id: str | None) -> Iterator[str]:
    ids = list(subject.contact_ids)

    def of_store(table: Table, *, or_none: bool = False) -> ColumnElement[bool]:
        if store_id is None:
            return true()
        column = table.c.store_id
        return or_(column == store_id, column.is_(None)) if or_none else column == store_id

    contact_rows = read(select(contacts).where(contacts.c.id.in_(ids)).order_by(contacts.c.id))
    ci, cs, cr, cm = contact_identities.c, contact_stores.c, consent_records.c, contact_merges.c
    yield "{" + _pair("format", FORMAT) + "," + _pair("exported_at", now) + ","
    yield _pair("workspace_id", subject.workspace_id) + "," + _pair("scope", {"store_id": store_id}) + ","
    yield _pair("contact", next((r for r in contact_rows if r["id"] == subject.contact_id), None)) + ","
    yield _pair("merged_contacts", [r for r in contact_rows if r["id"] != subject.contact_id]) + ","
    yield _pair("identities", read(select(contact_identities).where(ci.contact_id.in_(ids)).order_by(ci.id))) + ","
    yield _pair("stores", read(select(contact_stores).where(cs.contact_id.in_(ids), of_store(contact_stores))
                               .order_by(cs.store_id))) + ","
    yield _pair("merges", read(select(contact_merges).where(
        cm.workspace_id == subject.workspace_id,
        or_(cm.kept_contact_id.in_(ids), cm.merged_contact_id.in_(ids))).order_by(cm.id))) + ","
    yield _pair("suppressions", _suppressions_of(read, subject, tombstone_key)) + ","
    sections: list[tuple[str, Iterable[Any]]] = [
        ("consent_records", _paged(read, consent_records,
                                   and_(cr.contact_id.in_(ids), of_store(consent_records, or_none=True)))),
        ("checkouts", _paged(read, checkouts, and_(_checkouts_of(subject), of_store(checkouts)))),
        ("orders", _orders(read, and_(orders.c.contact_id.in_(ids), of_store(orders)))),
        ("events", _paged(read, events, and_(events.c.contact_id.in_(ids), of_store(events)))),
        ("messages", _messages(read, and_(_messages_of(subject), of_store(messages)))),
        ("inbox_items", _paged(read, inbox_items, and_(inbox_items.c.contact_id.in_(ids), of_store(inbox_items)))),
        ("push_subscriptions", _paged(read, push_subscriptions, push_subscriptions.c.contact_id.in_(ids))),
    ]
    for i, (name, items) in enumerate(sections):
        yield from _array(name, items)
        yield "," if i < len(sections) - 1 else "}"


def _json(value: Any) -> str:
    return json.dumps(value, default=_plain, ensure_ascii=False, separators=(",", ":"))


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _pair(name: str, value: Any) -> str:
    return f"{json.dumps(name)}:{_json(value)}"


def _array(name: str, items: Iterable[Any]) -> Iterator[str]:
    yield json.dumps(name) + ":["
    first = True
    for item in items:
        yield ("" if first else ",") + _json(item)
        first = False
    yield "]"


def _paged(read: Reader, table: Table, where: ColumnElement[bool], page: int = PAGE) -> Iterator[dict[str, Any]]:
    """Rows of `table` matching `where`, in keyset pages over its id."""
    key = table.c.id
    query = select(table).where(where).order_by(key).limit(page)
    after: Any = None
    while True:  # each page starts after the previous one's last id: ends at the first short page
        rows = read(query if after is None else query.where(key > after))
        yield from rows
        if len(rows) < page:
            return
        after = rows[-1]["id"]


def _pages(rows: Iterator[dict[str, Any]], page: int = PAGE) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= page:
            yield batch
            batch = []
    if batch:
        yield batch


def _orders(read: Reader, where: ColumnElement[bool]) -> Iterator[dict[str, Any]]:
    """Orders with their lines, fulfilments and refunds (three queries per page of orders)."""
    for page in _pages(_paged(read, orders, where)):
        order_ids = [o["id"] for o in page]
        children = {name: _grouped(read, table, order_ids) for name, table in
                    (("lines", order_lines), ("fulfillments", fulfillments), ("refunds", refunds))}
        for order in page:
            yield {**order, **{name: rows.get(order["id"], []) for name, rows in children.items()}}


def _grouped(read: Reader, table: Table, order_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in read(select(table).where(table.c.order_id.in_(order_ids)).order_by(table.c.id)):
        out.setdefault(row["order_id"], []).append(row)
    return out


def _messages(read: Reader, where: ColumnElement[bool]) -> Iterator[dict[str, Any]]:
    """Messages with their delivery/engagement events (one query per page of messages)."""
    me = message_events.c
    for page in _pages(_paged(read, messages, where)):
        history: dict[str, list[dict[str, Any]]] = {}
        for row in read(select(message_events).where(me.message_id.in_([m["id"] for m in page])).order_by(me.id)):
            history.setdefault(row["message_id"], []).append(row)
        for message in page:
            yield {**message, "events": history.get(message["id"], [])}


def _suppressions_of(read: Reader, subject: Subject, tombstone_key: bytes | None) -> list[dict[str, Any]]:
    s = suppressions.c
    pairs = subject.pairs()
    if tombstone_key is not None:
        pairs += [(ch, suppression_list.tombstone(tombstone_key, ch, a)) for ch, a in list(pairs)]
    if not pairs:
        return []
    return read(select(suppressions).where(s.workspace_id == subject.workspace_id,
                                           tuple_(s.channel, s.address).in_(pairs)).order_by(s.id))


# ---- which rows concern the subject -----------------------------------------------------------------------
def _lowered(values: Iterable[str]) -> list[str]:
    return sorted({v.lower() for v in values})


def _checkouts_of(subject: Subject) -> ColumnElement[bool]:
    c = checkouts.c
    named: list[ColumnElement[bool]] = [c.contact_id.in_(subject.contact_ids)]
    if subject.emails:
        named.append(func.lower(c.email).in_(_lowered(subject.emails)))
    if subject.phones:
        named.append(c.phone.in_(subject.phones))
    return and_(c.workspace_id == subject.workspace_id, or_(*named))


def _messages_of(subject: Subject) -> ColumnElement[bool]:
    m = messages.c
    named: list[ColumnElement[bool]] = [m.contact_id.in_(subject.contact_ids)]
    if subject.emails:
        named.append(and_(m.channel == "email", func.lower(m.to_address).in_(_lowered(subject.emails))))
    if subject.phones:
        named.append(and_(m.channel.in_(suppression_list.PHONE_CHANNELS), m.to_address.in_(subject.phones)))
    return and_(m.workspace_id == subject.workspace_id, or_(*named))


# ---- erasure ------------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Erasure:
    erasure_id: int
    contact_id: str
    removed: dict[str, int]
    tombstones: int


def erase(conn: Connection, workspace_id: str, contact_id: str, *, tombstone_key: bytes, actor: str,
          now: datetime) -> Erasure:
    """Erase the contact (and the contacts merged into it) as the module docstring says, in the
    caller's transaction. NotFound if there is no such contact (also for a second erase)."""
    subject = load_subject(conn, workspace_id, contact_id, lock=True)
    removed: dict[str, int] = {}
    tombstones = _tombstone(conn, subject, tombstone_key, now, removed)
    _anonymise_messages(conn, subject, tombstone_key, now, removed)
    removed["orders"] = _count(conn.execute(update(orders).where(orders.c.contact_id.in_(subject.contact_ids))
                                            .values(contact_id=None)))
    removed["events"] = _count(conn.execute(delete(events).where(events.c.contact_id.in_(subject.contact_ids))))
    removed["checkouts"] = _count(conn.execute(delete(checkouts).where(_checkouts_of(subject))))
    ids = subject.contact_ids
    for name, table in (("consent_records", consent_records), ("identities", contact_identities),
                        ("store_links", contact_stores)):
        removed[name] = _count(conn.execute(delete(table).where(table.c.contact_id.in_(ids))))
    cm = contact_merges.c
    removed["merges"] = _count(conn.execute(delete(contact_merges).where(
        cm.workspace_id == workspace_id, or_(cm.kept_contact_id.in_(ids), cm.merged_contact_id.in_(ids)))))
    needles = _needles(subject)
    removed["idempotency_keys"] = _forget_responses(conn, workspace_id, needles)
    removed["webhook_deliveries"] = _blank_webhooks(conn, workspace_id, needles)
    conn.execute(update(contacts).where(contacts.c.id.in_(ids)).values(merged_into_id=None))
    removed["contacts"] = _count(conn.execute(delete(contacts).where(contacts.c.id.in_(ids))))
    result = conn.execute(insert(erasures).values(
        workspace_id=workspace_id, contact_id=contact_id, actor=actor[:200], removed=removed,
        tombstones=tombstones, created_at=now))
    (erasure_id,) = result.inserted_primary_key or (0,)
    return Erasure(int(erasure_id), contact_id, removed, tombstones)


def _count(result: Any) -> int:
    return max(int(result.rowcount), 0)


def _tombstone(conn: Connection, subject: Subject, key: bytes, now: datetime, removed: dict[str, int]) -> int:
    """Add an `erased` tombstone per (channel, address) and delete the plain rows it replaces."""
    pairs = subject.pairs()
    s = suppressions.c
    if pairs:
        removed["suppressions"] = _count(conn.execute(delete(suppressions).where(
            s.workspace_id == subject.workspace_id, tuple_(s.channel, s.address).in_(pairs))))
    else:
        removed["suppressions"] = 0
    stones = [suppression_list.Entry(ch, suppression_list.tombstone(key, ch, a), "erased") for ch, a in pairs]
    suppression_list.add_many(conn, subject.workspace_id, stones, source="erasure", now=now)
    return len(stones)


def _anonymise_messages(conn: Connection, subject: Subject, key: bytes, now: datetime,
                        removed: dict[str, int]) -> None:
    """Blank the personal data of the subject's messages, their events and send jobs, a page at a
    time. A message still queued ends `suppressed` (reason suppressed:erased): it must not go out,
    and it ends with a reason (G2). One already being sent is left to its worker."""
    m, me = messages.c, message_events.c
    removed["messages"] = removed["message_events"] = removed["jobs"] = removed["queued_messages_suppressed"] = 0
    query = select(m.id, m.channel, m.to_address).where(_messages_of(subject)).order_by(m.id).limit(PAGE)
    while True:  # an anonymised message no longer matches (contact_id NULL, to_address a tombstone)
        page = conn.execute(query).all()
        if not page:
            return
        by_address: dict[tuple[str, str], list[str]] = {}
        for r in page:
            by_address.setdefault((r.channel, r.to_address), []).append(r.id)
        for (channel, address), ids in by_address.items():
            conn.execute(update(messages).where(m.id.in_(ids)).values(
                to_address=suppression_list.tombstone(key, channel, address), context={}, subject=None,
                contact_id=None))
        ids = [r.id for r in page]
        removed["queued_messages_suppressed"] += _count(conn.execute(
            update(messages).where(m.id.in_(ids), m.status == "queued")
            .values(status="suppressed", status_reason="suppressed:erased", updated_at=now)))
        removed["message_events"] += _count(conn.execute(update(message_events).where(me.message_id.in_(ids))
                                                         .values(detail={})))
        removed["messages"] += len(ids)
        removed["jobs"] += _scrub_jobs(conn, subject.workspace_id, ids)


def _scrub_jobs(conn: Connection, workspace_id: str, message_ids: Sequence[str]) -> int:
    """Remove the error text of the jobs of these messages (a provider's error may quote the address)."""
    j = jobs.c
    return _count(conn.execute(update(jobs).where(
        j.workspace_id == workspace_id,
        j.payload["message_id"].as_string().in_(list(message_ids))).values(last_error=None, errors=[])))


def _needles(subject: Subject) -> list[str]:
    """The subject's addresses, lower-cased, to look for (case-insensitively) in stored documents."""
    return sorted({*(e.lower() for e in subject.emails), *subject.phones})


def _like(needle: str) -> str:
    return "%" + needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def _forget_responses(conn: Connection, workspace_id: str, needles: list[str]) -> int:
    """Delete stored idempotent responses (kept 24 h) that quote one of the addresses."""
    if not needles:
        return 0
    k = idempotency_keys.c
    keys = select(api_keys.c.id).where(api_keys.c.workspace_id == workspace_id)
    return _count(conn.execute(delete(idempotency_keys).where(
        k.api_key_id.in_(keys), or_(*(k.response_body.ilike(_like(n), escape="\\") for n in needles)))))


def _blank_webhooks(conn: Connection, workspace_id: str, needles: list[str]) -> int:
    """Blank the raw body, headers and detail of processed store webhooks that contain one of the
    addresses (ASCII case-insensitively, as written in the body). The row stays, so a redelivery of
    the same event is still recognised as a duplicate. Deliveries not yet processed are left:
    processing them is what records the order."""
    if not needles:
        return 0
    w = webhook_deliveries.c
    # The body is bytes: PostgreSQL lowers its escape encoding (ASCII kept, other bytes as \ooo),
    # SQLite its text cast.
    sql = ("position(:needle in lower(encode(body, 'escape'))) > 0" if conn.dialect.name == "postgresql"
           else "instr(lower(CAST(body AS TEXT)), :needle) > 0")
    blanked = 0
    for needle in needles:
        contains = text(sql).bindparams(bindparam("needle", needle))
        blanked += _count(conn.execute(update(webhook_deliveries).where(
            w.workspace_id == workspace_id, w.status != "received", contains)
            .values(body=b"", headers={}, detail=None)))
    return blanked
