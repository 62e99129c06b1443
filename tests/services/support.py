"""Shared setup for service tests: a workspace with two stores, on each database backend."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, select

from herald.db.tables import contacts
from herald.domain.auth import Principal
from herald.domain.commerce import StoreInfo
from herald.services import workspaces


@dataclass
class Shop:
    workspace_id: str
    store: StoreInfo
    other: StoreInfo  # a second store of the same workspace (EUR, WooCommerce)


def make_shop(engine: Engine, now: datetime, slug: str = "seller") -> Shop:
    with engine.begin() as conn:
        ws = workspaces.create_workspace(conn, name="Seller", slug=slug, now=now)
        who = Principal("test", ws["id"], None)
        one = workspaces.create_store(conn, who, name="US shop", platform="shopify", currency="USD",
                                      timezone="UTC", domain="shop.example", now=now)
        two = workspaces.create_store(conn, who, name="EU shop", platform="woocommerce", currency="EUR",
                                      timezone="Europe/Berlin", domain=None, now=now)
    return Shop(ws["id"], StoreInfo(one["id"], ws["id"], "shopify", "USD", "shop.example"),
                StoreInfo(two["id"], ws["id"], "woocommerce", "EUR"))


def contact_row(conn: Connection, contact_id: str) -> dict[str, Any]:
    return dict(conn.execute(select(contacts).where(contacts.c.id == contact_id)).mappings().one())


def all_rows(conn: Connection, table: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns)).mappings()]
