"""A contact's push targets: Web Push subscriptions (what the browser's PushManager.subscribe()
returns: endpoint + keys p256dh/auth), FCM registration tokens and APNs device tokens. Registering
the same token again refreshes it (and un-retires it: the app or browser says it is live again);
a provider's "gone" answer retires it at send time (services/messaging.py)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final
from urllib.parse import urlsplit

from sqlalchemy import Connection, select, update

from herald.db.tables import push_subscriptions
from herald.domain.auth import Principal
from herald.domain.errors import InvalidInput, NotFound
from herald.domain.ids import new_id
from herald.services import contacts as contacts_service

KINDS: Final = ("webpush", "fcm", "apns")


def register(conn: Connection, who: Principal, contact_id: str, *, kind: str | None, token: str | None,
             keys: Mapping[str, str] | None, user_agent: str | None, now: datetime) -> dict[str, Any]:
    _contact(conn, who, contact_id)
    if kind is None or token is None:
        raise InvalidInput.on("kind" if kind is None else "token", "is required")
    clean_keys = _check(kind, token, keys)
    p = push_subscriptions.c
    found = conn.execute(select(push_subscriptions).where(p.workspace_id == who.workspace_id, p.kind == kind,
                                                          p.token == token)).mappings().first()
    if found is not None:
        changes = {"contact_id": contact_id, "keys": clean_keys, "user_agent": user_agent, "retired_at": None,
                   "retired_reason": None, "last_used_at": now}
        conn.execute(update(push_subscriptions).where(p.id == found["id"]).values(**changes))
        return {**dict(found), **changes}
    row = {"id": new_id("psub"), "workspace_id": who.workspace_id, "contact_id": contact_id, "kind": kind,
           "token": token, "keys": clean_keys, "user_agent": (user_agent or None) and user_agent[:512],
           "created_at": now, "last_used_at": None, "retired_at": None, "retired_reason": None}
    conn.execute(push_subscriptions.insert().values(row))
    return row


def list_for(conn: Connection, who: Principal, contact_id: str) -> list[dict[str, Any]]:
    _contact(conn, who, contact_id)
    p = push_subscriptions.c
    return [dict(r) for r in conn.execute(select(push_subscriptions).where(
        p.workspace_id == who.workspace_id, p.contact_id == contact_id).order_by(p.id)).mappings()]


def retire(conn: Connection, who: Principal, contact_id: str, subscription_id: str, now: datetime) -> None:
    _contact(conn, who, contact_id)
    p = push_subscriptions.c
    done = conn.execute(update(push_subscriptions).where(
        p.workspace_id == who.workspace_id, p.contact_id == contact_id, p.id == subscription_id,
        p.retired_at.is_(None)).values(retired_at=now, retired_reason="unsubscribed")).rowcount
    if not done:
        raise NotFound(f"no active push subscription {subscription_id!r} for this contact")


def _check(kind: str, token: str, keys: Mapping[str, str] | None) -> dict[str, str]:
    if kind not in KINDS:
        raise InvalidInput.on("kind", f"must be one of {', '.join(KINDS)}")
    if not token or len(token) > 2000:
        raise InvalidInput.on("token", "is required (at most 2000 characters)")
    if kind == "apns":
        try:
            bytes.fromhex(token)
        except ValueError:
            raise InvalidInput.on("token", "an APNs device token is hexadecimal") from None
    if kind != "webpush":
        if keys:
            raise InvalidInput.on("keys", f"{kind} tokens have no keys")
        return {}
    parts = urlsplit(token)
    if parts.scheme != "https" or not parts.hostname:
        raise InvalidInput.on("token", "a Web Push subscription's token is its endpoint: an https URL")
    clean = {}
    for name, size in (("p256dh", 65), ("auth", 16)):
        value = (keys or {}).get(name, "")
        try:
            raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != size:
            raise InvalidInput.on(f"keys.{name}", f"must be the subscription's base64url {name} key ({size} bytes)")
        clean[name] = value
    return clean


def _contact(conn: Connection, who: Principal, contact_id: str) -> None:
    """The contact must be visible to the caller (a store key: linked to its store)."""
    contacts_service.get_contact(conn, who, contact_id)
