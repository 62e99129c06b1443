"""Idempotency keys for creates (G3): same key + same body -> the stored response; same key +
different body -> 422; the first request still running -> 409.

A reservation row is committed before the work starts (so a concurrent duplicate sees it), and
the response is written in the same transaction as the work itself, so a crash can never leave
a created object without its stored response. If a request dies without answering, its lock
expires and a retry takes the reservation over.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from herald.db.tables import idempotency_keys


class Verdict(StrEnum):
    PROCEED = "proceed"
    REPLAY = "replay"
    MISMATCH = "mismatch"
    IN_FLIGHT = "in_flight"


@dataclass(frozen=True, slots=True)
class Reservation:
    verdict: Verdict
    row_id: int
    status: int | None = None
    body: str | None = None
    headers: dict[str, str] | None = None


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    """Hash of what was asked. JSON bodies are canonicalised, so key order and whitespace
    do not make two identical requests look different."""
    try:
        canonical = json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    except (ValueError, UnicodeDecodeError):
        canonical = body
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\n" + canonical).hexdigest()


def reserve(conn: Connection, *, api_key_id: str, key: str, fingerprint: str, now: datetime,
            lock: timedelta, ttl: timedelta) -> Reservation:
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    row_id = conn.execute(
        insert(idempotency_keys)
        .values(api_key_id=api_key_id, key=key, request_hash=fingerprint, in_flight=True,
                locked_until=now + lock, created_at=now, expires_at=now + ttl)
        .on_conflict_do_nothing()
        .returning(idempotency_keys.c.id)
    ).scalar_one_or_none()
    if row_id is not None:
        return Reservation(Verdict.PROCEED, row_id)
    row = conn.execute(
        select(idempotency_keys).where(idempotency_keys.c.api_key_id == api_key_id,
                                       idempotency_keys.c.key == key)
    ).one()
    if row.expires_at <= now:  # past its retention: the key is free again
        _reset(conn, row.id, fingerprint, now, lock, ttl)
        return Reservation(Verdict.PROCEED, row.id)
    if row.request_hash != fingerprint:
        return Reservation(Verdict.MISMATCH, row.id)
    if not row.in_flight:
        return Reservation(Verdict.REPLAY, row.id, row.response_status, row.response_body,
                           row.response_headers or {})
    if row.locked_until is not None and row.locked_until > now:
        return Reservation(Verdict.IN_FLIGHT, row.id)
    taken = conn.execute(
        update(idempotency_keys)
        .where(idempotency_keys.c.id == row.id, idempotency_keys.c.in_flight.is_(True),
               idempotency_keys.c.locked_until == row.locked_until)
        .values(locked_until=now + lock)
    ).rowcount
    return Reservation(Verdict.PROCEED if taken else Verdict.IN_FLIGHT, row.id)


def _reset(conn: Connection, row_id: int, fingerprint: str, now: datetime, lock: timedelta,
           ttl: timedelta) -> None:
    conn.execute(
        update(idempotency_keys).where(idempotency_keys.c.id == row_id).values(
            request_hash=fingerprint, in_flight=True, locked_until=now + lock, response_status=None,
            response_body=None, response_headers=None, created_at=now, expires_at=now + ttl)
    )


def complete(conn: Connection, row_id: int, *, status: int, body: str, headers: dict[str, Any]) -> None:
    conn.execute(
        update(idempotency_keys).where(idempotency_keys.c.id == row_id).values(
            in_flight=False, locked_until=None, response_status=status, response_body=body,
            response_headers=headers)
    )


def abandon(conn: Connection, row_id: int) -> None:
    """The request failed unexpectedly and its transaction rolled back: free the key."""
    conn.execute(delete(idempotency_keys).where(idempotency_keys.c.id == row_id,
                                                idempotency_keys.c.in_flight.is_(True)))


def purge_expired(conn: Connection, *, now: datetime) -> int:
    return conn.execute(delete(idempotency_keys).where(idempotency_keys.c.expires_at <= now)).rowcount
