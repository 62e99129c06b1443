"""Inbound store webhooks (G5): verified on the raw body, stored, deduplicated by the
platform's delivery id, acknowledged, and processed after commit by the `intake.webhook` job.

    receive():  verify -> identify -> INSERT delivery (ON CONFLICT DO NOTHING) + enqueue, one
                transaction; the caller answers 2xx only after it commits.
    process():  parse the stored body with the platform's connector and write the typed
                objects (services/commerce.py) in the same transaction that marks it processed.

A delivery is never dropped: an unknown topic is kept as `unknown_topic` and reported; a payload
that does not parse is kept as `failed` with the reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, select, update
from sqlalchemy.dialects import postgresql, sqlite

from herald.db import jobs as jobs_db
from herald.db.tables import stores, webhook_deliveries
from herald.domain.auth import Principal
from herald.domain.connectors import BadPayload, DeliveryInfo, SignatureError, UnknownTopic, WebhookConnector
from herald.domain.errors import BadSignature
from herald.domain.ids import new_id
from herald.services import commerce
from herald.services.pagination import Page, keyset_page, one_visible
from herald.services.stores import WebhookKeys, store_info

JOB_KIND = "intake.webhook"
MAX_TOPIC = 200
# Headers worth keeping with a delivery (for support and replays); never auth secrets.
KEPT_HEADERS = ("content-type", "user-agent", "x-shopify-topic", "x-shopify-shop-domain", "x-shopify-event-id",
                "x-shopify-webhook-id", "x-shopify-triggered-at", "x-shopify-api-version", "x-wc-webhook-topic",
                "x-wc-webhook-resource", "x-wc-webhook-event", "x-wc-webhook-id", "x-wc-webhook-delivery-id",
                "x-wc-webhook-source", "webhook-id", "webhook-timestamp")


@dataclass(frozen=True, slots=True)
class Receipt:
    delivery_id: str
    duplicate: bool
    topic: str


def check_signature(connector: WebhookConnector, keys: WebhookKeys, headers: Mapping[str, str], body: bytes,
                    now: datetime) -> DeliveryInfo:
    """Verify before anything is parsed or stored; 401 with the reason otherwise."""
    if not keys.secrets:
        raise BadSignature(f"store {keys.store.id} has no webhook secret yet: set it with "
                           f"`herald stores connect {keys.store.id} --webhook-secret ...`")
    try:
        connector.verify(headers, body, keys.secrets, now)
    except SignatureError as exc:
        raise BadSignature(f"signature check failed: {exc}") from None
    return connector.identify(headers, body)


def receive(conn: Connection, keys: WebhookKeys, info: DeliveryInfo, headers: Mapping[str, str], body: bytes,
            now: datetime) -> Receipt:
    """Store a verified delivery once; a replay only counts as a duplicate."""
    store = keys.store
    row = {
        "id": new_id("whd"), "workspace_id": store.workspace_id, "store_id": store.id, "platform": store.platform,
        "topic": info.topic[:MAX_TOPIC], "dedupe_key": _dedupe_key(info, body),
        "headers": {k: headers[k] for k in KEPT_HEADERS if k in headers}, "body": body,
        "status": "processed" if info.is_ping else "received",
        "detail": "handshake (ping): nothing to process" if info.is_ping else None,
        "received_at": now, "processed_at": now if info.is_ping else None,
    }
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    inserted = conn.execute(insert(webhook_deliveries).values(row).on_conflict_do_nothing()
                            .returning(webhook_deliveries.c.id)).scalar_one_or_none()
    if inserted is None:
        found = conn.execute(select(webhook_deliveries.c.id).where(
            webhook_deliveries.c.store_id == store.id,
            webhook_deliveries.c.dedupe_key == row["dedupe_key"])).scalar_one()
        conn.execute(update(webhook_deliveries).where(webhook_deliveries.c.id == found)
                     .values(duplicates=webhook_deliveries.c.duplicates + 1))
        return Receipt(found, True, info.topic)
    if not info.is_ping:
        jobs_db.enqueue(conn, JOB_KIND, {"delivery_id": inserted}, now=now, workspace_id=store.workspace_id,
                        max_attempts=25)
    return Receipt(inserted, False, info.topic)


def _dedupe_key(info: DeliveryInfo, body: bytes) -> str:
    key = info.dedupe_key or hashlib.sha256(body).hexdigest()
    return key if len(key) <= 255 else hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Processed:
    status: str  # processed | unknown_topic | failed | waiting (a referenced order is not here yet)
    detail: str | None = None
    report: commerce.ApplyReport | None = None


def process(conn: Connection, delivery_id: str, connectors: Mapping[str, WebhookConnector], now: datetime, *,
            final_attempt: bool) -> Processed:
    """Translate one stored delivery and write what it says, in the caller's transaction."""
    row = conn.execute(select(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)).mappings().first()
    if row is None or row["status"] != "received":
        return Processed(row["status"] if row else "gone", "already handled")
    store_row = conn.execute(select(stores).where(stores.c.id == row["store_id"])).mappings().one()
    store = store_info(dict(store_row))
    try:
        objects = connectors[row["platform"]].parse(row["topic"], bytes(row["body"]), store)
        report = commerce.apply(conn, store, objects, now, source=row["platform"])
    except UnknownTopic as exc:
        return _mark(conn, delivery_id, Processed("unknown_topic", f"topic {row['topic']!r} is not translated "
                                                  f"by the {row['platform']} connector: {exc}"), now)
    except BadPayload as exc:
        return _mark(conn, delivery_id, Processed("failed", f"payload not understood: {exc}"), now)
    except commerce.MissingOrder as exc:
        if final_attempt:
            return _mark(conn, delivery_id, Processed("failed", f"gave up waiting: {exc}"), now)
        return Processed("waiting", str(exc))
    note = "; ".join(report.problems)[:4000] or None
    return _mark(conn, delivery_id, Processed("processed", note, report), now)


def _mark(conn: Connection, delivery_id: str, result: Processed, now: datetime) -> Processed:
    conn.execute(update(webhook_deliveries).where(webhook_deliveries.c.id == delivery_id)
                 .values(status=result.status, detail=result.detail, processed_at=now))
    return result


# ---- reporting ---------------------------------------------------------------------------------
LISTED = [c for c in webhook_deliveries.c if c.name not in ("body", "headers")]


def _visible(who: Principal) -> Any:
    query = select(*LISTED).where(webhook_deliveries.c.workspace_id == who.workspace_id)
    if who.store_id is not None:
        query = query.where(webhook_deliveries.c.store_id == who.store_id)
    return query


def list_deliveries(conn: Connection, who: Principal, *, limit: int, cursor: str | None,
                    status: str | None = None, store_id: str | None = None) -> Page[dict[str, Any]]:
    query = _visible(who)
    if status:
        query = query.where(webhook_deliveries.c.status == status)
    if store_id:
        query = query.where(webhook_deliveries.c.store_id == store_id)
    return keyset_page(conn, query, limit=limit, cursor=cursor)


def get_delivery(conn: Connection, who: Principal, delivery_id: str) -> dict[str, Any]:
    return one_visible(conn, _visible(who), delivery_id, "webhook delivery")


def counts_by_status(conn: Connection, workspace_id: str, store_ids: Sequence[str] | None = None) -> dict[str, int]:
    query = (select(webhook_deliveries.c.status, func.count())
             .where(webhook_deliveries.c.workspace_id == workspace_id).group_by(webhook_deliveries.c.status))
    if store_ids:
        query = query.where(webhook_deliveries.c.store_id.in_(list(store_ids)))
    return {status: n for status, n in conn.execute(query)}
