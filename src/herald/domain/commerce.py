"""Typed store objects, whatever platform they came from. Store connectors (herald.stores)
translate platform payloads into these; services/commerce.py writes them. Pure data, no IO.

Money is integer minor units of `currency` (see domain/money.py). Times are aware UTC.
`source_updated_at` is the platform's own updated_at: an older version of an object never
overwrites a newer one (deliveries arrive out of order and repeated).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(slots=True)
class CustomerData:
    """A buyer as the store knows them. Any identity may be missing (guest checkouts)."""

    external_id: str | None = None  # the platform's customer id
    email: str | None = None
    phone: str | None = None  # raw; normalised to E.164 with `country` as the default region
    first_name: str | None = None
    last_name: str | None = None
    country: str | None = None  # ISO 3166-1 alpha-2 (default address / shipping country)
    language: str | None = None  # BCP 47, e.g. the customer's locale
    tags: list[str] = field(default_factory=list)
    # Marketing consent as the platform reports it: True granted, False withdrawn, None unknown.
    email_marketing: bool | None = None
    sms_marketing: bool | None = None
    consent_at: datetime | None = None  # when email consent (and SMS, unless sms_consent_at) was stated
    sms_consent_at: datetime | None = None
    created_at: datetime | None = None
    source_updated_at: datetime | None = None


@dataclass(slots=True)
class LineData:
    title: str
    quantity: int
    unit_price_minor: int
    total_minor: int
    external_id: str | None = None
    product_external_id: str | None = None
    variant_external_id: str | None = None
    sku: str | None = None


@dataclass(slots=True)
class OrderData:
    external_id: str
    currency: str
    placed_at: datetime
    customer: CustomerData | None = None
    number: str | None = None  # what the buyer sees, e.g. "#1001"
    subtotal_minor: int = 0
    discount_minor: int = 0
    shipping_minor: int = 0
    tax_minor: int = 0
    total_minor: int = 0
    refunded_minor: int | None = None  # None: unknown from this payload (keep what we have)
    discount_codes: list[str] = field(default_factory=list)
    financial_status: str | None = None  # pending, paid, refunded, partially_refunded, voided...
    fulfillment_status: str | None = None  # None (unfulfilled), partial, fulfilled
    shipping_country: str | None = None
    cancelled_at: datetime | None = None
    checkout_token: str | None = None
    status_url: str | None = None
    lines: list[LineData] = field(default_factory=list)
    fulfillments: list[FulfillmentData] = field(default_factory=list)  # embedded in some payloads
    refunds: list[RefundData] = field(default_factory=list)
    source_updated_at: datetime | None = None


@dataclass(slots=True)
class CheckoutData:
    """A cart that reached checkout (the input of abandoned-cart recovery)."""

    external_id: str
    currency: str
    started_at: datetime
    customer: CustomerData | None = None
    token: str | None = None
    subtotal_minor: int = 0
    total_minor: int = 0
    discount_codes: list[str] = field(default_factory=list)
    lines: list[LineData] = field(default_factory=list)
    recovery_url: str | None = None  # where the buyer resumes this cart
    completed_at: datetime | None = None
    source_updated_at: datetime | None = None


@dataclass(slots=True)
class FulfillmentData:
    external_id: str
    order_external_id: str
    status: str | None = None  # pending, open, success, cancelled, error, failure
    shipment_status: str | None = None  # in_transit, out_for_delivery, delivered, ...
    tracking_company: str | None = None
    tracking_numbers: list[str] = field(default_factory=list)
    tracking_urls: list[str] = field(default_factory=list)
    created_at: datetime | None = None
    source_updated_at: datetime | None = None


@dataclass(slots=True)
class RefundData:
    external_id: str
    order_external_id: str
    amount_minor: int
    currency: str
    refunded_at: datetime
    note: str | None = None


@dataclass(slots=True)
class ProductData:
    external_id: str
    title: str
    handle: str | None = None
    url: str | None = None
    image_url: str | None = None
    vendor: str | None = None
    product_type: str | None = None
    status: str | None = None
    price_minor: int | None = None  # the lowest variant price
    currency: str | None = None
    tags: list[str] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)  # {external_id, title, sku, price_minor}
    source_updated_at: datetime | None = None


StoreObject = CustomerData | OrderData | CheckoutData | FulfillmentData | RefundData | ProductData


@dataclass(frozen=True, slots=True)
class StoreInfo:
    """What a connector may need to know about the store it translates for."""

    id: str
    workspace_id: str
    platform: str
    currency: str  # the store's default currency, when a payload omits one
    domain: str | None = None
