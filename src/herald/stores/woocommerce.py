"""WooCommerce: signed webhooks in (REST API v3 payloads), REST API v3 for backfill. Pure
translation into domain/commerce.py objects; no database, no services.

Sources (checked, not guessed):
  * WC_Webhook::deliver() (woocommerce/includes/class-wc-webhook.php): the body is
    trim(wp_json_encode(payload)); headers X-WC-Webhook-Source, -Topic, -Resource, -Event,
    -Signature, -ID, -Delivery-ID; signature = base64(hash_hmac('sha256', body,
    wp_specialchars_decode(secret, ENT_QUOTES), true)); delivery id = wp_hash(webhook id . time())
    (one-second resolution). For `deleted` events the payload is only {"id": N}.
  * WC_Webhook::deliver_ping(): when a webhook is saved active, WooCommerce POSTs the body
    `webhook_id=<id>` with only a User-Agent ("WooCommerce/x Hookshot (WordPress/y)"): no
    signature, no topic, no delivery id. The webhook is only activated if that ping gets a 200.
  * Orders/customers/products: the REST API v3 docs (woocommerce-rest-api-docs, wp-api-v3): the
    fixtures in tests/stores/payloads/woocommerce/ are the documented JSON examples.
  * Pagination: `page`/`per_page` (max 100) with X-WP-Total / X-WP-TotalPages and a Link header.
  * API authentication: the REST API docs (wp-api-v3 "Authentication") and
    WC_REST_Authentication (includes/class-wc-rest-authentication.php): over HTTPS a key in HTTP
    Basic auth or in the consumer_key/consumer_secret query parameters; over plain HTTP only
    OAuth 1.0a. What this client supports, and why: see WooCommerceApi (HTTPS only).

The ping: accepted without a signature only when the request carries no X-WC-Webhook-Signature
and no X-WC-Webhook-Topic header and the whole body is exactly `webhook_id=<digits>` (at most 20).
Such a body carries no data, so accepting it unsigned lets nobody inject anything: it is stored as a
handshake and never parsed. Everything else — any JSON body, any body with a topic header — needs
a valid signature. Refusing the ping would stop the store owner from ever activating the webhook.

Dedupe key: "<topic>|<X-WC-Webhook-Delivery-ID>|<sha256 of body, 32 hex>". The delivery id is a hash
of the webhook id and the current second, so two different deliveries of one webhook within the
same second share it; the body hash keeps them apart while a byte-identical replay still collapses.

Status mapping (Woo status -> financial_status / fulfillment_status):
  pending -> pending / None        on-hold -> pending / None (awaiting payment confirmation)
  processing -> paid / None        completed -> paid / fulfilled
  cancelled -> voided / None, cancelled_at = date_modified_gmt (Woo keeps no cancellation date)
  refunded -> refunded / None      failed -> failed / None      trash -> None / None
  any other (plugin statuses) -> paid if date_paid_gmt is set, else None / None
  processing/completed/on-hold with refunds -> partially_refunded.
Other choices: times are the *_gmt fields read as UTC (the non-gmt ones are site-local and carry
no offset); subtotal = sum of line totals (after discounts, before tax and shipping); discount
codes = coupon_lines[].code; status_url = payment_url only while the order awaits payment
(pending/failed/on-hold); embedded refunds [{id, total: "-10.00"}] become positive amounts with
refunded_at = the order's date_modified_gmt (the payload has no refund date), and refunded_minor
is their sum (None when a payload has no `refunds` field at all); WooCommerce core
has no marketing consent, so consent is None; *.deleted topics translate to nothing (the history
stays; erasure is a separate flow).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import html
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx

from herald.domain.commerce import (
    CustomerData,
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
from herald.stores.payload import iso_time as _gmt
from herald.stores.payload import money as _money
from herald.stores.payload import text as _str

SIGNATURE_HEADER = "x-wc-webhook-signature"
TOPIC_HEADER = "x-wc-webhook-topic"
DELIVERY_ID_HEADER = "x-wc-webhook-delivery-id"
PING_TOPIC = "ping"
NO_TOPIC = "(no X-WC-Webhook-Topic header)"
PING_BODY = re.compile(rb"webhook_id=[0-9]{1,20}")

Json = payload.Json


# ---- small, strict readers of a JSON payload --------------------------------------------------
def _obj(raw: Any, field: str) -> Json:
    return payload.obj(raw, field, empty_list_is_empty=True)  # PHP writes an empty object as []

def _text(raw: Any) -> str | None:
    """Names come HTML-escaped ("Ship Your Idea &ndash; Color: Black")."""
    text = _str(raw)
    return html.unescape(text) if text else None


def _id(raw: Any, field: str, *, required: bool = True) -> str | None:
    """WooCommerce ids are integers; 0 means none (a guest's customer_id, a simple product's variation)."""
    if raw is None or raw == "" or raw == 0 or raw == "0":
        if required:
            raise BadPayload(f"{field} is missing")
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise BadPayload(f"{field} {raw!r} is not an id")
    return str(raw)


def _country(address: Json) -> str | None:
    code = _str(address.get("country"))
    return code.upper() if code else None


def _reject_legacy(raw: Json, resource: str) -> None:
    """Webhooks set to the legacy API version wrap the object: {"order": {...}}."""
    if resource in raw and isinstance(raw[resource], dict) and "id" not in raw:
        raise BadPayload(f"this is a legacy-API payload ({{{resource!r}: ...}}): set the webhook's API version "
                         "to 'WP REST API Integration v3' in WooCommerce > Settings > Advanced > Webhooks")


# ---- status mapping --------------------------------------------------------------------------
STATUS_MAP: dict[str, tuple[str | None, str | None]] = {
    "pending": ("pending", None),
    "checkout-draft": ("pending", None),
    "on-hold": ("pending", None),
    "processing": ("paid", None),
    "completed": ("paid", "fulfilled"),
    "cancelled": ("voided", None),
    "refunded": ("refunded", None),
    "failed": ("failed", None),
    "trash": (None, None),
}
PARTIALLY_REFUNDABLE = frozenset({"processing", "completed", "on-hold"})
AWAITING_PAYMENT = frozenset({"pending", "failed", "on-hold"})


def statuses(status: str | None, *, paid: bool, refunded: bool) -> tuple[str | None, str | None]:
    """WooCommerce order status -> (financial_status, fulfillment_status); see the module docstring."""
    key = (status or "").lower().removeprefix("wc-")
    financial, fulfillment = STATUS_MAP.get(key, ("paid" if paid else None, None))
    if refunded and key in PARTIALLY_REFUNDABLE:
        financial = "partially_refunded"
    return financial, fulfillment


# ---- mapping ---------------------------------------------------------------------------------
def customer_from(raw: Json) -> CustomerData:
    """A v3 customer (customer.created/updated, GET /customers)."""
    billing, shipping = _obj(raw.get("billing"), "billing"), _obj(raw.get("shipping"), "shipping")
    return CustomerData(
        external_id=_id(raw.get("id"), "id"),
        email=_str(raw.get("email")) or _str(billing.get("email")),
        phone=_str(billing.get("phone")),
        first_name=_text(raw.get("first_name")) or _text(billing.get("first_name")),
        last_name=_text(raw.get("last_name")) or _text(billing.get("last_name")),
        country=_country(billing) or _country(shipping),
        created_at=_gmt(raw.get("date_created_gmt"), "date_created_gmt"),
        source_updated_at=_gmt(raw.get("date_modified_gmt"), "date_modified_gmt"),
    )


def _order_customer(raw: Json) -> CustomerData | None:
    billing, shipping = _obj(raw.get("billing"), "billing"), _obj(raw.get("shipping"), "shipping")
    customer = CustomerData(
        external_id=_id(raw.get("customer_id"), "customer_id", required=False),  # 0: a guest
        email=_str(billing.get("email")),
        phone=_str(billing.get("phone")),
        first_name=_text(billing.get("first_name")),
        last_name=_text(billing.get("last_name")),
        country=_country(billing) or _country(shipping),
    )
    if customer.external_id is None and customer.email is None and customer.phone is None:
        return None
    return customer


def line_from(raw: Any, currency: str, field: str) -> LineData:
    item = _obj(raw, field)
    title = _text(item.get("name"))
    if title is None:
        raise BadPayload(f"{field}.name is missing")
    quantity = item.get("quantity")
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        raise BadPayload(f"{field}.quantity {quantity!r} is not a whole number")
    total = _money(item.get("total"), currency, f"{field}.total")  # after discounts, before tax
    price = item.get("price")  # a JSON number (subtotal / quantity), may carry more decimals
    if price is None or price == "":
        subtotal = _money(item.get("subtotal"), currency, f"{field}.subtotal")
        unit = subtotal // quantity if quantity else subtotal
    else:
        unit = _money(price if isinstance(price, str | int) else Decimal(str(price)), currency, f"{field}.price")
    return LineData(
        title=title, quantity=quantity, unit_price_minor=unit, total_minor=total,
        external_id=_id(item.get("id"), f"{field}.id", required=False),
        product_external_id=_id(item.get("product_id"), f"{field}.product_id", required=False),
        variant_external_id=_id(item.get("variation_id"), f"{field}.variation_id", required=False),
        sku=_str(item.get("sku")),
    )


def order_from(raw: Json, *, default_currency: str | None = None) -> OrderData:
    _reject_legacy(raw, "order")
    order_id = _id(raw.get("id"), "id") or ""
    currency = _currency(raw.get("currency"), default_currency, "currency")
    placed_at = _gmt(raw.get("date_created_gmt"), "date_created_gmt")
    if placed_at is None:
        raise BadPayload("date_created_gmt is missing")
    modified_at = _gmt(raw.get("date_modified_gmt"), "date_modified_gmt")
    status = _str(raw.get("status"))
    refunds = []
    for i, entry in enumerate(_list(raw.get("refunds"), "refunds")):
        refund = _obj(entry, f"refunds[{i}]")
        refunds.append(RefundData(
            external_id=_id(refund.get("id"), f"refunds[{i}].id") or "",
            order_external_id=order_id,
            amount_minor=abs(_money(refund.get("total"), currency, f"refunds[{i}].total")),  # sent as "-10.00"
            currency=currency,
            refunded_at=modified_at or placed_at,
            note=_str(refund.get("reason")) or _str(refund.get("refund")),
        ))
    lines = [line_from(item, currency, f"line_items[{i}]")
             for i, item in enumerate(_list(raw.get("line_items"), "line_items"))]
    financial, fulfillment = statuses(status, paid=raw.get("date_paid_gmt") not in (None, ""), refunded=bool(refunds))
    shipping = _obj(raw.get("shipping"), "shipping")
    return OrderData(
        external_id=order_id,
        currency=currency,
        placed_at=placed_at,
        customer=_order_customer(raw),
        number=_str(raw.get("number")),
        subtotal_minor=sum(line.total_minor for line in lines),
        discount_minor=_money(raw.get("discount_total"), currency, "discount_total"),
        shipping_minor=_money(raw.get("shipping_total"), currency, "shipping_total"),
        tax_minor=_money(raw.get("total_tax"), currency, "total_tax"),
        total_minor=_money(raw.get("total"), currency, "total"),
        refunded_minor=sum(r.amount_minor for r in refunds) if "refunds" in raw else None,
        discount_codes=[code for code in (_str(_obj(c, "coupon_lines[]").get("code"))
                                          for c in _list(raw.get("coupon_lines"), "coupon_lines")) if code],
        financial_status=financial,
        fulfillment_status=fulfillment,
        shipping_country=_country(shipping),
        cancelled_at=(modified_at or placed_at) if (status or "").lower() == "cancelled" else None,
        status_url=_str(raw.get("payment_url")) if (status or "").lower() in AWAITING_PAYMENT else None,
        lines=lines,
        refunds=refunds,
        source_updated_at=modified_at,
    )


def product_from(raw: Json, store: StoreInfo) -> ProductData:
    _reject_legacy(raw, "product")
    currency = _currency(None, store.currency, "store currency")
    title = _text(raw.get("name"))
    if title is None:
        raise BadPayload("name is missing")
    images = _list(raw.get("images"), "images")
    price = raw.get("price")
    return ProductData(
        external_id=_id(raw.get("id"), "id") or "",
        title=title,
        handle=_str(raw.get("slug")),
        url=_str(raw.get("permalink")),
        image_url=_str(_obj(images[0], "images[0]").get("src")) if images else None,
        product_type=_str(raw.get("type")),
        status=_str(raw.get("status")),
        price_minor=None if price in (None, "") else _money(price, currency, "price"),
        currency=currency,
        tags=[t for t in (_text(_obj(tag, "tags[]").get("name")) for tag in _list(raw.get("tags"), "tags")) if t],
        # the v3 product lists its variations by id only (their prices need GET .../variations)
        variants=[{"external_id": _id(v, "variations[]"), "title": None, "sku": None, "price_minor": None}
                  for v in _list(raw.get("variations"), "variations")],
        source_updated_at=_gmt(raw.get("date_modified_gmt"), "date_modified_gmt"),
    )


def _order_topic(raw: Json, store: StoreInfo) -> list[StoreObject]:
    return [order_from(raw, default_currency=store.currency)]


def _customer_topic(raw: Json, store: StoreInfo) -> list[StoreObject]:
    _reject_legacy(raw, "customer")
    return [customer_from(raw)]


def _product_topic(raw: Json, store: StoreInfo) -> list[StoreObject]:
    return [product_from(raw, store)]


def _deleted_topic(raw: Json, store: StoreInfo) -> list[StoreObject]:
    _id(raw.get("id"), "id")  # the whole documented payload; nothing is erased from the history
    return []


TOPICS: dict[str, Callable[[Json, StoreInfo], list[StoreObject]]] = {
    "order.created": _order_topic,
    "order.updated": _order_topic,
    "order.restored": _order_topic,
    "order.deleted": _deleted_topic,
    "customer.created": _customer_topic,
    "customer.updated": _customer_topic,
    "customer.deleted": _deleted_topic,
    "product.created": _product_topic,
    "product.updated": _product_topic,
    "product.restored": _product_topic,
    "product.deleted": _deleted_topic,
}


# ---- the webhook connector -------------------------------------------------------------------
def sign(secret: str, body: bytes) -> str:
    """The X-WC-Webhook-Signature value WooCommerce sends for `body` (used by tests and tools)."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def is_ping(headers: Headers, body: bytes) -> bool:
    """WooCommerce's activation ping exactly as deliver_ping() sends it (see the module docstring)."""
    return (_header(headers, SIGNATURE_HEADER) is None and _header(headers, TOPIC_HEADER) is None
            and PING_BODY.fullmatch(body) is not None)


def _keys(secret: str) -> list[bytes]:
    """WooCommerce signs with wp_specialchars_decode(secret): a secret pasted as it appears
    HTML-escaped ("a&amp;b") signs as "a&b"; both spellings are tried."""
    decoded = html.unescape(secret)
    return [secret.encode()] if decoded == secret else [secret.encode(), decoded.encode()]


class WooCommerceConnector:
    platform = "woocommerce"

    def verify(self, headers: Headers, body: bytes, secrets: Sequence[str], now: datetime) -> None:
        if is_ping(headers, body):
            return  # unsigned by design and carries no data; never parsed (identify marks it a ping)
        sent = _header(headers, SIGNATURE_HEADER)
        if sent is None:
            raise SignatureError("missing X-WC-Webhook-Signature header: only WooCommerce's signed webhooks "
                                 "(and its `webhook_id=N` activation ping) are accepted")
        try:
            digest = base64.b64decode(sent, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("X-WC-Webhook-Signature is not base64") from None
        if len(digest) != hashlib.sha256().digest_size:
            raise SignatureError("X-WC-Webhook-Signature is not a base64 HMAC-SHA256 (wrong length; the webhook "
                                 "must use the default sha256 algorithm)")
        keys = [key for secret in secrets if secret for key in _keys(secret)]
        if not keys:
            raise SignatureError("the store has no webhook secret to check the signature with")
        matched = False
        for key in keys:  # every key is tried, so the time taken does not say which one matched
            matched = hmac.compare_digest(hmac.new(key, body, hashlib.sha256).digest(), digest) or matched
        if not matched:
            raise SignatureError("X-WC-Webhook-Signature does not match the body: the body was altered, or the "
                                 "webhook's Secret in WooCommerce > Settings > Advanced > Webhooks differs from "
                                 "the one Herald has")

    def identify(self, headers: Headers, body: bytes) -> DeliveryInfo:
        if is_ping(headers, body):
            return DeliveryInfo(topic=PING_TOPIC, dedupe_key=f"ping|{body.decode()}", is_ping=True)
        topic = _header(headers, TOPIC_HEADER) or NO_TOPIC
        delivery = _header(headers, DELIVERY_ID_HEADER)
        digest = hashlib.sha256(body).hexdigest()
        key = f"{topic}|{delivery}|{digest[:32]}" if delivery else f"{topic}|sha256:{digest}"
        return DeliveryInfo(topic=topic, dedupe_key=key)

    def parse(self, topic: str, body: bytes, store: StoreInfo) -> list[StoreObject]:
        if topic == PING_TOPIC:
            return []  # the activation handshake: nothing to translate
        translate = TOPICS.get(topic)
        if translate is None:
            if topic == NO_TOPIC:
                raise UnknownTopic("the delivery had no X-WC-Webhook-Topic header")
            raise UnknownTopic(f"WooCommerce topic {topic!r} is not translated (known: {', '.join(sorted(TOPICS))})")
        return translate(payload.load_object(body, "WooCommerce"), store)


# ---- backfill through the REST API v3 --------------------------------------------------------
PAGE_SIZE = 100  # the REST maximum
DEFAULT_RETRY_AFTER = 2.0
KEY_REJECTED_CODE = "woocommerce_rest_authentication_error"  # the key was read; its secret (or rights) are wrong


def retry_after(value: str | None, default: float = DEFAULT_RETRY_AFTER) -> float:
    try:
        seconds = float(value) if value else default
    except ValueError:
        return default  # an HTTP-date or junk: wait the default
    return max(0.0, seconds) if seconds == seconds else default  # NaN -> default


class WooCommerceApi:
    """One store's REST API v3 (/wp-json/wc/v3/customers and /orders), 100 per page, ordered by id
    ascending so records created during the sync land on later pages instead of shifting earlier
    ones; the cursor is the next page number (X-WP-TotalPages says when to stop).

    Authentication — HTTPS only, on purpose. Over HTTPS WooCommerce reads the consumer key and
    secret from HTTP Basic auth or, if those are absent, from the `consumer_key`/`consumer_secret`
    query parameters (WC_REST_Authentication::perform_basic_authentication). Over plain HTTP it
    ignores both and demands OAuth 1.0a one-legged signatures, which this client does not
    implement: a `http://` store URL is refused up front with that explanation, rather than
    failing later with a 401 that would wrongly blame the key. The key goes in the Authorization
    header first; some hosts strip that header (WooCommerce then answers 401
    `woocommerce_rest_cannot_view`, as for an unknown key), so on such a 401 the page is asked once
    more with the key in the query string, as WooCommerce documents, and the client keeps doing
    that for the rest of the sync. The secret never appears in an error message.
    """

    def __init__(self, base_url: str, consumer_key: str, consumer_secret: str,
                 client: httpx.AsyncClient | None = None) -> None:
        if base_url.startswith("http://"):
            raise StoreApiError(f"store URL {base_url!r} is plain http: WooCommerce accepts REST API keys only over "
                                "HTTPS (over http it demands OAuth 1.0a signatures, which Herald does not support); "
                                "use the site's https:// address")
        if not base_url.startswith("https://"):
            raise StoreApiError(f"store URL {base_url!r} must start with https:// (the WordPress site address)")
        if not consumer_key or not consumer_secret:
            raise StoreApiError("no REST API key: create one with Read access under WooCommerce > Settings > "
                                "Advanced > REST API and give Herald its consumer key and secret")
        self.base_url = base_url.rstrip("/")
        self._key, self._secret = consumer_key, consumer_secret
        self.key_in_query = False  # switched on when the host strips the Authorization header
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(30.0))

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def url(self, resource: Resource) -> str:
        return f"{self.base_url}/wp-json/wc/v3/{resource}"

    async def page(self, resource: Resource, cursor: str | None) -> ApiPage:
        if resource not in ("customers", "orders"):
            raise StoreApiError(f"WooCommerce backfill reads customers or orders, not {resource!r}")
        number = _page_number(cursor)
        url = self.url(resource)
        params = {"per_page": str(PAGE_SIZE), "page": str(number), "orderby": "id", "order": "asc"}
        response = await self._get(url, params)
        if response.status_code == 401 and not self.key_in_query and _error_code(response) != KEY_REJECTED_CODE:
            self.key_in_query = True  # the header may have been stripped on the way: the documented fallback
            response = await self._get(url, params)
        self._raise_for_status(response, resource, url)
        items = self._items(response, resource)
        objects = [self._translate(resource, item) for item in items]
        return ApiPage(objects=objects, next_cursor=self._next_cursor(response, number, len(items)))

    async def _get(self, url: str, params: dict[str, str]) -> httpx.Response:
        headers = {"Accept": "application/json"}
        try:
            if self.key_in_query:
                return await self._client.get(url, params={**params, "consumer_key": self._key,
                                                           "consumer_secret": self._secret}, headers=headers)
            return await self._client.get(url, params=params, auth=httpx.BasicAuth(self._key, self._secret),
                                          headers=headers)
        except httpx.HTTPError as exc:
            detail = f"{type(exc).__name__}: {exc}".replace(self._secret, "***")
            raise StoreApiError(f"could not reach WooCommerce at {self.base_url} ({detail}); this is retryable: "
                                "check the store URL and try again") from None

    def _raise_for_status(self, response: httpx.Response, resource: str, url: str) -> None:
        status = response.status_code
        if status < 300:
            return
        if status == 429:
            raise RateLimited(retry_after(response.headers.get("retry-after")), "WooCommerce API rate limit reached")
        detail = _error_text(response)
        if status == 401 and _error_code(response) == KEY_REJECTED_CODE:
            raise StoreApiError(f"WooCommerce refused the REST API key (HTTP 401{detail}): the consumer secret "
                                "(cs_...) does not belong to the consumer key (ck_...), or the key lacks Read "
                                "access; copy both from WooCommerce > Settings > Advanced > REST API")
        if status == 401:
            raise StoreApiError(f"WooCommerce did not accept the REST API key (HTTP 401{detail}), sent both in the "
                                "Authorization header and in the query string: check that the consumer key (ck_...) "
                                "exists under WooCommerce > Settings > Advanced > REST API and its user may read "
                                "orders and customers; behind a proxy that ends HTTPS, WordPress must be told the "
                                "site is HTTPS or it ignores API keys")
        if status == 403:
            raise StoreApiError(f"WooCommerce refused access to {resource} (HTTP 403{detail}): the key's user needs "
                                "Read permission on the store (give the key Read access)")
        if status == 404:
            raise StoreApiError(f"no WooCommerce REST API at {url} (HTTP 404{detail}): check the store URL is the "
                                "WordPress site address, WooCommerce is active and permalinks are not 'Plain'")
        if status >= 500:
            raise StoreApiError(f"WooCommerce had a server error (HTTP {status}{detail}); this is temporary and "
                                "retryable: run the sync again later")
        raise StoreApiError(f"WooCommerce rejected the request to {url} (HTTP {status}{detail})")

    @staticmethod
    def _items(response: httpx.Response, resource: str) -> list[Json]:
        try:
            data = response.json()
        except ValueError:
            raise StoreApiError(f"WooCommerce answered {resource} with something that is not JSON; is the store "
                                "URL the WordPress site address?") from None
        if not isinstance(data, list) or not all(isinstance(i, dict) for i in data):
            raise StoreApiError(f"WooCommerce's answer for {resource} is not a list of objects")
        return data

    @staticmethod
    def _translate(resource: str, item: Json) -> StoreObject:
        try:
            return order_from(item) if resource == "orders" else customer_from(item)
        except BadPayload as exc:
            raise StoreApiError(f"WooCommerce {resource[:-1]} {item.get('id')!r} cannot be read: {exc}") from None

    @staticmethod
    def _next_cursor(response: httpx.Response, number: int, count: int) -> str | None:
        total_pages = response.headers.get("x-wp-totalpages")
        if total_pages is not None:
            try:
                return str(number + 1) if number < int(total_pages) else None
            except ValueError:
                raise StoreApiError(f"WooCommerce sent X-WP-TotalPages {total_pages!r}, not a number") from None
        if "next" in response.links:
            return str(number + 1)
        return str(number + 1) if count == PAGE_SIZE else None


def _page_number(cursor: str | None) -> int:
    if cursor is None:
        return 1
    if not cursor.isdigit() or int(cursor) < 1:
        raise StoreApiError(f"the saved cursor {cursor[:50]!r} is not a page number; restart the sync")
    return int(cursor)


def _error_json(response: httpx.Response) -> Json:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _error_code(response: httpx.Response) -> str | None:
    return _str(_error_json(response).get("code"))


def _error_text(response: httpx.Response) -> str:
    """WordPress's own reason ({"code": ..., "message": ...}), short."""
    data = _error_json(response)
    code, message = _str(data.get("code")), _str(data.get("message"))
    text = ": ".join(part for part in (code, message) if part)
    return f": {text[:200]}" if text else ""
