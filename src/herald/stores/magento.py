"""Magento / Adobe Commerce connector: deliveries from the Adobe Commerce Webhooks module
(composer package magento/commerce-webhooks, modules Magento_AdobeCommerceWebhooks*).
Seller-facing set-up: docs/magento-webhooks.md.

Why this mechanism
------------------
Magento offers three ways to get data out; Herald supports the first:
  (a) Adobe Commerce Webhooks — the store itself POSTs to a URL configured in app/etc/webhooks.xml
      (PaaS / on-premises) or in the Admin (SaaS), signed with an RSA key pair the store generates
      (Stores > Settings > Configuration > Adobe Services > Webhooks > "Regenerate key pair").
      Nothing but the store and Herald is involved, so a self-hosted Herald can run it. SUPPORTED.
  (b) Adobe I/O Events for Commerce — events are relayed through Adobe's cloud (an Adobe Developer
      Console project and IMS organisation are required) and signed with Adobe-held keys whose public
      halves are fetched at verification time from static.adobeioevents.com
      (x-adobe-digital-signature-1/-2, x-adobe-public-key1/2-path). That puts a third party and a
      network fetch in the verification path of a self-hosted install. NOT SUPPORTED.
  (c) The REST API (GET /V1/orders, /V1/customers/search) is a pull API, not a push; its entity
      JSON is the same sales_order / customer shape, so this parser also accepts REST-shaped
      entities (billing_address, extension_attributes.shipping_assignments) inside `data`.
Magento Open Source ships no outbound webhooks of its own; its sellers can use the custom-site
connector (Standard Webhooks, herald.stores.custom) from a small module of their own.

Signature (docs: commerce-extensibility webhooks/signature-verification.md, and the reference
`webhookVerify` of Adobe's commerce checkout starter kit):
  header  x-adobe-commerce-webhook-signature: base64 of an RSA PKCS#1 v1.5 / SHA-256 signature
  signed  base64(raw request body) — the *base64 text of the body*, not the raw bytes: Adobe's own
          verifiers feed App Builder's `__ow_body` (the base64-encoded raw body) or
          `Buffer.from(body).toString('base64')` to crypto.createVerify('SHA256').
  key     `secrets` holds PEM public keys ("-----BEGIN PUBLIC KEY-----", as the Admin shows it;
          a base64-wrapped PEM and "\\n"-escaped PEM are accepted too). Any listed key may match:
          after "Regenerate key pair" the old key stops signing at once, so keep both for the
          minutes it takes to paste the new one.
There is no signed timestamp in this scheme, so replay protection is Herald's dedupe only.

Delivery id (dedupe key): sha256(topic + "\\n" + raw body). Commerce's `x-adobe-commerce-request-id`
is deliberately not used: it is not covered by the signature (a replayed body under a new id would
pass as new), and Adobe describes it as the id for tracing "the request in the system", i.e. it
may be shared by every hook one storefront request fires (an order saved three times while being
placed, a customer and an order saved together), which would drop real updates as duplicates.
The content hash dedupes exact replays and keeps every distinct state; it is what makes up for
the missing signed timestamp. Commerce webhooks are synchronous and never retried: the endpoint must
answer 200 with {"op": "success"} (see the Adobe docs' responses.md), and each hook should be
configured required="false" so a Herald outage never blocks a checkout.

Topics = the default payload's "eventName" (Commerce writes it without the "observer." prefix;
a prefixed value is accepted too). The hook must send the default payload — no <fields>
filter — or at least keep eventName and data.order / data.customer:
  orders     sales_order_save_after, sales_order_save_commit_after, checkout_submit_all_after
             -> OrderData from data.order
  customers  customer_save_after, customer_register_success -> data.customer;
             customer_save_after_data_object -> data.customer_data_object
             -> CustomerData
  anything else (e.g. sales_order_place_before/after, whose order has no entity_id yet)
             -> UnknownTopic (stored and reported)

Entity fields read (sales_order): entity_id, increment_id, order_currency_code, created_at,
updated_at, grand_total, subtotal, discount_amount (negative in Magento; stored as a positive
discount), shipping_amount, tax_amount, total_paid, total_refunded, state, status, coupon_code,
customer_id, customer_is_guest, customer_email, customer_firstname, customer_lastname,
items[] (item_id, product_id, sku, name, qty_ordered, qty_shipped, price, row_total,
parent_item_id — child rows of configurable/bundle products are skipped so nothing counts
twice; a child's product_id becomes the parent line's variant id), billing_address /
addresses[] (address_type billing|shipping: country_id, telephone) and
extension_attributes.shipping_assignments[].shipping.address. Amounts are in the order currency
(the base_* amounts are ignored). `items` and `addresses` may be lists or objects keyed
by id: Commerce serialises collections both ways.

Times: Magento stores and serialises entity dates as naive "YYYY-MM-DD HH:MM:SS" in UTC
(the store's locale is applied only on display), so naive times are read as UTC; ISO 8601 with
an offset is honoured.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from herald.domain.commerce import CustomerData, LineData, OrderData, StoreInfo, StoreObject
from herald.domain.connectors import BadPayload, DeliveryInfo, Headers, SignatureError, UnknownTopic
from herald.domain.contacts import InvalidValue
from herald.domain.money import normalize_currency, to_minor

SIGNATURE_HEADER = "x-adobe-commerce-webhook-signature"
REQUEST_ID_HEADER = "x-adobe-commerce-request-id"  # not used as the dedupe key: see the module docstring
UNKNOWN = "unknown"

ORDER_EVENTS = ("sales_order_save_after", "sales_order_save_commit_after", "checkout_submit_all_after")
CUSTOMER_EVENTS = {
    "customer_save_after": "customer",
    "customer_register_success": "customer",
    "customer_save_after_data_object": "customer_data_object",
}


# --- signature -----------------------------------------------------------------------------


def _pem_candidates(secret: str) -> Iterator[bytes]:
    text = secret.strip().strip('"')
    if "\\n" in text and "\n" not in text:
        text = text.replace("\\n", "\n")
    if text.startswith("-----BEGIN"):
        yield text.encode()
        return
    try:  # App Builder's "ENABLED_WITH_BASE64" form: the whole PEM, base64-encoded
        yield base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return


def _rsa_keys(secrets: Sequence[str]) -> list[RSAPublicKey]:
    keys = []
    for secret in secrets:
        for pem in _pem_candidates(secret):
            try:
                key = serialization.load_pem_public_key(pem)
            except (ValueError, UnsupportedAlgorithm):
                continue
            if isinstance(key, RSAPublicKey):
                keys.append(key)
    return keys


def _rsa_matches(key: RSAPublicKey, signature: bytes, message: bytes) -> bool:
    try:
        key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def signed_message(body: bytes) -> bytes:
    """What Commerce signs: the base64 text of the raw body."""
    return base64.b64encode(body)


def verify_commerce_signature(headers: Headers, body: bytes, secrets: Sequence[str]) -> None:
    raw = (headers.get(SIGNATURE_HEADER) or "").strip()
    if not raw:
        raise SignatureError(
            f"missing header {SIGNATURE_HEADER}: enable signature verification in Stores > Settings > "
            "Configuration > Adobe Services > Webhooks"
        )
    try:
        signature = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{SIGNATURE_HEADER} is not base64") from None
    keys = _rsa_keys(secrets)
    if not keys and any(s.strip().startswith("-----BEGIN") and "-----END" not in s for s in secrets):
        raise SignatureError(
            "the stored public key is cut off (no '-----END PUBLIC KEY-----' line): store the whole PEM, "
            "or pass it on one line as base64 (base64 -w0 public.pem)"
        )
    if not keys:
        raise SignatureError(
            "no usable key for this store: paste the RSA public key ('-----BEGIN PUBLIC KEY-----...') "
            "shown in Stores > Settings > Configuration > Adobe Services > Webhooks"
        )
    message = signed_message(body)
    if not any(_rsa_matches(key, signature, message) for key in keys):
        raise SignatureError(f"{SIGNATURE_HEADER} does not match this store's public key")


# --- payload reading -------------------------------------------------------------------------


def _load(body: bytes) -> Any:
    try:
        return json.loads(body, parse_float=Decimal)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadPayload(f"body is not JSON: {exc}") from None


def _topic_of(payload: Any) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("eventName"), str):
        name = payload["eventName"].strip().removeprefix("observer.")
        return name or UNKNOWN
    return UNKNOWN


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _text(entity: dict[str, Any], key: str, path: str = "") -> str | None:
    value = entity.get(key)
    if _blank(value):
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        field = f"{path}.{key}" if path else key
        raise BadPayload(f"{field}: must be a string, got {type(value).__name__}")
    return str(value).strip()


def _id(entity: dict[str, Any], key: str, path: str) -> str:
    value = entity.get(key)
    if _blank(value):
        raise BadPayload(f"{path}.{key}: required")
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadPayload(f"{path}.{key}: must be an id (string or integer)")
    return str(value).strip()


def _time(value: Any, field: str) -> datetime | None:
    """Magento's naive "YYYY-MM-DD HH:MM:SS" is UTC; an explicit offset is honoured."""
    if _blank(value):
        return None
    if not isinstance(value, str):
        raise BadPayload(f"{field}: must be a date string such as '2024-05-01 10:00:00'")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise BadPayload(f"{field}: {value!r} is not a date such as '2024-05-01 10:00:00'") from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _money(entity: dict[str, Any], key: str, currency: str, path: str) -> int:
    value = entity.get(key)
    if _blank(value):
        return 0
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise BadPayload(f"{path}.{key}: must be a number")
    try:
        return to_minor(value, currency)
    except InvalidValue as exc:
        raise BadPayload(f"{path}.{key}: {exc}") from None


def _quantity(entity: dict[str, Any], key: str, path: str) -> int:
    """Magento quantities are decimals ("2.0000"); Herald counts whole units."""
    value = entity.get(key)
    if _blank(value):
        return 0
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise BadPayload(f"{path}.{key}: {value!r} is not a number") from None
    if isinstance(value, bool) or not number.is_finite() or number < 0:
        raise BadPayload(f"{path}.{key}: {value!r} is not a quantity")
    return int(number.to_integral_value())


def _rows(entity: dict[str, Any], key: str, path: str) -> list[tuple[str, dict[str, Any]]]:
    """A collection serialised as a list or as an object keyed by id -> [(path, row)]."""
    value = entity.get(key)
    if value is None:
        return []
    if isinstance(value, dict):
        items = [(f"{path}.{key}.{k}", v) for k, v in value.items()]
    elif isinstance(value, list):
        items = [(f"{path}.{key}[{i}]", v) for i, v in enumerate(value)]
    else:
        raise BadPayload(f"{path}.{key}: must be a list of objects")
    for row_path, row in items:
        if not isinstance(row, dict):
            raise BadPayload(f"{row_path}: must be an object")
    return items


def _object(entity: dict[str, Any], key: str, path: str) -> dict[str, Any] | None:
    value = entity.get(key)
    if value is None or value == [] or value == "":
        return None  # PHP serialises an empty array as [] whatever it stands for
    if not isinstance(value, dict):
        raise BadPayload(f"{path}.{key}: must be an object")
    return value


def _country(address: dict[str, Any] | None) -> str | None:
    if address is None:
        return None
    value = _text(address, "country_id")
    return value.upper() if value else None


def _addresses(order: dict[str, Any], path: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(billing, shipping) from the REST shape or the model's addresses collection."""
    billing = _object(order, "billing_address", path)
    shipping = None
    extension = _object(order, "extension_attributes", path)
    if extension is not None:
        for assignment_path, assignment in _rows(extension, "shipping_assignments", f"{path}.extension_attributes"):
            ship = _object(assignment, "shipping", assignment_path)
            shipping = shipping or (None if ship is None else _object(ship, "address", f"{assignment_path}.shipping"))
    for _, address in _rows(order, "addresses", path):
        kind = address.get("address_type")
        if kind == "billing" and billing is None:
            billing = address
        elif kind == "shipping" and shipping is None:
            shipping = address
    return billing, shipping


# --- entities -> typed objects ---------------------------------------------------------------


def _financial_status(order: dict[str, Any], currency: str, path: str) -> str:
    state = _text(order, "state")
    refunded = _money(order, "total_refunded", currency, path)
    paid = _money(order, "total_paid", currency, path)
    total = _money(order, "grand_total", currency, path)
    if refunded > 0:
        return "refunded" if refunded >= (paid or total) else "partially_refunded"
    if state == "closed":
        return "refunded"  # Magento closes an order when credit memos cover it
    if state == "canceled":
        return "voided"
    if not _blank(order.get("total_paid")):
        if paid >= total:
            return "paid"
        return "partially_paid" if paid > 0 else "pending"
    # No payment totals in the payload: Magento's states say it. "processing" means invoiced
    # (paid) or shipped; "complete" means both.
    return "paid" if state in ("processing", "complete") else "pending"


def _fulfillment_status(order: dict[str, Any], lines: list[tuple[str, dict[str, Any]]]) -> str | None:
    ordered = sum(_quantity(row, "qty_ordered", p) for p, row in lines)
    shipped = sum(_quantity(row, "qty_shipped", p) for p, row in lines)
    if ordered and shipped >= ordered:
        return "fulfilled"
    if shipped:
        return "partial"
    return "fulfilled" if _text(order, "state") == "complete" else None


def _line(row: dict[str, Any], currency: str, path: str, variant: str | None) -> LineData:
    return LineData(
        title=_text(row, "name", path) or _text(row, "sku", path) or "",
        quantity=_quantity(row, "qty_ordered", path),
        unit_price_minor=_money(row, "price", currency, path),
        total_minor=_money(row, "row_total", currency, path),
        external_id=_text(row, "item_id", path),
        product_external_id=_text(row, "product_id", path),
        variant_external_id=variant,
        sku=_text(row, "sku", path),
    )


def _variants(all_lines: list[tuple[str, dict[str, Any]]]) -> dict[str, str]:
    """parent item_id -> the chosen simple product's id (a configurable product's child row)."""
    found: dict[str, str] = {}
    for path, row in all_lines:
        parent, product = _text(row, "parent_item_id", path), _text(row, "product_id", path)
        if parent is not None and product is not None:
            found.setdefault(parent, product)
    return found


def _order_customer(
    order: dict[str, Any], billing: dict[str, Any] | None, country: str | None, path: str
) -> CustomerData | None:
    """The buyer; None when the order names nobody (no customer id, email or phone)."""
    guest = order.get("customer_is_guest") in (True, 1, "1")
    customer = CustomerData(
        external_id=None if guest else _text(order, "customer_id", path),
        email=_text(order, "customer_email", path),
        phone=None if billing is None else _text(billing, "telephone", f"{path}.billing_address"),
        first_name=_text(order, "customer_firstname", path),
        last_name=_text(order, "customer_lastname", path),
        country=country,
    )
    if customer.external_id is None and customer.email is None and customer.phone is None:
        return None
    return customer


def order_from_entity(order: dict[str, Any], path: str = "data.order") -> OrderData:
    """A sales_order entity (webhook model data or REST JSON) -> OrderData."""
    currency_raw = _text(order, "order_currency_code", path)
    if currency_raw is None:
        raise BadPayload(f"{path}.order_currency_code: required")
    try:
        currency = normalize_currency(currency_raw)
    except InvalidValue as exc:
        raise BadPayload(f"{path}.order_currency_code: {exc}") from None
    placed_at = _time(order.get("created_at"), f"{path}.created_at")
    if placed_at is None:
        raise BadPayload(f"{path}.created_at: required")
    updated_at = _time(order.get("updated_at"), f"{path}.updated_at")
    all_lines = _rows(order, "items", path)
    lines = [(p, row) for p, row in all_lines if _blank(row.get("parent_item_id"))]
    variants = _variants(all_lines)
    billing, shipping = _addresses(order, path)
    shipping_country = _country(shipping)
    coupon = _text(order, "coupon_code", path)
    refunded = None if _blank(order.get("total_refunded")) else _money(order, "total_refunded", currency, path)
    return OrderData(
        external_id=_id(order, "entity_id", path),
        currency=currency,
        placed_at=placed_at,
        customer=_order_customer(order, billing, _country(billing) or shipping_country, path),
        number=_text(order, "increment_id", path),
        subtotal_minor=_money(order, "subtotal", currency, path),
        discount_minor=abs(_money(order, "discount_amount", currency, path)),
        shipping_minor=_money(order, "shipping_amount", currency, path),
        tax_minor=_money(order, "tax_amount", currency, path),
        total_minor=_money(order, "grand_total", currency, path),
        refunded_minor=refunded,
        discount_codes=[coupon] if coupon else [],
        financial_status=_financial_status(order, currency, path),
        fulfillment_status=_fulfillment_status(order, lines),
        shipping_country=shipping_country,
        # Magento keeps no cancellation time: the save that moved the order to "canceled" is it.
        cancelled_at=(updated_at or placed_at) if _text(order, "state") == "canceled" else None,
        lines=[_line(row, currency, p, variants.get(_text(row, "item_id", p) or "")) for p, row in lines],
        source_updated_at=updated_at,
    )


def _subscribed(customer: dict[str, Any], path: str) -> bool | None:
    extension = _object(customer, "extension_attributes", path)
    value = None if extension is None else extension.get("is_subscribed")
    return None if value is None else value in (True, 1, "1")


def customer_from_entity(customer: dict[str, Any], path: str = "data.customer") -> CustomerData:
    """A customer entity (model data with entity_id, or REST JSON with id) -> CustomerData."""
    key = "id" if _blank(customer.get("entity_id")) else "entity_id"
    addresses = [row for _, row in _rows(customer, "addresses", path)]
    default_billing = _text(customer, "default_billing")
    preferred = [
        a for a in addresses if a.get("default_billing") in (True, 1, "1") or _text(a, "id") == default_billing
    ]
    candidates = preferred or addresses
    address = candidates[0] if candidates else None
    return CustomerData(
        external_id=_id(customer, key, path),
        email=_text(customer, "email", path),
        phone=None if address is None else _text(address, "telephone", f"{path}.addresses"),
        first_name=_text(customer, "firstname", path),
        last_name=_text(customer, "lastname", path),
        country=_country(address),
        email_marketing=_subscribed(customer, path),
        created_at=_time(customer.get("created_at"), f"{path}.created_at"),
        source_updated_at=_time(customer.get("updated_at"), f"{path}.updated_at"),
    )


def _entity(payload: Any, key: str) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise BadPayload("body: must be a JSON object")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise BadPayload("data: required (send the hook's default payload, or keep the 'data' field)")
    entity = data.get(key)
    if not isinstance(entity, dict):
        raise BadPayload(f"data.{key}: required object")
    return entity


class MagentoConnector:
    """WebhookConnector for Adobe Commerce Webhooks (see the module docstring for the why)."""

    platform = "magento"

    def verify(self, headers: Headers, body: bytes, secrets: Sequence[str], now: datetime) -> None:
        verify_commerce_signature(headers, body, secrets)

    def identify(self, headers: Headers, body: bytes) -> DeliveryInfo:
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            payload = None
        topic = _topic_of(payload)
        return DeliveryInfo(topic=topic, dedupe_key=hashlib.sha256(topic.encode() + b"\n" + body).hexdigest())

    def parse(self, topic: str, body: bytes, store: StoreInfo) -> list[StoreObject]:
        name = topic.removeprefix("observer.")
        if name in ORDER_EVENTS:
            return [order_from_entity(_entity(_load(body), "order"))]
        if name in CUSTOMER_EVENTS:
            key = CUSTOMER_EVENTS[name]
            return [customer_from_entity(_entity(_load(body), key), f"data.{key}")]
        if name == UNKNOWN:
            raise UnknownTopic("the payload has no eventName: send the hook's default payload (no <fields> filter)")
        supported = ", ".join((*ORDER_EVENTS, *CUSTOMER_EVENTS))
        raise UnknownTopic(f"Magento event {topic!r} is not translated; supported: {supported}")
