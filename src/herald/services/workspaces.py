"""Workspaces (tenants) and their stores."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, select, update

from herald.db.tables import stores, workspaces
from herald.domain.auth import Principal
from herald.domain.contacts import InvalidValue, normalize_timezone
from herald.domain.errors import Conflict, Forbidden, InvalidInput, NotFound
from herald.domain.ids import new_id
from herald.services.pagination import Page, keyset_page, one_visible

PLATFORMS = ("shopify", "woocommerce", "magento", "custom")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")


def create_workspace(conn: Connection, *, name: str, slug: str, now: datetime) -> dict[str, Any]:
    if not _SLUG.match(slug):
        raise InvalidInput.on("slug", "use 1-63 characters of a-z, 0-9 and '-', starting with a letter or digit")
    if conn.execute(select(workspaces.c.id).where(workspaces.c.slug == slug)).first():
        raise Conflict(f"a workspace with slug {slug!r} already exists")
    row = {"id": new_id("ws"), "slug": slug, "name": name, "settings": {}, "created_at": now}
    conn.execute(workspaces.insert().values(row))
    return row


def find_workspace(conn: Connection, id_or_slug: str) -> dict[str, Any]:
    row = conn.execute(
        select(workspaces).where((workspaces.c.id == id_or_slug) | (workspaces.c.slug == id_or_slug))
    ).mappings().first()
    if row is None:
        raise NotFound(f"no workspace with id or slug {id_or_slug!r}")
    return dict(row)


def create_store(conn: Connection, who: Principal, *, name: str, platform: str, currency: str,
                 timezone: str, domain: str | None, now: datetime) -> dict[str, Any]:
    if who.store_id is not None:
        raise Forbidden("a store-scoped API key cannot create stores; use a workspace key")
    if platform not in PLATFORMS:
        raise InvalidInput.on("platform", f"must be one of {', '.join(PLATFORMS)}")
    try:
        tz = normalize_timezone(timezone)
    except InvalidValue as exc:
        raise InvalidInput.on("timezone", str(exc)) from None
    row = {"id": new_id("st"), "workspace_id": who.workspace_id, "name": name, "platform": platform,
           "domain": domain, "currency": currency.upper(), "timezone": tz, "created_at": now}
    conn.execute(stores.insert().values(row))
    return row


def _visible_stores(who: Principal) -> Any:
    query = select(stores).where(stores.c.workspace_id == who.workspace_id)
    if who.store_id is not None:
        query = query.where(stores.c.id == who.store_id)
    return query


def get_store(conn: Connection, who: Principal, store_id: str) -> dict[str, Any]:
    return one_visible(conn, _visible_stores(who), store_id, "store")


def list_stores(conn: Connection, who: Principal, *, limit: int, cursor: str | None) -> Page[dict[str, Any]]:
    return keyset_page(conn, _visible_stores(who), limit=limit, cursor=cursor)


def settings_of(conn: Connection, workspace_id: str) -> dict[str, Any]:
    """The workspace's settings JSON. Each area owns one key of it ("policy", "retention_days",
    "sms_keywords"); write a key with set_setting, never the whole object."""
    return _settings_row(conn, workspace_id, lock=False)


def set_setting(conn: Connection, workspace_id: str, key: str, value: Any) -> None:
    """Replace one key of the workspace's settings, leaving the others as they are (the row is
    locked on PostgreSQL so concurrent writers of other keys don't lose each other's change)."""
    current = _settings_row(conn, workspace_id, lock=True)
    current[key] = value
    conn.execute(update(workspaces).where(workspaces.c.id == workspace_id).values(settings=current))


def _settings_row(conn: Connection, workspace_id: str, *, lock: bool) -> dict[str, Any]:
    query = select(workspaces.c.settings).where(workspaces.c.id == workspace_id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"no workspace {workspace_id!r}")
    return dict(row[0] or {})
