"""Custom-site connector: a seller's own shop sends Herald signed JSON per the Standard Webhooks
specification (v1.0.0, https://www.standardwebhooks.com, spec/standard-webhooks.md in
github.com/standard-webhooks/standard-webhooks; reference verifier
libraries/python/standardwebhooks/webhooks.py). The full payload reference for sellers'
developers is docs/custom-site-webhooks.md.

Wire format (what `verify` checks):
  webhook-id         the message id; stays the same on retries -> Herald's dedupe key
  webhook-timestamp  integer unix seconds of this attempt; more than 5 minutes from `now`
                     either way is refused (replay protection, the spec's tolerance)
  webhook-signature  space-separated list of `<version>,<base64 signature>`; any may match
  signed content     f"{webhook-id}.{webhook-timestamp}.{raw body}" (the raw bytes, never re-serialised)
  v1   HMAC-SHA256 keyed with the secret's bytes; the secret is written `whsec_<base64>` (the
       prefix is optional, as in the official libraries; the key is the base64-decoded part)
  v1a  ed25519 (the spec's asymmetric scheme); the secret is the public key `whpk_<base64 of
       the 32 raw key bytes>`
Every configured secret is tried (the current one and, during a rotation, the previous one).

Body: {"type": "<event type>", "timestamp": "<ISO 8601>", "data": {...}}; the event types and
their `data` shapes are listed in EVENT_TYPES and documented in docs/custom-site-webhooks.md.
Money is decimal strings in the object's ISO 4217 `currency` (converted exactly with
domain.money.to_minor); times are ISO 8601 with an offset (converted to UTC).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

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
from herald.domain.connectors import BadPayload, DeliveryInfo, Headers, SignatureError, UnknownTopic
from herald.domain.contacts import InvalidValue, normalize_country
from herald.domain.money import normalize_currency, to_minor

TOLERANCE = timedelta(minutes=5)
SYMMETRIC_PREFIX = "whsec_"
PUBLIC_KEY_PREFIX = "whpk_"
PING = "ping"

EVENT_TYPES = (
    "customer.created",
    "customer.updated",
    "order.created",
    "order.updated",
    "order.paid",
    "order.cancelled",
    "order.fulfilled",
    "checkout.created",
    "checkout.updated",
    "fulfillment.created",
    "fulfillment.updated",
    "refund.created",
    "product.created",
    "product.updated",
    PING,
)

FINANCIAL_STATUSES = (
    "pending",
    "authorized",
    "partially_paid",
    "paid",
    "partially_refunded",
    "refunded",
    "voided",
)
FULFILLMENT_STATUSES = ("partial", "fulfilled")


# --- signature -----------------------------------------------------------------------------


def _b64decode(text: str) -> bytes:
    """Strict standard base64; unpadded input is accepted (the official libraries pad it)."""
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _hmac_keys(secrets: Sequence[str]) -> list[bytes]:
    keys = []
    for secret in secrets:
        text = secret.strip()
        if text.startswith(PUBLIC_KEY_PREFIX):
            continue
        text = text.removeprefix(SYMMETRIC_PREFIX)
        try:
            key = _b64decode(text)
        except (binascii.Error, ValueError):
            continue  # not a Standard Webhooks secret: it can never match
        if key:
            keys.append(key)
    return keys


def _public_keys(secrets: Sequence[str]) -> list[Ed25519PublicKey]:
    keys = []
    for secret in secrets:
        text = secret.strip()
        if not text.startswith(PUBLIC_KEY_PREFIX):
            continue
        try:
            keys.append(Ed25519PublicKey.from_public_bytes(_b64decode(text.removeprefix(PUBLIC_KEY_PREFIX))))
        except (binascii.Error, ValueError):
            continue
    return keys


def _timestamp(raw: str, now: datetime) -> int:
    try:
        seconds = int(raw.strip())
    except ValueError:
        raise SignatureError("webhook-timestamp must be integer unix seconds") from None
    sent = datetime.fromtimestamp(seconds, UTC)
    if sent < now - TOLERANCE:
        raise SignatureError("webhook-timestamp is more than 5 minutes old (replayed or delayed delivery)")
    if sent > now + TOLERANCE:
        raise SignatureError("webhook-timestamp is more than 5 minutes in the future (check the sender's clock)")
    return seconds


def _signatures(header: str) -> list[tuple[str, bytes]]:
    """`v1,abc= v1a,def=` -> [("v1", b"..."), ("v1a", b"...")]; malformed entries are skipped."""
    found = []
    for entry in header.split(" "):
        version, sep, encoded = entry.partition(",")
        if not sep:
            continue
        try:
            found.append((version, _b64decode(encoded)))
        except (binascii.Error, ValueError):
            continue
    return found


def _ed25519_matches(key: Ed25519PublicKey, signature: bytes, content: bytes) -> bool:
    try:
        key.verify(signature, content)
    except InvalidSignature:
        return False
    return True


def verify_standard_webhook(headers: Headers, body: bytes, secrets: Sequence[str], now: datetime) -> None:
    """Raise SignatureError unless one listed signature matches one secret (see module docstring)."""
    names = ("webhook-id", "webhook-timestamp", "webhook-signature")
    msg_id, stamp, header = ((headers.get(name) or "").strip() for name in names)
    missing = [name for name, value in zip(names, (msg_id, stamp, header), strict=True) if not value]
    if missing:
        raise SignatureError(f"missing header(s): {', '.join(missing)} (Standard Webhooks)")
    seconds = _timestamp(stamp, now)
    hmac_keys, public_keys = _hmac_keys(secrets), _public_keys(secrets)
    if not hmac_keys and not public_keys:
        raise SignatureError(
            "no usable secret for this store: custom-site secrets are 'whsec_' + base64 (or 'whpk_' + base64 "
            "of an ed25519 public key)"
        )
    content = f"{msg_id}.{seconds}.".encode() + body
    signatures = _signatures(header)
    for version, signature in signatures:
        if version == "v1" and any(
            hmac.compare_digest(hmac.new(key, content, hashlib.sha256).digest(), signature) for key in hmac_keys
        ):
            return
        if version == "v1a" and any(_ed25519_matches(key, signature, content) for key in public_keys):
            return
    if not signatures:
        raise SignatureError("webhook-signature holds no '<version>,<base64>' entry")
    raise SignatureError("no signature in webhook-signature matches this store's secret")


# --- payload reading -------------------------------------------------------------------------


def _load(body: bytes) -> Any:
    try:
        # Decimal keeps "19.99" and 19.99 exact; floats never touch money.
        return json.loads(body, parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadPayload(f"body is not JSON: {exc}") from None


def _parse_time(value: Any, path: str) -> datetime:
    if not isinstance(value, str):
        raise BadPayload(f"{path}: must be an ISO 8601 time string such as '2024-05-01T10:00:00Z'")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadPayload(f"{path}: {value!r} is not an ISO 8601 time such as '2024-05-01T10:00:00Z'") from None
    if parsed.tzinfo is None:
        raise BadPayload(f"{path}: {value!r} has no UTC offset; add 'Z' or '+02:00'")
    return parsed.astimezone(UTC)


class _Obj:
    """A JSON object at `path` ("data.lines[2]"); every accessor names the field it rejects."""

    def __init__(self, raw: Any, path: str) -> None:
        if not isinstance(raw, dict):
            raise BadPayload(f"{path}: must be a JSON object")
        self.raw: dict[str, Any] = raw
        self.path = path

    def field(self, key: str) -> str:
        return f"{self.path}.{key}"

    def _present(self, key: str) -> Any:
        value = self.raw.get(key)
        return None if value is None or value == "" else value

    def _required(self, key: str) -> Any:
        value = self._present(key)
        if value is None:
            raise BadPayload(f"{self.field(key)}: required")
        return value

    def opt_str(self, key: str) -> str | None:
        value = self._present(key)
        if value is None:
            return None
        if not isinstance(value, str):
            raise BadPayload(f"{self.field(key)}: must be a string")
        return value.strip() or None

    def req_str(self, key: str) -> str:
        value = self.opt_str(key)
        if value is None:
            raise BadPayload(f"{self.field(key)}: required")
        return value

    def opt_id(self, key: str) -> str | None:
        """Ids may be strings or integers; they are kept as strings."""
        value = self._present(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise BadPayload(f"{self.field(key)}: must be a string or an integer id")
        return str(value).strip() or None

    def req_id(self, key: str) -> str:
        value = self.opt_id(key)
        if value is None:
            raise BadPayload(f"{self.field(key)}: required")
        return value

    def opt_time(self, key: str) -> datetime | None:
        value = self._present(key)
        return None if value is None else _parse_time(value, self.field(key))

    def req_time(self, key: str) -> datetime:
        return _parse_time(self._required(key), self.field(key))

    def opt_bool(self, key: str) -> bool | None:
        value = self.raw.get(key)
        if value is None:
            return None
        if not isinstance(value, bool):
            raise BadPayload(f"{self.field(key)}: must be true, false or null")
        return value

    def money(self, key: str, currency: str, *, required: bool = False) -> int:
        value = self._required(key) if required else self._present(key)
        if value is None:
            return 0
        if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
            raise BadPayload(f"{self.field(key)}: must be a decimal string such as '19.99'")
        try:
            return to_minor(value, currency)
        except InvalidValue as exc:
            raise BadPayload(f"{self.field(key)}: {exc}") from None

    def opt_money(self, key: str, currency: str) -> int | None:
        return None if self._present(key) is None else self.money(key, currency)

    def currency(self, key: str = "currency", default: str | None = None) -> str:
        value = self.opt_str(key) or default
        if value is None:
            raise BadPayload(f"{self.field(key)}: required (an ISO 4217 code such as 'EUR')")
        try:
            return normalize_currency(value)
        except InvalidValue as exc:
            raise BadPayload(f"{self.field(key)}: {exc}") from None

    def country(self, key: str) -> str | None:
        value = self.opt_str(key)
        if value is None:
            return None
        try:
            return normalize_country(value)
        except InvalidValue as exc:
            raise BadPayload(f"{self.field(key)}: {exc}") from None

    def quantity(self, key: str) -> int:
        value = self._required(key)
        if isinstance(value, str):
            value = value.strip()
            if not value.lstrip("-").isdigit():
                raise BadPayload(f"{self.field(key)}: must be a whole number")
            value = int(value)
        if isinstance(value, Decimal) and value == value.to_integral_value():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadPayload(f"{self.field(key)}: must be a whole number >= 0")
        return value

    def strings(self, key: str) -> list[str]:
        value = self.raw.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise BadPayload(f"{self.field(key)}: must be a list of strings")
        return [item.strip() for item in value if item.strip()]

    def opt_obj(self, key: str) -> _Obj | None:
        value = self.raw.get(key)
        return None if value is None else _Obj(value, self.field(key))

    def objs(self, key: str) -> list[_Obj]:
        value = self.raw.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise BadPayload(f"{self.field(key)}: must be a list of objects")
        return [_Obj(item, f"{self.field(key)}[{index}]") for index, item in enumerate(value)]


# --- data shapes -> typed objects ----------------------------------------------------------------


def _customer(obj: _Obj, *, require_id: bool) -> CustomerData:
    customer = CustomerData(
        external_id=obj.req_id("id") if require_id else obj.opt_id("id"),
        email=obj.opt_str("email"),
        phone=obj.opt_str("phone"),
        first_name=obj.opt_str("first_name"),
        last_name=obj.opt_str("last_name"),
        country=obj.country("country"),
        language=obj.opt_str("language"),
        tags=obj.strings("tags"),
        email_marketing=obj.opt_bool("accepts_email_marketing"),
        sms_marketing=obj.opt_bool("accepts_sms_marketing"),
        consent_at=obj.opt_time("consent_updated_at"),
        created_at=obj.opt_time("created_at"),
        source_updated_at=obj.opt_time("updated_at"),
    )
    if customer.external_id is None and customer.email is None and customer.phone is None:
        raise BadPayload(f"{obj.path}: needs at least one of id, email, phone")
    return customer


def _line(obj: _Obj, currency: str) -> LineData:
    quantity = obj.quantity("quantity")
    unit = obj.money("unit_price", currency, required=True)
    total = obj.opt_money("total", currency)
    return LineData(
        title=obj.req_str("title"),
        quantity=quantity,
        unit_price_minor=unit,
        total_minor=unit * quantity if total is None else total,
        external_id=obj.opt_id("id"),
        product_external_id=obj.opt_id("product_id"),
        variant_external_id=obj.opt_id("variant_id"),
        sku=obj.opt_str("sku"),
    )


def _choice(obj: _Obj, key: str, allowed: tuple[str, ...], default: str | None) -> str | None:
    value = obj.opt_str(key)
    if value is None:
        return default
    if value not in allowed:
        raise BadPayload(f"{obj.field(key)}: {value!r} is not one of {', '.join(allowed)}")
    return value


def _fulfillment(obj: _Obj, order_id: str | None = None) -> FulfillmentData:
    return FulfillmentData(
        external_id=obj.req_id("id"),
        order_external_id=order_id or obj.req_id("order_id"),
        status=obj.opt_str("status"),
        shipment_status=obj.opt_str("shipment_status"),
        tracking_company=obj.opt_str("tracking_company"),
        tracking_numbers=obj.strings("tracking_numbers"),
        tracking_urls=obj.strings("tracking_urls"),
        created_at=obj.opt_time("created_at"),
        source_updated_at=obj.opt_time("updated_at"),
    )


def _refund(obj: _Obj, order_id: str | None = None, currency: str | None = None) -> RefundData:
    currency = obj.currency(default=currency)
    return RefundData(
        external_id=obj.req_id("id"),
        order_external_id=order_id or obj.req_id("order_id"),
        amount_minor=obj.money("amount", currency, required=True),
        currency=currency,
        refunded_at=obj.req_time("created_at"),
        note=obj.opt_str("note"),
    )


def _order(obj: _Obj, event_type: str, event_time: datetime | None) -> OrderData:
    currency = obj.currency()
    order_id = obj.req_id("id")
    customer = obj.opt_obj("customer")
    financial = _choice(obj, "financial_status", FINANCIAL_STATUSES, "paid" if event_type == "order.paid" else None)
    fulfilled = _choice(
        obj, "fulfillment_status", FULFILLMENT_STATUSES, "fulfilled" if event_type == "order.fulfilled" else None
    )
    cancelled_at = obj.opt_time("cancelled_at")
    if cancelled_at is None and event_type == "order.cancelled":
        cancelled_at = event_time  # the envelope's timestamp: when the cancellation happened
    return OrderData(
        external_id=order_id,
        currency=currency,
        placed_at=obj.req_time("created_at"),
        customer=None if customer is None else _customer(customer, require_id=False),
        number=obj.opt_id("number"),
        subtotal_minor=obj.money("subtotal", currency),
        discount_minor=obj.money("discount", currency),
        shipping_minor=obj.money("shipping", currency),
        tax_minor=obj.money("tax", currency),
        total_minor=obj.money("total", currency, required=True),
        refunded_minor=obj.opt_money("refunded", currency),
        discount_codes=obj.strings("discount_codes"),
        financial_status=financial,
        fulfillment_status=fulfilled,
        shipping_country=obj.country("shipping_country"),
        cancelled_at=cancelled_at,
        checkout_token=obj.opt_id("checkout_id"),
        status_url=obj.opt_str("status_url"),
        lines=[_line(line, currency) for line in obj.objs("lines")],
        fulfillments=[_fulfillment(item, order_id) for item in obj.objs("fulfillments")],
        refunds=[_refund(item, order_id, currency) for item in obj.objs("refunds")],
        source_updated_at=obj.opt_time("updated_at"),
    )


def _checkout(obj: _Obj) -> CheckoutData:
    currency = obj.currency()
    customer = obj.opt_obj("customer")
    return CheckoutData(
        external_id=obj.req_id("id"),
        currency=currency,
        started_at=obj.req_time("created_at"),
        customer=None if customer is None else _customer(customer, require_id=False),
        token=obj.opt_id("token"),
        subtotal_minor=obj.money("subtotal", currency),
        total_minor=obj.money("total", currency),
        discount_codes=obj.strings("discount_codes"),
        lines=[_line(line, currency) for line in obj.objs("lines")],
        recovery_url=obj.opt_str("recovery_url"),
        completed_at=obj.opt_time("completed_at"),
        source_updated_at=obj.opt_time("updated_at"),
    )


def _product(obj: _Obj, store: StoreInfo) -> ProductData:
    currency = obj.currency(default=store.currency)
    variants: list[dict[str, Any]] = []
    for variant in obj.objs("variants"):
        variants.append(
            {
                "external_id": variant.req_id("id"),
                "title": variant.opt_str("title"),
                "sku": variant.opt_str("sku"),
                "price_minor": variant.opt_money("price", currency),
            }
        )
    price = obj.opt_money("price", currency)
    if price is None:
        prices = [v["price_minor"] for v in variants if v["price_minor"] is not None]
        price = min(prices) if prices else None
    return ProductData(
        external_id=obj.req_id("id"),
        title=obj.req_str("title"),
        handle=obj.opt_str("handle"),
        url=obj.opt_str("url"),
        image_url=obj.opt_str("image_url"),
        vendor=obj.opt_str("vendor"),
        product_type=obj.opt_str("product_type"),
        status=obj.opt_str("status"),
        price_minor=price,
        currency=currency,
        tags=obj.strings("tags"),
        variants=variants,
        source_updated_at=obj.opt_time("updated_at"),
    )


_Parser = Callable[[_Obj, str, datetime | None, StoreInfo], StoreObject]

_PARSERS: dict[str, _Parser] = {
    "customer": lambda data, _type, _time, _store: _customer(data, require_id=True),
    "order": lambda data, event_type, event_time, _store: _order(data, event_type, event_time),
    "checkout": lambda data, _type, _time, _store: _checkout(data),
    "fulfillment": lambda data, _type, _time, _store: _fulfillment(data),
    "refund": lambda data, _type, _time, _store: _refund(data),
    "product": lambda data, _type, _time, store: _product(data, store),
}


class CustomSiteConnector:
    """WebhookConnector for sellers' own sites (Standard Webhooks; docs/custom-site-webhooks.md)."""

    platform = "custom"

    def verify(self, headers: Headers, body: bytes, secrets: Sequence[str], now: datetime) -> None:
        verify_standard_webhook(headers, body, secrets, now)

    def identify(self, headers: Headers, body: bytes) -> DeliveryInfo:
        """Topic = the body's "type" ("unknown" when unreadable: stored, then reported by parse)."""
        msg_id = (headers.get("webhook-id") or "").strip()
        if not msg_id:
            raise SignatureError("missing header: webhook-id (Standard Webhooks)")
        topic = "unknown"
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("type"), str) and payload["type"].strip():
            topic = payload["type"].strip()
        return DeliveryInfo(topic=topic, dedupe_key=msg_id, is_ping=topic == PING)

    def parse(self, topic: str, body: bytes, store: StoreInfo) -> list[StoreObject]:
        if topic not in EVENT_TYPES:
            raise UnknownTopic(f"custom-site event type {topic!r} is not one of {', '.join(EVENT_TYPES)}")
        envelope = _Obj(_load(body), "body")
        event_type = envelope.req_str("type")
        if event_type != topic:
            raise BadPayload(f"body.type: {event_type!r} differs from the delivery's topic {topic!r}")
        event_time = envelope.opt_time("timestamp")
        if topic == PING:
            return []
        if envelope.raw.get("data") is None:
            raise BadPayload("data: required (the event's object)")
        data = _Obj(envelope.raw["data"], "data")
        kind = topic.split(".", 1)[0]
        return [_PARSERS[kind](data, topic, event_time, store)]
