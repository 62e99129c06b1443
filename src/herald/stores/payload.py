"""Small, strict readers of a store platform's JSON payload, shared by the connectors that
read REST-resource JSON (shopify.py, woocommerce.py). Each raises BadPayload naming the field."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from herald.domain.connectors import BadPayload, Headers
from herald.domain.contacts import InvalidValue
from herald.domain.money import normalize_currency, to_minor

Json = dict[str, Any]


def header(headers: Headers, name: str) -> str | None:
    """Headers arrive lower-cased (domain/connectors.py); tolerate a caller that did not."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value.strip() if isinstance(value, str) and value.strip() else None


def load_object(body: bytes, platform: str) -> Json:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadPayload(f"the body is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BadPayload(f"the body is a JSON {type(data).__name__}, not the JSON object {platform} sends")
    return data


def obj(raw: Any, field: str, *, empty_list_is_empty: bool = False) -> Json:
    """`empty_list_is_empty`: PHP serialises an empty associative array as [] (WooCommerce)."""
    if raw is None or (empty_list_is_empty and raw == []):
        return {}
    if not isinstance(raw, dict):
        raise BadPayload(f"{field} is a {type(raw).__name__}, expected an object")
    return raw


def as_list(raw: Any, field: str) -> list[Any]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadPayload(f"{field} is a {type(raw).__name__}, expected a list")
    return raw


def text(raw: Any) -> str | None:
    if raw is None or isinstance(raw, bool):
        return None
    value = str(raw).strip()
    return value or None


def iso_time(raw: Any, field: str) -> datetime | None:
    """ISO 8601 -> aware UTC; a time without an offset is read as UTC."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise BadPayload(f"{field} {raw!r} is not an ISO 8601 time")
    try:
        parsed = datetime.fromisoformat(raw.strip())
    except ValueError:
        raise BadPayload(f"{field} {raw!r} is not an ISO 8601 time") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def money(raw: Any, currency: str, field: str) -> int:
    if raw is not None and (isinstance(raw, bool) or not isinstance(raw, str | int | float | Decimal)):
        raise BadPayload(f"{field} {raw!r} is not an amount")
    try:
        return to_minor(raw, currency)
    except InvalidValue as exc:
        raise BadPayload(f"{field}: {exc}") from None


def currency(raw: Any, fallback: str | None, field: str) -> str:
    value = text(raw) or fallback
    if value is None:
        raise BadPayload(f"{field} is missing and the store has no default currency")
    try:
        return normalize_currency(value)
    except InvalidValue as exc:
        raise BadPayload(f"{field}: {exc}") from None
