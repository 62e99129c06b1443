"""Write typed store objects (domain/commerce.py) into the database, whatever path brought them:
store webhooks (services/intake.py), backfill (services/sync.py) and CSV imports.

One call takes a batch and is set-based (a handful of queries per batch, not per object):

    customers (standalone and embedded in orders/checkouts) -> services.identity (contacts, store
    link) and marketing consent -> services.consent;  orders (+ lines) -> checkouts -> fulfilments
    -> refunds -> products;  then the touched contacts' aggregates are recomputed.

Exactly-once and order-independence (G5):
- every object is upserted by (store, external id); a stored version with a newer
  `source_updated_at` is never overwritten by an older delivery, and an identical version writes
  nothing (replays and re-imports are no-ops, counted as `unchanged`);
- customers likewise: the store's updated_at of the newest customer version applied is kept per
  (contact, store), and an older one only finds its contact (no profile, tag or identity change);
- refunds are immutable and inserted once; an order's refunded amount is the larger of what the
  order payload says and the sum of its stored refunds;
- a fulfilment or refund whose order is not stored yet raises MissingOrder *before anything is
  written*, so the caller can retry the whole delivery later (the order webhook may still come).

Commerce events: the first time an order, checkout, fulfilment or refund is stored (and when an
order becomes cancelled) one event is written for flows and segments, named as in Segment's
e-commerce spec so that a custom site's own `track` calls mean the same: "Order Completed",
"Checkout Started", "Order Cancelled", "Order Refunded", plus "Fulfillment Created". Each has a
dedupe key ("<kind>:<store>:<external id>"), so it exists once however often the data arrives.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from herald.db.bulk import insert_many
from herald.db.tables import (
    checkouts,
    contact_identities,
    contact_stores,
    events,
    fulfillments,
    order_lines,
    orders,
    products,
    refunds,
)
from herald.domain.commerce import (
    CheckoutData,
    CustomerData,
    FulfillmentData,
    LineData,
    OrderData,
    ProductData,
    RefundData,
    StoreInfo,
    StoreObject,
)
from herald.domain.connectors import BadPayload
from herald.domain.contacts import IdentityKind
from herald.domain.ids import new_id
from herald.domain.money import from_minor
from herald.services import consent, identity

CHUNK = 1000
MAX_EXTERNAL_ID = {"orders": 64, "checkouts": 255, "fulfillments": 255, "refunds": 255, "products": 255}


class MissingOrder(Exception):
    """A fulfilment or refund refers to an order that is not stored yet."""

    def __init__(self, store_id: str, external_ids: Sequence[str]) -> None:
        shown = ", ".join(sorted(external_ids)[:5])
        super().__init__(f"order(s) {shown} of store {store_id} not received yet")
        self.external_ids = list(external_ids)


@dataclass(slots=True)
class ApplyReport:
    """What a batch changed. `unchanged` counts objects already stored exactly as given (or a
    newer version of them); `problems` are values dropped as invalid (the rest of the object
    landed), e.g. 'order 1001: phone: not a valid number'."""

    contacts: int = 0  # created or changed
    orders: int = 0
    checkouts: int = 0
    fulfillments: int = 0
    refunds: int = 0
    products: int = 0
    consents: int = 0
    unchanged: int = 0
    problems: list[str] = field(default_factory=list)
    contact_ids: list[str] = field(default_factory=list)  # per CustomerData given, in order ("" if no identity)
    events: list[dict[str, Any]] = field(default_factory=list, repr=False)  # commerce events to write

    @property
    def written(self) -> int:
        return self.contacts + self.orders + self.checkouts + self.fulfillments + self.refunds + self.products


def apply(conn: Connection, store: StoreInfo, objects: Sequence[StoreObject], now: datetime, *,
          source: str) -> ApplyReport:
    """Write a batch of store objects in the caller's transaction. See the module docstring."""
    batch = _Batch.sort(objects)
    report = ApplyReport()
    _check_ids(batch)
    order_ids = _order_ids_needed(conn, store, batch)  # raises MissingOrder before any write
    people = _people(conn, store, batch, now, source, report)
    touched: set[str] = set()
    _write_orders(conn, store, batch.orders, people, order_ids, now, report, touched)
    _write_checkouts(conn, store, batch.checkouts, people, order_ids, now, report, touched)
    _write_fulfillments(conn, store, batch.all_fulfillments(), order_ids, now, report)
    _write_refunds(conn, store, batch.all_refunds(), order_ids, now, report, touched)
    _write_products(conn, store, batch.products, now, report)
    identity.recompute_aggregates(conn, touched, now)
    _emit(conn, store, report.events, source, now)
    return report


ORDER_COMPLETED, CHECKOUT_STARTED, ORDER_CANCELLED, ORDER_REFUNDED, FULFILLMENT_CREATED = (
    "Order Completed", "Checkout Started", "Order Cancelled", "Order Refunded", "Fulfillment Created")


def _event(name: str, key: str, contact_id: str | None, occurred_at: datetime, **properties: Any) -> dict[str, Any]:
    return {"name": name, "dedupe_key": key, "contact_id": contact_id, "occurred_at": occurred_at,
            "properties": {k: v for k, v in properties.items() if v not in (None, [], "")}}


def _emit(conn: Connection, store: StoreInfo, pending: list[dict[str, Any]], source: str, now: datetime) -> None:
    if not pending:
        return
    rows = [{**e, "id": new_id("evt"), "workspace_id": store.workspace_id, "store_id": store.id,
             "source": source[:32], "kind": "track", "dedupe_key": e["dedupe_key"][:255],
             "received_at": now, "processed_at": now} for e in pending]
    insert_many(conn, events, rows, ignore_conflicts=True)


# ---- sorting the batch ---------------------------------------------------------------------------
@dataclass(slots=True)
class _Batch:
    customers: list[CustomerData] = field(default_factory=list)
    orders: list[OrderData] = field(default_factory=list)
    checkouts: list[CheckoutData] = field(default_factory=list)
    fulfillments: list[FulfillmentData] = field(default_factory=list)
    refunds: list[RefundData] = field(default_factory=list)
    products: list[ProductData] = field(default_factory=list)

    @classmethod
    def sort(cls, objects: Iterable[StoreObject]) -> _Batch:
        batch = cls()
        lists: dict[type, list[Any]] = {CustomerData: batch.customers, OrderData: batch.orders,
                                        CheckoutData: batch.checkouts, FulfillmentData: batch.fulfillments,
                                        RefundData: batch.refunds, ProductData: batch.products}
        for obj in objects:
            target = lists.get(type(obj))
            if target is None:
                raise TypeError(f"not a store object: {type(obj).__name__}")
            target.append(obj)
        # Within one batch the newest version of an object wins, whatever the order given.
        batch.orders = _newest(batch.orders)
        batch.checkouts = _newest(batch.checkouts)
        batch.products = _newest(batch.products)
        return batch

    def all_fulfillments(self) -> list[FulfillmentData]:
        return _newest([*self.fulfillments, *(f for o in self.orders for f in o.fulfillments)])

    def all_refunds(self) -> list[RefundData]:
        seen: dict[str, RefundData] = {}
        for r in [*self.refunds, *(r for o in self.orders for r in o.refunds)]:
            seen.setdefault(r.external_id, r)
        return list(seen.values())


def _newest(items: list[Any]) -> list[Any]:
    best: dict[str, Any] = {}
    for item in items:
        held = best.get(item.external_id)
        if held is None or _newer_or_same(item.source_updated_at, held.source_updated_at):
            best[item.external_id] = item
    return list(best.values())


def _newer_or_same(incoming: datetime | None, stored: datetime | None) -> bool:
    return incoming is None or stored is None or incoming >= stored


def _check_ids(batch: _Batch) -> None:
    for kind, items in (("orders", batch.orders), ("checkouts", batch.checkouts),
                        ("fulfillments", batch.all_fulfillments()), ("refunds", batch.all_refunds()),
                        ("products", batch.products)):
        limit = MAX_EXTERNAL_ID[kind]
        for item in items:
            if not item.external_id or len(item.external_id) > limit:
                raise BadPayload(f"{kind[:-1]} id {item.external_id[:80]!r} must be 1-{limit} characters")


def _order_ids_needed(conn: Connection, store: StoreInfo, batch: _Batch) -> dict[str, str]:
    """external order id -> our order id, for the orders the batch's fulfilments and refunds refer
    to outside the batch (the batch's own orders are added by _write_orders). Raises MissingOrder
    if one of them is unknown."""
    given = {o.external_id for o in batch.orders}
    wanted = {f.order_external_id for f in batch.fulfillments} | {r.order_external_id for r in batch.refunds}
    wanted -= given
    found = _existing(conn, orders, store.id, wanted, [orders.c.id])
    missing = sorted(wanted - set(found))
    if missing:
        raise MissingOrder(store.id, missing)
    return {ext: row["id"] for ext, row in found.items()}


def _existing(conn: Connection, table: Any, store_id: str, external_ids: Iterable[str],
              columns: Sequence[Any] | None = None) -> dict[str, dict[str, Any]]:
    ids = sorted(set(external_ids))
    out: dict[str, dict[str, Any]] = {}
    picked = [table.c.external_id, *columns] if columns is not None else [table]
    for chunk in _chunks(ids):
        for r in conn.execute(select(*picked).where(table.c.store_id == store_id,
                                                    table.c.external_id.in_(chunk))).mappings():
            out[r["external_id"]] = dict(r)
    return out


def _chunks(items: Sequence[Any]) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start:start + CHUNK]


# ---- people ------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Person:
    contact_id: str | None
    email: str | None
    phone: str | None


def _people(conn: Connection, store: StoreInfo, batch: _Batch, now: datetime, source: str,
            report: ApplyReport) -> dict[int, _Person]:
    """Resolve every customer of the batch (by id(obj)) to a contact, record their consent."""
    given: list[tuple[CustomerData, str]] = [(c, f"customer {c.external_id or c.email or '?'}")
                                             for c in batch.customers]
    given += [(o.customer, f"order {o.external_id}") for o in batch.orders if o.customer is not None]
    given += [(c.customer, f"checkout {c.external_id}") for c in batch.checkouts if c.customer is not None]
    namespace = identity.store_namespace(store.id)
    versions = _customer_versions(conn, store, [c for c, _ in given])
    normalized: list[tuple[CustomerData, identity.Person]] = []
    out: dict[int, _Person] = {}
    for customer, label in given:
        held = versions.get(customer.external_id or "")
        if held is not None and customer.source_updated_at is not None and customer.source_updated_at < held:
            # An older version of this customer than the one applied: it only finds the contact.
            person = identity.Person(external=[(namespace, customer.external_id or "")])
            normalized.append((customer, person))
            report.unchanged += 1
            continue
        person, problems = identity.normalize_person(
            external=[(namespace, customer.external_id)] if customer.external_id else [],
            email=customer.email, phone=customer.phone, default_country=customer.country,
            profile={"first_name": customer.first_name, "last_name": customer.last_name,
                     "country": customer.country, "language": customer.language},
            tags=customer.tags or None)
        report.problems += [f"{label}: {p.field}: {p.reason}" for p in problems]
        if person.identity_keys():
            normalized.append((customer, person))
        else:
            out[id(customer)] = _Person(None, person.email, person.phone)
    resolved = identity.resolve_many(conn, store.workspace_id, store.id, [p for _, p in normalized], now)
    changes: list[consent.ConsentChange] = []
    for (customer, person), result in zip(normalized, resolved, strict=True):
        out[id(customer)] = _Person(result.contact_id, person.email, person.phone)
        report.contacts += result.changed
        email_at = customer.consent_at or customer.source_updated_at or now
        sms_at = customer.sms_consent_at or email_at
        for channel, granted, reachable, when in (("email", customer.email_marketing, person.email, email_at),
                                                  ("sms", customer.sms_marketing, person.phone, sms_at)):
            if granted is not None and reachable:
                changes.append(consent.ConsentChange(
                    contact_id=result.contact_id, store_id=store.id, channel=channel, purpose="marketing",
                    state="granted" if granted else "withdrawn", source=source, recorded_at=min(when, now)))
    report.consents += consent.record_many(conn, store.workspace_id, changes)
    _remember_versions(conn, store, [(out[id(c)].contact_id, c.source_updated_at) for c, _ in given
                                     if c.external_id and c.source_updated_at and id(c) in out])
    report.contact_ids = [out[id(c)].contact_id or "" for c in batch.customers]
    return out


def _customer_versions(conn: Connection, store: StoreInfo, given: list[CustomerData]) -> dict[str, datetime]:
    """The store's customer id -> the updated_at of the newest version of it applied."""
    ids = sorted({c.external_id for c in given if c.external_id and c.source_updated_at})
    out: dict[str, datetime] = {}
    i, s = contact_identities.c, contact_stores.c
    for chunk in _chunks(ids):
        rows = conn.execute(select(i.value, s.customer_updated_at)
                            .join(contact_stores, (s.contact_id == i.contact_id) & (s.store_id == store.id))
                            .where(i.workspace_id == store.workspace_id, i.kind == IdentityKind.EXTERNAL.value,
                                   i.namespace == identity.store_namespace(store.id), i.value.in_(chunk),
                                   s.customer_updated_at.is_not(None)))
        out.update((r[0], r[1]) for r in rows)
    return out


def _remember_versions(conn: Connection, store: StoreInfo, seen: list[tuple[str | None, datetime | None]]) -> None:
    newest: dict[str, datetime] = {}
    for contact_id, when in seen:
        if contact_id and when and (contact_id not in newest or when > newest[contact_id]):
            newest[contact_id] = when
    if not newest:
        return
    s = contact_stores.c
    statement = (update(contact_stores)
                 .where(s.contact_id == bindparam("_contact"), s.store_id == store.id,
                        (s.customer_updated_at.is_(None)) | (s.customer_updated_at < bindparam("_when")))
                 .values(customer_updated_at=bindparam("_when")))
    conn.execute(statement, [{"_contact": c, "_when": w} for c, w in sorted(newest.items())])


# ---- upserts -----------------------------------------------------------------------------------------
def _upsert(conn: Connection, table: Any, store: StoreInfo, rows: list[dict[str, Any]], prefix: str,
            now: datetime, *, before: dict[str, dict[str, Any]] | None = None, force: frozenset[str] = frozenset(),
            ) -> tuple[list[dict[str, Any]], int, dict[str, dict[str, Any]]]:
    """Insert new rows, update changed ones (unless the stored version is newer), skip the same.

    `rows` carry external_id and the column values (no id/created/updated); `force` names rows
    to update even when their columns are the same (their lines changed). Returns the rows
    written (with their id), how many were unchanged, and what was stored before."""
    if before is None:
        before = _existing(conn, table, store.id, [r["external_id"] for r in rows])
    fresh, changed, unchanged = [], [], 0
    for row in rows:
        held = before.get(row["external_id"])
        if held is None:
            row.update(id=new_id(prefix), workspace_id=store.workspace_id, store_id=store.id, created_at=now)
            if "updated_at" in table.c:
                row["updated_at"] = now
            fresh.append(row)
            continue
        if row.get("source_updated_at", True) is None:
            row["source_updated_at"] = held["source_updated_at"]  # a source without versions (CSV) keeps ours
        stale = "source_updated_at" in row and not _newer_or_same(row["source_updated_at"], held["source_updated_at"])
        if stale or (row["external_id"] not in force and all(held[k] == v for k, v in row.items())):
            unchanged += 1
        else:
            row["id"] = held["id"]
            changed.append(row)
    if fresh:
        conn.execute(insert(table), fresh)
    if changed:
        names = [k for k in changed[0] if k not in ("id", "external_id")]
        statement = update(table).where(table.c.id == bindparam("_id")).values(
            {k: bindparam(f"_{k}") for k in [*names, "updated_at"]})
        conn.execute(statement, [{"_id": r["id"], "_updated_at": now, **{f"_{k}": r[k] for k in names}}
                                 for r in changed])
    return fresh + changed, unchanged, before


def _line_tuple(line: LineData) -> tuple[Any, ...]:
    return (line.external_id, line.product_external_id, line.variant_external_id, (line.sku or None) and line.sku[:128],
            line.title[:500], line.quantity, line.unit_price_minor, line.total_minor)


LINE_COLUMNS = ("external_id", "product_external_id", "variant_external_id", "sku", "title", "quantity",
                "unit_price_minor", "total_minor")


def _write_orders(conn: Connection, store: StoreInfo, given: list[OrderData], people: dict[int, _Person],
                  order_ids: dict[str, str], now: datetime, report: ApplyReport, touched: set[str]) -> None:
    if not given:
        return
    rows: list[dict[str, Any]] = []
    for o in given:
        person = people.get(id(o.customer)) if o.customer is not None else None
        row: dict[str, Any] = {
            "external_id": o.external_id, "contact_id": person.contact_id if person else None,
            "number": (o.number or None) and o.number[:64], "currency": o.currency,
            "subtotal_minor": o.subtotal_minor, "discount_minor": o.discount_minor,
            "shipping_minor": o.shipping_minor, "tax_minor": o.tax_minor, "total_minor": o.total_minor,
            "discount_codes": list(o.discount_codes), "financial_status": o.financial_status,
            "fulfillment_status": o.fulfillment_status, "shipping_country": o.shipping_country,
            "placed_at": o.placed_at, "cancelled_at": o.cancelled_at, "checkout_token": o.checkout_token,
            "status_url": o.status_url, "source_updated_at": o.source_updated_at,
        }
        if o.refunded_minor is not None:
            row["refunded_minor"] = o.refunded_minor
        rows.append(row)
    by_ext = {o.external_id: o for o in given}
    before = _existing(conn, orders, store.id, by_ext)
    stored_lines = _lines_of(conn, [row["id"] for row in before.values()])
    # Lines are compared as a multiset: their ids (ULIDs made in one millisecond) do not keep their order.
    relined = frozenset(ext for ext, held in before.items()
                        if sorted(map(repr, stored_lines.get(held["id"], [])))
                        != sorted(repr(_line_tuple(x)) for x in by_ext[ext].lines))
    written, unchanged, _ = _upsert(conn, orders, store, rows, "ord", now, before=before, force=relined)
    report.orders += len(written)
    report.unchanged += unchanged
    for ext, stored in before.items():
        order_ids[ext] = stored["id"]  # unchanged orders too: the batch's fulfilments may point at them
        if stored["contact_id"]:
            touched.add(stored["contact_id"])
    for row in written:
        order_ids[row["external_id"]] = row["id"]
        if row.get("contact_id"):
            touched.add(row["contact_id"])
        held, key = before.get(row["external_id"]), f"{store.id}:{row['external_id']}"
        money = {"total": str(from_minor(row["total_minor"], row["currency"])), "currency": row["currency"]}
        if held is None:
            report.events.append(_event(ORDER_COMPLETED, f"order:{key}", row["contact_id"], row["placed_at"],
                                        order_id=row["id"], external_id=row["external_id"], number=row["number"],
                                        discount_codes=row["discount_codes"], **money))
        if row["cancelled_at"] is not None and (held is None or held["cancelled_at"] is None):
            report.events.append(_event(ORDER_CANCELLED, f"order_cancelled:{key}", row["contact_id"],
                                        row["cancelled_at"], order_id=row["id"], external_id=row["external_id"],
                                        **money))
    ids = [r["id"] for r in written]
    for chunk in _chunks(ids):
        conn.execute(delete(order_lines).where(order_lines.c.order_id.in_(chunk)))
    lines = [{"id": new_id("oln"), "workspace_id": store.workspace_id, "order_id": r["id"],
              **dict(zip(LINE_COLUMNS, _line_tuple(line), strict=True))}
             for r in written for line in by_ext[r["external_id"]].lines]
    if lines:
        conn.execute(insert(order_lines), lines)
    _settle_refunded(conn, ids, now)
    # The order completes its checkout: abandonment recovery stops for that cart.
    tokens = {o.checkout_token: (order_ids[o.external_id], o.placed_at) for o in given
              if o.checkout_token and o.external_id in order_ids}
    if tokens:
        for token, (order_id, placed_at) in tokens.items():
            conn.execute(update(checkouts).where(checkouts.c.store_id == store.id, checkouts.c.token == token,
                                                 checkouts.c.order_id.is_(None))
                         .values(order_id=order_id, completed_at=func.coalesce(checkouts.c.completed_at, placed_at),
                                 updated_at=now))


def _lines_of(conn: Connection, order_ids: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    out: dict[str, list[tuple[Any, ...]]] = {}
    cols = [order_lines.c[name] for name in LINE_COLUMNS]
    for chunk in _chunks(sorted(order_ids)):
        for r in conn.execute(select(order_lines.c.order_id, *cols).where(order_lines.c.order_id.in_(chunk))
                              .order_by(order_lines.c.order_id, order_lines.c.id)):
            out.setdefault(r[0], []).append(tuple(r[1:]))
    return out


def _write_checkouts(conn: Connection, store: StoreInfo, given: list[CheckoutData], people: dict[int, _Person],
                     order_ids: dict[str, str], now: datetime, report: ApplyReport, touched: set[str]) -> None:
    if not given:
        return
    tokens = [c.token for c in given if c.token]
    ordered: dict[str, tuple[str, datetime]] = {}
    for chunk in _chunks(tokens):
        for r in conn.execute(select(orders.c.checkout_token, orders.c.id, orders.c.placed_at)
                              .where(orders.c.store_id == store.id, orders.c.checkout_token.in_(chunk))):
            ordered[r[0]] = (r[1], r[2])
    rows: list[dict[str, Any]] = []
    for c in given:
        person = people.get(id(c.customer)) if c.customer is not None else None
        order = ordered.get(c.token or "")
        rows.append({
            "external_id": c.external_id, "contact_id": person.contact_id if person else None, "token": c.token,
            "email": person.email if person else None, "phone": person.phone if person else None,
            "currency": c.currency, "subtotal_minor": c.subtotal_minor, "total_minor": c.total_minor,
            "discount_codes": list(c.discount_codes),
            "lines": [{"title": x.title, "quantity": x.quantity, "unit_price_minor": x.unit_price_minor,
                       "total_minor": x.total_minor, "sku": x.sku, "product_external_id": x.product_external_id,
                       "variant_external_id": x.variant_external_id} for x in c.lines],
            "recovery_url": c.recovery_url,
            "completed_at": c.completed_at or (order[1] if order else None),
            "order_id": order[0] if order else None,
            "started_at": c.started_at, "source_updated_at": c.source_updated_at,
        })
    written, unchanged, before = _upsert(conn, checkouts, store, rows, "chk", now)
    report.checkouts += len(written)
    report.unchanged += unchanged
    for row in written:
        if row["external_id"] not in before:
            report.events.append(_event(
                CHECKOUT_STARTED, f"checkout:{store.id}:{row['external_id']}", row["contact_id"], row["started_at"],
                checkout_id=row["id"], external_id=row["external_id"], recovery_url=row["recovery_url"],
                total=str(from_minor(row["total_minor"], row["currency"])), currency=row["currency"]))
    touched.update(r["contact_id"] for r in [*written, *before.values()] if r.get("contact_id"))


def _write_fulfillments(conn: Connection, store: StoreInfo, given: list[FulfillmentData], order_ids: dict[str, str],
                        now: datetime, report: ApplyReport) -> None:
    if not given:
        return
    rows = [{"external_id": f.external_id, "order_id": order_ids[f.order_external_id], "status": f.status,
             "shipment_status": f.shipment_status, "tracking_company": f.tracking_company,
             "tracking_numbers": list(f.tracking_numbers), "tracking_urls": list(f.tracking_urls),
             "source_updated_at": f.source_updated_at} for f in given]
    written, unchanged, before = _upsert(conn, fulfillments, store, rows, "ful", now)
    report.fulfillments += len(written)
    report.unchanged += unchanged
    new = [r for r in written if r["external_id"] not in before]
    owners = _order_owners(conn, [r["order_id"] for r in new])
    for row in new:
        report.events.append(_event(
            FULFILLMENT_CREATED, f"fulfillment:{store.id}:{row['external_id']}", owners.get(row["order_id"]),
            row["source_updated_at"] or now, fulfillment_id=row["id"], order_id=row["order_id"],
            tracking_company=row["tracking_company"], tracking_numbers=row["tracking_numbers"],
            tracking_urls=row["tracking_urls"]))


def _order_owners(conn: Connection, order_ids: Sequence[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for chunk in _chunks(sorted(set(order_ids))):
        rows = conn.execute(select(orders.c.id, orders.c.contact_id).where(orders.c.id.in_(chunk)))
        out.update((r[0], r[1]) for r in rows)
    return out


def _write_refunds(conn: Connection, store: StoreInfo, given: list[RefundData], order_ids: dict[str, str],
                   now: datetime, report: ApplyReport, touched: set[str]) -> None:
    if not given:
        return
    held = _existing(conn, refunds, store.id, [r.external_id for r in given], [refunds.c.id])
    fresh: list[dict[str, Any]] = [{"id": new_id("rfd"), "workspace_id": store.workspace_id, "store_id": store.id,
              "order_id": order_ids[r.order_external_id], "external_id": r.external_id,
              "amount_minor": r.amount_minor, "currency": r.currency, "note": r.note,
              "refunded_at": r.refunded_at, "created_at": now} for r in given if r.external_id not in held]
    report.unchanged += len(given) - len(fresh)
    if not fresh:
        return
    insert_many(conn, refunds, fresh, ignore_conflicts=True)
    report.refunds += len(fresh)
    owners = _order_owners(conn, [r["order_id"] for r in fresh])
    for row in fresh:
        report.events.append(_event(
            ORDER_REFUNDED, f"refund:{store.id}:{row['external_id']}", owners.get(row["order_id"]), row["refunded_at"],
            refund_id=row["id"], order_id=row["order_id"], currency=row["currency"],
            total=str(from_minor(row["amount_minor"], row["currency"]))))
    affected = sorted({r["order_id"] for r in fresh})
    _settle_refunded(conn, affected, now)
    for chunk in _chunks(affected):
        touched.update(c for c in conn.execute(select(orders.c.contact_id).where(orders.c.id.in_(chunk))).scalars()
                       if c)


def _settle_refunded(conn: Connection, order_ids: Sequence[str], now: datetime) -> None:
    """An order's refunded amount is at least the sum of its stored refunds (in its currency)."""
    for chunk in _chunks(sorted(order_ids)):
        sums = conn.execute(select(refunds.c.order_id, func.sum(refunds.c.amount_minor))
                            .join(orders, orders.c.id == refunds.c.order_id)
                            .where(refunds.c.order_id.in_(chunk), refunds.c.currency == orders.c.currency)
                            .group_by(refunds.c.order_id)).all()
        for order_id, total in sums:
            conn.execute(update(orders).where(orders.c.id == order_id, orders.c.refunded_minor < int(total))
                         .values(refunded_minor=int(total), updated_at=now))


def _write_products(conn: Connection, store: StoreInfo, given: list[ProductData], now: datetime,
                    report: ApplyReport) -> None:
    if not given:
        return
    rows = [{"external_id": p.external_id, "title": p.title[:500], "handle": (p.handle or None) and p.handle[:255],
             "url": p.url, "image_url": p.image_url, "vendor": (p.vendor or None) and p.vendor[:255],
             "product_type": (p.product_type or None) and p.product_type[:255], "status": p.status,
             "price_minor": p.price_minor, "currency": p.currency, "tags": list(p.tags),
             "variants": list(p.variants), "source_updated_at": p.source_updated_at} for p in given]
    written, unchanged, _ = _upsert(conn, products, store, rows, "prd", now)
    report.products += len(written)
    report.unchanged += unchanged
