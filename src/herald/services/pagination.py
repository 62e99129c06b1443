"""Cursor pagination over time-ordered ids (keyset: `WHERE id > :after ORDER BY id`)."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Select

from herald.domain.errors import InvalidInput, NotFound

T = TypeVar("T")
MAX_LIMIT = 200


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last_id}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        value: Any = json.loads(raw)
        after = value["after"]
        if not isinstance(after, str):
            raise TypeError
        return after
    except (binascii.Error, ValueError, KeyError, TypeError):
        raise InvalidInput.on("cursor", "is not a cursor this API returned; start without one") from None


def page_of(rows: list[T], limit: int, id_of: Any) -> Page[T]:
    """`rows` was fetched with limit + 1: the extra row tells whether there is a next page."""
    if len(rows) > limit:
        rows = rows[:limit]
        return Page(rows, encode_cursor(id_of(rows[-1])))
    return Page(rows, None)


def keyset_page(conn: Connection, query: Select[Any], *, limit: int, cursor: str | None) -> Page[dict[str, Any]]:
    """A page of `query` (already scoped to the caller) in id order, after the cursor's id."""
    id_column = query.selected_columns["id"]
    query = query.order_by(id_column).limit(limit + 1)
    if (after := decode_cursor(cursor)) is not None:
        query = query.where(id_column > after)
    return page_of([dict(r) for r in conn.execute(query).mappings()], limit, lambda r: r["id"])


def one_visible(conn: Connection, query: Select[Any], object_id: str, what: str) -> dict[str, Any]:
    """The row `object_id` of `query` (already scoped to the caller), or 404: an object the
    caller may not see is answered exactly like one that does not exist."""
    row = conn.execute(query.where(query.selected_columns["id"] == object_id)).mappings().first()
    if row is None:
        raise NotFound(f"no {what} {object_id!r} in this workspace")
    return dict(row)
