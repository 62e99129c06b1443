"""Shopify: signed REST-shaped webhooks in, Admin REST API for backfill. Pure translation into
domain/commerce.py objects; no database, no services.

Sources (checked, not guessed):
  * Webhook topics and sample payloads: the REST Webhook resource reference (shopify.dev, API
    2026-01: samples for orders/*, checkouts/*, customers/*, customers_email_marketing_consent/update,
    customers_marketing_consent/update, fulfillments/*, refunds/create, products/*). The fixtures in
    tests/stores/payloads/shopify/ are those samples (payloads/shopify/README.md says where one differs).
  * Changelog "New customer's webhook and changes to existing customer's webhooks payload"
    (2025-01): webhooks of API version 2025-01 and later carry no `tags`, `email_marketing_consent`
    or `sms_marketing_consent` in customer payloads (standalone or embedded in orders/checkouts);
    consent changes arrive on customers_email_marketing_consent/update and
    customers_marketing_consent/update instead, which this connector translates too. Older versions
    carry the consent objects of the REST Customer resource (state, opt_in_level,
    consent_updated_at); both shapes are read.
  * Headers: X-Shopify-Topic, X-Shopify-Hmac-Sha256, X-Shopify-Webhook-Id, X-Shopify-Event-Id.
  * Pagination: REST Admin API cursor pagination, `Link: <...page_info=...>; rel="next"`; with
    page_info only `limit` (and `fields`) may accompany it. Rate limit: 429 with `Retry-After`.

Verification: base64(HMAC-SHA256(secret, raw body)) in X-Shopify-Hmac-Sha256, compared in constant
time against every given secret (the current one and, during a rotation, the previous one). The
secret is the app's client secret, or for webhooks made in the admin (Settings > Notifications) the
signing key shown there. Shopify signs no timestamp, so there is no replay window to check: replays
are absorbed by the dedupe key.

Dedupe key: X-Shopify-Event-Id is shared by every delivery caused by one merchant action, across
topics (an order placement fires orders/create and orders/paid with the same event id), so the key
is "<topic>|event:<id>"; without it "<topic>|webhook:<X-Shopify-Webhook-Id>" (constant across
retries of one delivery); without either, "<topic>|sha256:<hex of body>".

Field choices:
  * Money is shop money (`total_price`, `subtotal_price`, ... are in the shop currency `currency`).
  * Order placed_at = processed_at (the real date of imported orders), else created_at.
  * Line total = price x quantity - sum(discount_allocations) (- total_discount on old payloads).
  * Consent states (email_marketing_consent.state / sms_marketing_consent.state):
      subscribed -> True; unsubscribed, redacted -> False (an explicit opt-out or erasure);
      not_subscribed, pending, invalid, anything else -> None. `not_subscribed` is Shopify's state
      for a customer who was never asked: recording it as a withdrawal would erase consent the
      contact gave elsewhere (e.g. a Herald sign-up form), and a real opt-out arrives as
      `unsubscribed`. Legacy `accepts_marketing` (and order/checkout `buyer_accepts_marketing`,
      `buyer_accepts_sms_marketing`): True -> True, False -> None (unticked box, not an opt-out).
      A box is only read when the customer object has no consent object; its time is the order's
      placement (or the checkout's updated_at), never "now", so replaying an old order cannot
      re-grant consent withdrawn since. The SMS box counts only for the number it was ticked for
      (`sms_marketing_phone`). CustomerData has one consent time for both channels: the earliest
      of the channels that state something.
  * Refund amount = sum of the refund's transactions with kind "refund" and status "success" (the
    money actually returned). refund_line_items subtotals are not used: they count restocked goods
    even when no money moved. Currency = the transactions' currency, else the shop-money currency of
    the refund's *_set fields, else the order's/store's currency.
  * Checkout external_id = `id` (the documented numeric id), else `token`; `token` is kept as the
    token orders refer to (checkout_token). Shopify deprecated `token` (and `currency`) on the REST
    abandoned-checkout resource in 2024-10, so the key must not depend on it; a checkout without
    `currency` falls back to `presentment_currency`, then the store's currency.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

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
from herald.domain.connectors import (
    ApiPage,
    BadPayload,
    DeliveryInfo,
    Headers,
    RateLimited,
    Resource,
    SignatureError,
    StoreApiError,
    UnknownTopic,
)
from herald.stores import payload
from herald.stores.payload import as_list as _list
from herald.stores.payload import currency as _currency
from herald.stores.payload import header as _header
from herald.stores.payload import iso_time as _time
from herald.stores.payload import money as _money
from herald.stores.payload import obj as _obj
from herald.stores.payload import text as _str

HMAC_HEADER = "x-shopify-hmac-sha256"
TOPIC_HEADER = "x-shopify-topic"
EVENT_ID_HEADER = "x-shopify-event-id"
WEBHOOK_ID_HEADER = "x-shopify-webhook-id"
NO_TOPIC = "(no X-Shopify-Topic header)"

Json = payload.Json


# ---- small, strict readers of a JSON payload --------------------------------------------------
def _id(raw: Any, field: str, *, required: bool = True) -> str | None:
    """Shopify ids are 64-bit integers (JSON numbers); GraphQL-style strings are accepted too."""
    if raw is None or raw == "":
        if required:
            raise BadPayload(f"{field} is missing")
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise BadPayload(f"{field} {raw!r} is not an id")
    return str(raw)


def _required_time(raw: Any, field: str) -> datetime:
    value = _time(raw, field)
    if value is None:
        raise BadPayload(f"{field} is missing")
    return value


def _shop_amount(money_set: Any, field: str) -> tuple[Any, str | None]:
    """(amount, currency_code) of a `*_set` object's shop_money, or (None, None)."""
    shop = _obj(_obj(money_set, field).get("shop_money"), f"{field}.shop_money")
    return shop.get("amount"), _str(shop.get("currency_code"))


def _tags(raw: Any) -> list[str]:
    """Shopify tags are one comma-separated string: "Léon, Noël" -> ["Léon", "Noël"]."""
    if raw is None:
        return []
    parts = raw if isinstance(raw, list) else str(raw).split(",")
    return [tag for tag in (str(p).strip() for p in parts) if tag]


def _language(raw: Any) -> str | None:
    """Shopify locales are BCP 47-ish ("en", "pt-BR", sometimes "en_US")."""
    text = _str(raw)
    return text.replace("_", "-") if text else None


def _country(address: Any, field: str) -> str | None:
    code = _str(_obj(address, field).get("country_code"))
    return code.upper() if code else None


# ---- consent ---------------------------------------------------------------------------------
GRANTED_STATES = frozenset({"subscribed"})
WITHDRAWN_STATES = frozenset({"unsubscribed", "redacted"})


def consent_from_state(state: Any) -> bool | None:
    """Shopify marketing consent state -> True granted / False withdrawn / None no statement."""
    text = (_str(state) or "").lower()
    if text in GRANTED_STATES:
        return True
    if text in WITHDRAWN_STATES:
        return False
    return None  # not_subscribed (never asked), pending (double opt-in not confirmed), invalid, unknown


def _checkbox(raw: Any) -> bool | None:
    """A ticked marketing box is a grant; an unticked one says nothing."""
    return True if raw is True else None


# ---- mapping ---------------------------------------------------------------------------------
def customer_from(raw: Json, *, field: str = "customer", email: Any = None, phone: Any = None,
                  country: str | None = None, locale: Any = None, first_name: Any = None, last_name: Any = None,
                  accepts_email: Any = None, accepts_sms: Any = None,
                  checkbox_at: datetime | None = None) -> CustomerData | None:
    """A Shopify customer object, with what the surrounding order/checkout knows as fallbacks.
    None when there is nothing to identify the person by (no id, email or phone).

    `accepts_email`/`accepts_sms` are the order's or checkout's marketing checkboxes, used only
    when the customer object carries no consent object (webhooks of API version 2025-01 and later
    never do); `checkbox_at` is when that box was seen ticked (the order's placement), so a replayed
    old order cannot re-grant consent the buyer withdrew since."""
    email_marketing, email_at = _email_consent(raw, field, accepts_email, checkbox_at)
    sms_marketing, sms_at = _sms_consent(raw, field, accepts_sms, checkbox_at)
    customer = CustomerData(
        external_id=_id(raw.get("id"), f"{field}.id", required=False),
        email=_str(raw.get("email")) or _str(email),
        phone=_str(raw.get("phone")) or _str(phone),
        first_name=_str(raw.get("first_name")) or _str(first_name),
        last_name=_str(raw.get("last_name")) or _str(last_name),
        country=_country(raw.get("default_address"), f"{field}.default_address") or country,
        language=_language(raw.get("locale")) or _language(locale),
        tags=_tags(raw.get("tags")),
        email_marketing=email_marketing,
        sms_marketing=sms_marketing,
        consent_at=email_at if email_marketing is not None else None,
        sms_consent_at=sms_at if sms_marketing is not None else None,
        created_at=_time(raw.get("created_at"), f"{field}.created_at"),
        source_updated_at=_time(raw.get("updated_at"), f"{field}.updated_at"),
    )
    if customer.external_id is None and customer.email is None and customer.phone is None:
        return None
    return customer


def _email_consent(raw: Json, field: str, checkbox: Any, checkbox_at: datetime | None,
                   ) -> tuple[bool | None, datetime | None]:
    consent = _obj(raw.get("email_marketing_consent"), f"{field}.email_marketing_consent")
    if consent:
        return consent_from_state(consent.get("state")), _time(
            consent.get("consent_updated_at"), f"{field}.email_marketing_consent.consent_updated_at")
    if raw.get("accepts_marketing") is not None:  # before API version 2022-04 (removed in 2024-01)
        return _checkbox(raw.get("accepts_marketing")), _time(
            raw.get("accepts_marketing_updated_at"), f"{field}.accepts_marketing_updated_at")
    return _checkbox(checkbox), checkbox_at


def _sms_consent(raw: Json, field: str, checkbox: Any, checkbox_at: datetime | None,
                 ) -> tuple[bool | None, datetime | None]:
    consent = _obj(raw.get("sms_marketing_consent"), f"{field}.sms_marketing_consent")
    if consent:
        return consent_from_state(consent.get("state")), _time(
            consent.get("consent_updated_at"), f"{field}.sms_marketing_consent.consent_updated_at")
    return _checkbox(checkbox), checkbox_at


def line_from(raw: Any, currency: str, field: str) -> LineData:
    item = _obj(raw, field)
    title = _str(item.get("title")) or _str(item.get("name"))
    if title is None:
        raise BadPayload(f"{field}.title is missing")
    quantity = item.get("quantity")
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise BadPayload(f"{field}.quantity {quantity!r} is not a whole number")
    unit = _money(item.get("price"), currency, f"{field}.price")
    allocations = _list(item.get("discount_allocations"), f"{field}.discount_allocations")
    if allocations:
        discount = sum(_money(_obj(a, f"{field}.discount_allocations[]").get("amount"), currency,
                              f"{field}.discount_allocations[].amount") for a in allocations)
    else:
        discount = _money(item.get("total_discount"), currency, f"{field}.total_discount")
    return LineData(
        title=title, quantity=quantity, unit_price_minor=unit, total_minor=unit * quantity - discount,
        external_id=_id(item.get("id"), f"{field}.id", required=False) or _str(item.get("key")),
        product_external_id=_id(item.get("product_id"), f"{field}.product_id", required=False),
        variant_external_id=_id(item.get("variant_id"), f"{field}.variant_id", required=False),
        sku=_str(item.get("sku")),
    )


def _codes(raw: Any, field: str) -> list[str]:
    codes = []
    for entry in _list(raw, field):
        code = _str(entry.get("code")) if isinstance(entry, dict) else _str(entry)
        if code:
            codes.append(code)
    return codes


def fulfillment_from(raw: Json, *, field: str = "fulfillment", order_id: str | None = None) -> FulfillmentData:
    numbers = [n for n in (_str(x) for x in _list(raw.get("tracking_numbers"), f"{field}.tracking_numbers")) if n]
    urls = [u for u in (_str(x) for x in _list(raw.get("tracking_urls"), f"{field}.tracking_urls")) if u]
    single_number, single_url = _str(raw.get("tracking_number")), _str(raw.get("tracking_url"))
    return FulfillmentData(
        external_id=_id(raw.get("id"), f"{field}.id") or "",
        order_external_id=_id(raw.get("order_id"), f"{field}.order_id", required=order_id is None) or order_id or "",
        status=_str(raw.get("status")),
        shipment_status=_str(raw.get("shipment_status")),
        tracking_company=_str(raw.get("tracking_company")),
        tracking_numbers=numbers or ([single_number] if single_number else []),
        tracking_urls=urls or ([single_url] if single_url else []),
        created_at=_time(raw.get("created_at"), f"{field}.created_at"),
        source_updated_at=_time(raw.get("updated_at"), f"{field}.updated_at"),
    )


def _refund_currency(raw: Json, transactions: list[Json], fallback: str | None, field: str) -> str:
    named = {c.upper() for c in (_str(t.get("currency")) for t in transactions) if c}
    if len(named) > 1:
        raise BadPayload(f"{field}.transactions are in several currencies ({', '.join(sorted(named))})")
    if named:
        return _currency(named.pop(), None, f"{field}.transactions[].currency")
    candidates = [_obj(item, f"{field}.refund_line_items[]").get("subtotal_set")
                  for item in _list(raw.get("refund_line_items"), f"{field}.refund_line_items")]
    candidates.append(raw.get("total_duties_set"))
    for money_set in candidates:
        _, code = _shop_amount(money_set, f"{field}.*_set")
        if code:
            return _currency(code, None, f"{field}.*_set.shop_money.currency_code")
    return _currency(None, fallback, f"{field}.currency")


def refund_from(raw: Json, *, field: str = "refund", order_id: str | None = None,
                currency: str | None = None) -> RefundData:
    """Amount = successful refund transactions (money returned); see the module docstring."""
    transactions = [_obj(t, f"{field}.transactions[]") for t in _list(raw.get("transactions"), f"{field}.transactions")]
    returned = [t for t in transactions if _str(t.get("kind")) == "refund" and _str(t.get("status")) == "success"]
    code = _refund_currency(raw, returned, currency, field)
    amount = sum(_money(t.get("amount"), code, f"{field}.transactions[].amount") for t in returned)
    refunded_at = _time(raw.get("processed_at"), f"{field}.processed_at") or _time(raw.get("created_at"),
                                                                                    f"{field}.created_at")
    if refunded_at is None:
        raise BadPayload(f"{field}.created_at is missing")
    return RefundData(
        external_id=_id(raw.get("id"), f"{field}.id") or "",
        order_external_id=_id(raw.get("order_id"), f"{field}.order_id", required=order_id is None) or order_id or "",
        amount_minor=amount, currency=code, refunded_at=refunded_at, note=_str(raw.get("note")),
    )


def order_from(raw: Json, *, default_currency: str | None = None) -> OrderData:
    order_id = _id(raw.get("id"), "id") or ""
    currency = _currency(raw.get("currency"), default_currency, "currency")
    shipping_address, billing_address = _obj(raw.get("shipping_address"), "shipping_address"), _obj(
        raw.get("billing_address"), "billing_address")
    shipping_country = _country(shipping_address, "shipping_address")
    shipping_amount, _ = _shop_amount(raw.get("total_shipping_price_set"), "total_shipping_price_set")
    if shipping_amount is None:
        shipping = sum(_money(_obj(s, "shipping_lines[]").get("price"), currency, "shipping_lines[].price")
                       for s in _list(raw.get("shipping_lines"), "shipping_lines"))
    else:
        shipping = _money(shipping_amount, currency, "total_shipping_price_set.shop_money.amount")
    refunds = [refund_from(_obj(r, "refunds[]"), field="refunds[]", order_id=order_id, currency=currency)
               for r in _list(raw.get("refunds"), "refunds")]
    placed_at = _time(raw.get("processed_at"), "processed_at") or _required_time(raw.get("created_at"), "created_at")
    customer = customer_from(
        _obj(raw.get("customer"), "customer"), email=raw.get("email") or raw.get("contact_email"),
        phone=raw.get("phone"), country=shipping_country or _country(billing_address, "billing_address"),
        locale=raw.get("customer_locale"), first_name=billing_address.get("first_name"),
        last_name=billing_address.get("last_name"), accepts_email=raw.get("buyer_accepts_marketing"),
        checkbox_at=placed_at)
    return OrderData(
        external_id=order_id,
        currency=currency,
        placed_at=placed_at,
        customer=customer,
        number=_str(raw.get("name")) or _str(raw.get("order_number")),
        subtotal_minor=_money(raw.get("subtotal_price"), currency, "subtotal_price"),
        discount_minor=_money(raw.get("total_discounts"), currency, "total_discounts"),
        shipping_minor=shipping,
        tax_minor=_money(raw.get("total_tax"), currency, "total_tax"),
        total_minor=_money(raw.get("total_price"), currency, "total_price"),
        refunded_minor=sum(r.amount_minor for r in refunds if r.currency == currency) if "refunds" in raw else None,
        discount_codes=_codes(raw.get("discount_codes"), "discount_codes"),
        financial_status=_str(raw.get("financial_status")),
        fulfillment_status=_fulfillment_status(raw.get("fulfillment_status")),
        shipping_country=shipping_country,
        cancelled_at=_time(raw.get("cancelled_at"), "cancelled_at"),
        checkout_token=_str(raw.get("checkout_token")),
        status_url=_str(raw.get("order_status_url")),
        lines=[line_from(item, currency, f"line_items[{i}]")
               for i, item in enumerate(_list(raw.get("line_items"), "line_items"))],
        fulfillments=[fulfillment_from(_obj(f, "fulfillments[]"), field="fulfillments[]", order_id=order_id)
                      for f in _list(raw.get("fulfillments"), "fulfillments")],
        refunds=refunds,
        source_updated_at=_time(raw.get("updated_at"), "updated_at"),
    )


def _fulfillment_status(raw: Any) -> str | None:
    """null means unfulfilled in Shopify; some older payloads spell it out."""
    text = _str(raw)
    return None if text is None or text.lower() in ("unfulfilled", "null") else text


def checkout_from(raw: Json, *, default_currency: str | None = None) -> CheckoutData:
    token = _str(raw.get("token"))
    external_id = _id(raw.get("id"), "id", required=False) or token
    if external_id is None:
        raise BadPayload("id is missing (and so is token)")
    currency = _currency(raw.get("currency") or raw.get("presentment_currency"), default_currency, "currency")
    shipping_address, billing_address = _obj(raw.get("shipping_address"), "shipping_address"), _obj(
        raw.get("billing_address"), "billing_address")
    started_at = _required_time(raw.get("created_at"), "created_at")
    updated_at = _time(raw.get("updated_at"), "updated_at")
    embedded = _obj(raw.get("customer"), "customer")
    sms_phone = _str(raw.get("sms_marketing_phone"))
    phone = _str(embedded.get("phone")) or _str(raw.get("phone")) or sms_phone
    customer = customer_from(
        embedded, email=raw.get("email"), phone=phone,
        country=_country(shipping_address, "shipping_address") or _country(billing_address, "billing_address"),
        locale=raw.get("customer_locale"), first_name=billing_address.get("first_name"),
        last_name=billing_address.get("last_name"), accepts_email=raw.get("buyer_accepts_marketing"),
        # the SMS box grants consent for the number typed beside it, not for another one on file
        accepts_sms=raw.get("buyer_accepts_sms_marketing") if _same_number(sms_phone, phone) else None,
        checkbox_at=updated_at or started_at)
    return CheckoutData(
        external_id=external_id,
        currency=currency,
        started_at=started_at,
        customer=customer,
        token=token,
        subtotal_minor=_money(raw.get("subtotal_price"), currency, "subtotal_price"),
        total_minor=_money(raw.get("total_price"), currency, "total_price"),
        discount_codes=_codes(raw.get("discount_codes"), "discount_codes"),
        lines=[line_from(item, currency, f"line_items[{i}]")
               for i, item in enumerate(_list(raw.get("line_items"), "line_items"))],
        recovery_url=_str(raw.get("abandoned_checkout_url")),
        completed_at=_time(raw.get("completed_at"), "completed_at"),
        source_updated_at=updated_at,
    )


def _same_number(a: str | None, b: str | None) -> bool:
    """Two spellings of one phone number ("+1 613-555-0143" and "+16135550143")."""
    digits = [re.sub(r"\D", "", x or "") for x in (a, b)]
    return bool(digits[0]) and digits[0] == digits[1]


def _storefront(domain: str | None) -> str | None:
    if not domain:
        return None
    host = domain.strip().removeprefix("https://").removeprefix("http://").strip("/")
    return f"https://{host}" if host else None


def product_from(raw: Json, store: StoreInfo) -> ProductData:
    currency = _currency(None, store.currency, "store currency")
    title = _str(raw.get("title"))
    if title is None:
        raise BadPayload("title is missing")
    variants: list[dict[str, Any]] = []
    for i, entry in enumerate(_list(raw.get("variants"), "variants")):
        variant = _obj(entry, f"variants[{i}]")
        price = variant.get("price")
        variants.append({
            "external_id": _id(variant.get("id"), f"variants[{i}].id", required=False),
            "title": _str(variant.get("title")),
            "sku": _str(variant.get("sku")),
            "price_minor": None if price in (None, "") else _money(price, currency, f"variants[{i}].price"),
        })
    prices = [v["price_minor"] for v in variants if v["price_minor"] is not None]
    handle = _str(raw.get("handle"))
    base = _storefront(store.domain)
    image = _obj(raw.get("image"), "image")
    images = _list(raw.get("images"), "images")
    first_image = _obj(images[0], "images[0]") if images else {}
    return ProductData(
        external_id=_id(raw.get("id"), "id") or "",
        title=title,
        handle=handle,
        url=f"{base}/products/{handle}" if base and handle else None,
        image_url=_str(image.get("src")) or _str(first_image.get("src")),
        vendor=_str(raw.get("vendor")),
        product_type=_str(raw.get("product_type")),
        status=_str(raw.get("status")),
        price_minor=min(prices) if prices else None,
        currency=currency,
        tags=_tags(raw.get("tags")),
        variants=variants,
        source_updated_at=_time(raw.get("updated_at"), "updated_at"),
    )


def _order_topic(raw: Json, store: StoreInfo) -> list[StoreObject]:
    return [order_from(raw, default_currency=store.currency)]


def _checkout_topic(raw: Json, store: StoreInfo) -> list[StoreObject]:
    return [checkout_from(raw, default_currency=store.currency)]


def _customer_topic(raw: Json, store: StoreInfo) -> list[StoreObject]:
    _id(raw.get("id"), "id")
    customer = customer_from(raw, field="customer")
    return [customer] if customer is not None else []


def _email_consent_topic(raw: Json, store: StoreInfo) -> list[StoreObject]:
    """customers_email_marketing_consent/update: {customer_id, email_address, email_marketing_consent}."""
    consent = _obj(raw.get("email_marketing_consent"), "email_marketing_consent")
    if not consent:
        raise BadPayload("email_marketing_consent is missing")
    state = consent_from_state(consent.get("state"))
    at = _time(consent.get("consent_updated_at"), "email_marketing_consent.consent_updated_at")
    return [CustomerData(external_id=_id(raw.get("customer_id"), "customer_id"), email=_str(raw.get("email_address")),
                         email_marketing=state, consent_at=at if state is not None else None)]


def _sms_consent_topic(raw: Json, store: StoreInfo) -> list[StoreObject]:
    """customers_marketing_consent/update: {id, phone, sms_marketing_consent}."""
    consent = _obj(raw.get("sms_marketing_consent"), "sms_marketing_consent")
    if not consent:
        raise BadPayload("sms_marketing_consent is missing")
    state = consent_from_state(consent.get("state"))
    at = _time(consent.get("consent_updated_at"), "sms_marketing_consent.consent_updated_at")
    return [CustomerData(external_id=_id(raw.get("id"), "id"), phone=_str(raw.get("phone")),
                         sms_marketing=state, sms_consent_at=at if state is not None else None)]


def _fulfillment_topic(raw: Json, store: StoreInfo) -> list[StoreObject]:
    return [fulfillment_from(raw)]


def _refund_topic(raw: Json, store: StoreInfo) -> list[StoreObject]:
    return [refund_from(raw, currency=store.currency)]


def _product_topic(raw: Json, store: StoreInfo) -> list[StoreObject]:
    return [product_from(raw, store)]


TOPICS: dict[str, Callable[[Json, StoreInfo], list[StoreObject]]] = {
    "orders/create": _order_topic,
    "orders/updated": _order_topic,
    "orders/paid": _order_topic,
    "orders/cancelled": _order_topic,
    "orders/fulfilled": _order_topic,
    "checkouts/create": _checkout_topic,
    "checkouts/update": _checkout_topic,
    "customers/create": _customer_topic,
    "customers/update": _customer_topic,
    # since API version 2025-01 customers/* payloads carry no consent: these two topics do
    "customers_email_marketing_consent/update": _email_consent_topic,
    "customers_marketing_consent/update": _sms_consent_topic,
    "fulfillments/create": _fulfillment_topic,
    "fulfillments/update": _fulfillment_topic,
    "refunds/create": _refund_topic,
    "products/create": _product_topic,
    "products/update": _product_topic,
}


# ---- the webhook connector -------------------------------------------------------------------
def sign(secret: str, body: bytes) -> str:
    """The X-Shopify-Hmac-Sha256 value Shopify sends for `body` (used by tests and tools)."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


class ShopifyConnector:
    platform = "shopify"

    def verify(self, headers: Headers, body: bytes, secrets: Sequence[str], now: datetime) -> None:
        sent = _header(headers, HMAC_HEADER)
        if sent is None:
            raise SignatureError("missing X-Shopify-Hmac-Sha256 header: only Shopify's signed webhooks are accepted")
        try:
            digest = base64.b64decode(sent, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("X-Shopify-Hmac-Sha256 is not base64") from None
        if len(digest) != hashlib.sha256().digest_size:
            raise SignatureError("X-Shopify-Hmac-Sha256 is not a base64 HMAC-SHA256 (wrong length)")
        keys = [s for s in secrets if s]
        if not keys:
            raise SignatureError("the store has no webhook secret to check the signature with")
        matched = False
        for key in keys:  # every key is tried, so the time taken does not say which one matched
            expected = hmac.new(key.encode(), body, hashlib.sha256).digest()
            matched = hmac.compare_digest(expected, digest) or matched
        if not matched:
            raise SignatureError("X-Shopify-Hmac-Sha256 does not match the body: the body was altered, or it was "
                                 "signed with another secret (use the app's client secret, or the signing key shown "
                                 "under Settings > Notifications > Webhooks)")

    def identify(self, headers: Headers, body: bytes) -> DeliveryInfo:
        topic = _header(headers, TOPIC_HEADER) or NO_TOPIC
        event_id, webhook_id = _header(headers, EVENT_ID_HEADER), _header(headers, WEBHOOK_ID_HEADER)
        if event_id:
            key = f"{topic}|event:{event_id}"
        elif webhook_id:
            key = f"{topic}|webhook:{webhook_id}"
        else:
            key = f"{topic}|sha256:{hashlib.sha256(body).hexdigest()}"
        return DeliveryInfo(topic=topic, dedupe_key=key)

    def parse(self, topic: str, body: bytes, store: StoreInfo) -> list[StoreObject]:
        translate = TOPICS.get(topic)
        if translate is None:
            if topic == NO_TOPIC:
                raise UnknownTopic("the delivery had no X-Shopify-Topic header")
            raise UnknownTopic(f"Shopify topic {topic!r} is not translated (known: {', '.join(sorted(TOPICS))})")
        return translate(payload.load_object(body, "Shopify"), store)


# ---- backfill through the Admin REST API -----------------------------------------------------
PAGE_SIZE = 250  # the REST maximum
DEFAULT_RETRY_AFTER = 2.0
FIRST_PAGE: dict[str, dict[str, str]] = {
    "customers": {"limit": str(PAGE_SIZE)},
    "orders": {"status": "any", "limit": str(PAGE_SIZE)},  # default is open orders only
}


def retry_after(value: str | None, default: float = DEFAULT_RETRY_AFTER) -> float:
    try:
        seconds = float(value) if value else default
    except ValueError:
        return default  # an HTTP-date or junk: wait the documented default
    return max(0.0, seconds) if seconds == seconds else default  # NaN -> default


def page_info_of(cursor: str) -> str:
    """A saved cursor is the page_info itself, or (older saves) the whole next-page URL."""
    if "://" not in cursor:
        return cursor
    values = parse_qs(urlsplit(cursor).query).get("page_info")
    if not values:
        raise StoreApiError(f"the saved cursor {cursor[:200]!r} has no page_info; restart the sync from the beginning")
    return values[0]


class ShopifyApi:
    """One store's Admin REST API (customers.json, orders.json), 250 per page, cursor = page_info.

    The next page's host is never taken from the Link header: requests only ever go to base_url,
    so the access token cannot be sent elsewhere. Listing orders older than 60 days needs the
    read_all_orders scope besides read_orders.
    """

    def __init__(self, base_url: str, access_token: str, client: httpx.AsyncClient | None = None,
                 api_version: str = "2024-10") -> None:
        if not base_url.startswith(("https://", "http://")):
            raise StoreApiError(f"store URL {base_url!r} must start with https:// (e.g. https://your-shop.myshopify.com)")
        if not access_token:
            raise StoreApiError("no Admin API access token: create a custom app with read_customers and read_orders "
                                "and give Herald its access token")
        self.base_url = base_url.rstrip("/")
        self.api_version = api_version
        self._token = access_token
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(30.0))

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def url(self, resource: Resource) -> str:
        return f"{self.base_url}/admin/api/{self.api_version}/{resource}.json"

    async def page(self, resource: Resource, cursor: str | None) -> ApiPage:
        if resource not in FIRST_PAGE:
            raise StoreApiError(f"Shopify backfill reads customers or orders, not {resource!r}")
        params = dict(FIRST_PAGE[resource]) if cursor is None else {"limit": str(PAGE_SIZE),
                                                                     "page_info": page_info_of(cursor)}
        url = self.url(resource)
        try:
            response = await self._client.get(url, params=params, headers={"X-Shopify-Access-Token": self._token,
                                                                           "Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise StoreApiError(f"could not reach Shopify at {self.base_url} ({type(exc).__name__}: {exc}); "
                                "this is retryable: check the store URL and try again") from None
        self._raise_for_status(response, resource, url)
        items = self._items(response, resource)
        objects = [self._translate(resource, item) for item in items]
        return ApiPage(objects=objects, next_cursor=self._next_cursor(response))

    def _raise_for_status(self, response: httpx.Response, resource: str, url: str) -> None:
        status = response.status_code
        if status < 300:
            return
        if status == 429:
            raise RateLimited(retry_after(response.headers.get("retry-after")), "Shopify API rate limit reached")
        detail = _error_text(response)
        if status == 401:
            raise StoreApiError(f"Shopify refused the access token (HTTP 401{detail}): check the Admin API access "
                                "token of the store's custom app; it may have been revoked or the app uninstalled")
        if status == 403:
            raise StoreApiError(f"Shopify refused access to {resource} (HTTP 403{detail}): give the app the "
                                f"read_{resource} scope (and read_all_orders for orders older than 60 days)")
        if status == 404:
            raise StoreApiError(f"Shopify answered 404 for {url}{detail}: check the store URL "
                                f"(https://<shop>.myshopify.com) and that API version {self.api_version} is supported")
        if status == 402:
            raise StoreApiError(f"the shop is frozen (HTTP 402 Payment Required{detail}): the shop owner must settle "
                                "the Shopify bill before its API answers")
        if status == 423:
            raise StoreApiError(f"the shop is locked (HTTP 423{detail}); ask Shopify support or retry later")
        if status >= 500:
            raise StoreApiError(f"Shopify had a server error (HTTP {status}{detail}); this is temporary and "
                                "retryable: run the sync again later")
        raise StoreApiError(f"Shopify rejected the request to {url} (HTTP {status}{detail})")

    @staticmethod
    def _items(response: httpx.Response, resource: str) -> list[Json]:
        try:
            data = response.json()
        except ValueError:
            raise StoreApiError(f"Shopify answered {resource} with something that is not JSON; "
                                "is the store URL the shop's myshopify.com address?") from None
        items = data.get(resource) if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise StoreApiError(f"Shopify's answer has no {resource!r} list of objects")
        return items

    @staticmethod
    def _translate(resource: str, item: Json) -> StoreObject:
        try:
            if resource == "orders":
                return order_from(item)
            customer = customer_from(item)
        except BadPayload as exc:
            raise StoreApiError(f"Shopify {resource[:-1]} {item.get('id')!r} cannot be read: {exc}") from None
        if customer is None:
            raise StoreApiError(f"Shopify customer record without an id: {sorted(item)[:10]}")
        return customer

    @staticmethod
    def _next_cursor(response: httpx.Response) -> str | None:
        link = response.links.get("next")
        if not link or not link.get("url"):
            return None
        values = parse_qs(urlsplit(link["url"]).query).get("page_info")
        if not values:
            raise StoreApiError(f"Shopify's Link rel=next has no page_info: {link['url'][:200]!r}")
        return values[0]


def _error_text(response: httpx.Response) -> str:
    """Shopify's own reason ({"errors": ...}), short; never the request's headers."""
    try:
        data = response.json()
    except ValueError:
        return ""
    errors = data.get("errors") if isinstance(data, dict) else None
    return f": {str(errors)[:200]}" if errors else ""

