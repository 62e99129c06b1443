"""API keys: shown once at creation, stored as SHA-256, scoped to a workspace or one store."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update

from herald.db.tables import api_keys
from herald.domain.auth import (
    Principal,
    display_prefix,
    generate_api_key,
    hash_api_key,
    looks_like_api_key,
)
from herald.domain.errors import NotFound
from herald.domain.ids import new_id
from herald.services.pagination import Page, keyset_page, one_visible
from herald.services.workspaces import get_store

LAST_USED_GRANULARITY = timedelta(seconds=60)  # bounds the writes a busy key causes
PUBLIC_COLUMNS = ("id", "workspace_id", "store_id", "name", "display_prefix", "created_at",
                  "last_used_at", "revoked_at")


class AuthFailure(Exception):
    """The presented credential is unusable; the message says why (never echoing the key)."""


def create_key(conn: Connection, *, workspace_id: str, store_id: str | None, name: str,
               now: datetime) -> tuple[dict[str, Any], str]:
    """Returns (the stored row without the hash, the key itself — the only time it exists)."""
    key = generate_api_key()
    row = {"id": new_id("key"), "workspace_id": workspace_id, "store_id": store_id, "name": name,
           "display_prefix": display_prefix(key), "key_hash": hash_api_key(key), "created_at": now,
           "last_used_at": None, "revoked_at": None}
    conn.execute(api_keys.insert().values(row))
    return {k: row[k] for k in PUBLIC_COLUMNS}, key


def create_key_as(conn: Connection, who: Principal, *, name: str, store_id: str | None,
                  now: datetime) -> tuple[dict[str, Any], str]:
    """A key may create keys no wider than itself: a store key only for its own store."""
    if who.store_id is not None:
        if store_id not in (None, who.store_id):
            raise NotFound(f"no store {store_id!r} in this workspace")
        store_id = who.store_id
    elif store_id is not None:
        get_store(conn, who, store_id)
    return create_key(conn, workspace_id=who.workspace_id, store_id=store_id, name=name, now=now)


def authenticate(conn: Connection, presented: str, now: datetime) -> Principal:
    if not looks_like_api_key(presented):
        raise AuthFailure("the credential is not a Herald API key (expected 'hsk_' and 43 characters)")
    row = conn.execute(
        select(api_keys.c.id, api_keys.c.workspace_id, api_keys.c.store_id, api_keys.c.revoked_at,
               api_keys.c.last_used_at).where(api_keys.c.key_hash == hash_api_key(presented))
    ).first()
    if row is None:
        raise AuthFailure("unknown API key")
    if row.revoked_at is not None:
        raise AuthFailure("this API key was revoked")
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_GRANULARITY:
        conn.execute(update(api_keys).where(api_keys.c.id == row.id).values(last_used_at=now))
    return Principal(api_key_id=row.id, workspace_id=row.workspace_id, store_id=row.store_id)


def _visible(who: Principal) -> Any:
    query = select(*[api_keys.c[c] for c in PUBLIC_COLUMNS]).where(api_keys.c.workspace_id == who.workspace_id)
    if who.store_id is not None:
        query = query.where(api_keys.c.store_id == who.store_id)
    return query


def get_key(conn: Connection, who: Principal, key_id: str) -> dict[str, Any]:
    return one_visible(conn, _visible(who), key_id, "API key")


def list_keys(conn: Connection, who: Principal, *, limit: int, cursor: str | None) -> Page[dict[str, Any]]:
    return keyset_page(conn, _visible(who), limit=limit, cursor=cursor)


def revoke_key(conn: Connection, who: Principal | None, key_id: str, now: datetime) -> dict[str, Any]:
    """Revoke by id. `who=None` is the operator at the CLI, who may revoke any key."""
    if who is not None:
        get_key(conn, who, key_id)  # 404 unless the caller can see it; revoking itself is allowed
    found = conn.execute(select(api_keys.c.revoked_at).where(api_keys.c.id == key_id)).first()
    if found is None:
        raise NotFound(f"no API key {key_id!r}")
    if found.revoked_at is None:
        conn.execute(update(api_keys).where(api_keys.c.id == key_id).values(revoked_at=now))
    return dict(conn.execute(select(*[api_keys.c[c] for c in PUBLIC_COLUMNS])
                             .where(api_keys.c.id == key_id)).mappings().one())
