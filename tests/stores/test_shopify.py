"""Shopify connector, pure (no database): signatures computed here from secrets (never by the
connector under test), delivery identity, and every topic's documented payload
(tests/stores/payloads/shopify/, see its README.md) mapped to the typed objects with every value
checked: money in minor units (USD, JPY with no decimals, KWD with three), times as aware UTC,
country codes, discount codes, statuses, the recovery URL, tracking data and consent."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from herald.domain.commerce import (
    CheckoutData,
    CustomerData,
    FulfillmentData,
    LineData,
    OrderData,
    ProductData,
    RefundData,
    StoreInfo,
)
from herald.domain.connectors import BadPayload, SignatureError, UnknownTopic
from herald.stores.shopify import TOPICS, ShopifyConnector, consent_from_state

PAYLOADS = Path(__file__).parent / "payloads" / "shopify"
SECRET = "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"  # an app's client secret (signs the app's webhooks)
OLD_SECRET = "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"
NOW = datetime(2026, 5, 3, 12, 0, tzinfo=UTC)
STORE = StoreInfo(id="sto_1", workspace_id="wsp_1", platform="shopify", currency="USD", domain="jsmith.myshopify.com")
CONNECTOR = ShopifyConnector()


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def payload(name: str) -> bytes:
    return (PAYLOADS / f"{name}.json").read_bytes()


def edited(name: str, change: Any) -> bytes:
    data = json.loads(payload(name))
    change(data)
    return json.dumps(data).encode()


def signature(body: bytes, secret: str = SECRET) -> str:
    """What Shopify sends: base64 of the HMAC-SHA256 of the raw body, keyed by the secret."""
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def headers(body: bytes, topic: str, *, secret: str = SECRET, event_id: str | None = "b54557e4-bdd9-4b37-8a5f",
            webhook_id: str | None = "b1f2c3d4-0000-4a5b-9c8d-000000000001") -> dict[str, str]:
    """Lower-cased, as the connector protocol receives them."""
    sent = {"x-shopify-topic": topic, "x-shopify-hmac-sha256": signature(body, secret),
            "x-shopify-shop-domain": "jsmith.myshopify.com", "x-shopify-api-version": "2026-01",
            "x-shopify-triggered-at": "2026-05-03T11:59:59.123456Z", "content-type": "application/json"}
    if event_id:
        sent["x-shopify-event-id"] = event_id
    if webhook_id:
        sent["x-shopify-webhook-id"] = webhook_id
    return sent


def deliver(body: bytes, topic: str, store: StoreInfo = STORE) -> list[Any]:
    """The connector's whole path for one delivery: verify, identify, parse."""
    sent = headers(body, topic)
    CONNECTOR.verify(sent, body, [SECRET], NOW)
    info = CONNECTOR.identify(sent, body)
    assert info.topic == topic and not info.is_ping
    return CONNECTOR.parse(info.topic, body, store)


def one(body: bytes, topic: str, store: StoreInfo = STORE) -> Any:
    objects = deliver(body, topic, store)
    assert len(objects) == 1
    return objects[0]


def flip_bit(body: bytes, index: int) -> bytes:
    mutated = bytearray(body)
    mutated[index] ^= 0x01
    return bytes(mutated)


# ---- signatures ---------------------------------------------------------------------------------------


def test_a_good_signature_verifies() -> None:
    body = payload("orders_create")
    CONNECTOR.verify(headers(body, "orders/create"), body, [SECRET], NOW)


@pytest.mark.parametrize("index", [0, 1000, -2])
def test_a_one_bit_change_to_the_body_is_refused(index: int) -> None:
    body = payload("orders_create")
    sent = headers(body, "orders/create")
    with pytest.raises(SignatureError, match="does not match the body"):
        CONNECTOR.verify(sent, flip_bit(body, index), [SECRET], NOW)


def test_a_body_signed_with_another_secret_is_refused() -> None:
    body = payload("orders_create")
    with pytest.raises(SignatureError, match="another secret"):
        CONNECTOR.verify(headers(body, "orders/create", secret="shpss_not_this_shops_secret"), body, [SECRET], NOW)


def test_a_missing_signature_header_is_refused() -> None:
    body = payload("orders_create")
    sent = headers(body, "orders/create")
    del sent["x-shopify-hmac-sha256"]
    with pytest.raises(SignatureError, match="missing X-Shopify-Hmac-Sha256"):
        CONNECTOR.verify(sent, body, [SECRET], NOW)


@pytest.mark.parametrize("value", ["not base64 at all!", "c2hvcnQ=", "===="])
def test_a_malformed_signature_is_refused(value: str) -> None:
    body = payload("orders_create")
    sent = {**headers(body, "orders/create"), "x-shopify-hmac-sha256": value}
    with pytest.raises(SignatureError, match="X-Shopify-Hmac-Sha256 is not"):
        CONNECTOR.verify(sent, body, [SECRET], NOW)


def test_during_a_rotation_the_previous_secret_is_still_accepted() -> None:
    body = payload("orders_create")
    CONNECTOR.verify(headers(body, "orders/create", secret=OLD_SECRET), body, [SECRET, OLD_SECRET], NOW)
    CONNECTOR.verify(headers(body, "orders/create", secret=SECRET), body, [SECRET, OLD_SECRET], NOW)
    with pytest.raises(SignatureError):  # once the rotation is over, the old secret is refused
        CONNECTOR.verify(headers(body, "orders/create", secret=OLD_SECRET), body, [SECRET], NOW)


def test_a_store_without_a_secret_accepts_nothing() -> None:
    body = payload("orders_create")
    with pytest.raises(SignatureError, match="no webhook secret"):
        CONNECTOR.verify(headers(body, "orders/create"), body, ["", ""], NOW)


def test_header_names_in_any_case_are_read() -> None:
    body = payload("orders_create")
    sent = {"X-Shopify-Hmac-Sha256": signature(body), "X-Shopify-Topic": "orders/create"}
    CONNECTOR.verify(sent, body, [SECRET], NOW)
    assert CONNECTOR.identify(sent, body).topic == "orders/create"


# ---- delivery identity -----------------------------------------------------------------------------------


def test_the_dedupe_key_is_the_event_id() -> None:
    body = payload("orders_paid")
    info = CONNECTOR.identify(headers(body, "orders/paid", event_id="evt-7", webhook_id="wh-1"), body)
    assert info.topic == "orders/paid" and info.dedupe_key == "orders/paid|event:evt-7" and not info.is_ping
    # one merchant action fires several topics with the same event id: each is its own delivery
    other = CONNECTOR.identify(headers(body, "orders/create", event_id="evt-7", webhook_id="wh-2"), body)
    assert other.dedupe_key == "orders/create|event:evt-7"


def test_without_an_event_id_the_webhook_id_is_the_key_and_retries_share_it() -> None:
    body = payload("orders_paid")
    first = CONNECTOR.identify(headers(body, "orders/paid", event_id=None, webhook_id="wh-9"), body)
    retry = CONNECTOR.identify(headers(body, "orders/paid", event_id=None, webhook_id="wh-9"), body)
    assert first.dedupe_key == retry.dedupe_key == "orders/paid|webhook:wh-9"


def test_without_any_id_the_body_hash_is_the_key() -> None:
    body = payload("orders_paid")
    info = CONNECTOR.identify(headers(body, "orders/paid", event_id=None, webhook_id=None), body)
    assert info.dedupe_key == f"orders/paid|sha256:{hashlib.sha256(body).hexdigest()}"


def test_an_unknown_topic_is_reported_not_dropped() -> None:
    body = b'{"id": 408372092144951419, "handle": "mynewcollection"}'
    info = CONNECTOR.identify(headers(body, "collections/create"), body)
    assert info.topic == "collections/create"
    with pytest.raises(UnknownTopic, match="'collections/create' is not translated"):
        CONNECTOR.parse(info.topic, body, STORE)


def test_a_delivery_without_a_topic_is_reported() -> None:
    body = payload("orders_create")
    sent = headers(body, "orders/create")
    del sent["x-shopify-topic"]
    info = CONNECTOR.identify(sent, body)
    with pytest.raises(UnknownTopic, match="no X-Shopify-Topic header"):
        CONNECTOR.parse(info.topic, body, STORE)


def test_every_topic_the_issue_lists_is_translated() -> None:
    listed = {"orders/create", "orders/updated", "orders/paid", "orders/cancelled", "orders/fulfilled",
              "checkouts/create", "checkouts/update", "customers/create", "customers/update",
              "fulfillments/create", "fulfillments/update", "refunds/create", "products/create", "products/update"}
    assert listed <= set(TOPICS)


# ---- orders ---------------------------------------------------------------------------------------------

SAMPLE_LINES = [  # the five line items of Shopify's order sample, in USD
    LineData(title="Aviator sunglasses", quantity=1, unit_price_minor=8999, total_minor=8999,
             external_id="487817672276298554", product_external_id="788032119674292922", sku="SKU2006-001"),
    LineData(title="Lens Protection Plan (2 Year)", quantity=1, unit_price_minor=1999, total_minor=1999,
             external_id="789012345678901234", sku="LENS-PROTECT-2YR"),
    LineData(title="Premium Leather Case", quantity=1, unit_price_minor=2499, total_minor=2499,
             external_id="890123456789012345", sku="CASE-LEATHER-PREM"),
    LineData(title="Mid-century lounger", quantity=1, unit_price_minor=15999, total_minor=15999,
             external_id="976318377106520349", product_external_id="788032119674292922", sku="SKU2006-020"),
    LineData(title="Coffee table", quantity=1, unit_price_minor=11999, total_minor=11999,
             external_id="315789986012684393", product_external_id="788032119674292922", sku="SKU2006-035"),
]
STATUS_URL = "https://jsmith.myshopify.com/548380009/orders/123456abcd/authenticate?key=abcdefg"


def sample_buyer(**changes: Any) -> CustomerData:
    """The customer embedded in the order sample. The 2025-01+ shape has no consent object, so the
    order's ticked buyer_accepts_marketing box is the grant, dated when the order was placed."""
    buyer = CustomerData(external_id="115310627314723954", email="john@example.com", first_name="John",
                         last_name="Smith", country="CA", language="en", email_marketing=True,
                         consent_at=at(2022, 1, 1))
    for name, value in changes.items():
        setattr(buyer, name, value)
    return buyer


@pytest.mark.parametrize(("name", "topic"), [("orders_create", "orders/create"),
                                             ("orders_cancelled", "orders/cancelled")])
def test_order_sample(name: str, topic: str) -> None:
    # Shopify's own sample for both topics is a cancelled, voided order.
    assert one(payload(name), topic) == OrderData(
        external_id="820982911946154508", currency="USD", placed_at=at(2022, 1, 1), customer=sample_buyer(),
        number="#9999", subtotal_minor=40495, discount_minor=2000, shipping_minor=1000, tax_minor=0,
        total_minor=40495, refunded_minor=0, discount_codes=[], financial_status="voided", fulfillment_status=None,
        shipping_country="US", cancelled_at=at(2022, 1, 1), checkout_token=None, status_url=STATUS_URL,
        lines=SAMPLE_LINES, fulfillments=[], refunds=[], source_updated_at=at(2022, 1, 1))


def test_orders_paid() -> None:
    order = one(payload("orders_paid"), "orders/paid")
    # this customer object has the pre-2025-01 consent object: it wins over the order's checkbox
    buyer = sample_buyer(consent_at=at(2022, 1, 1), source_updated_at=at(2022, 1, 1, 14, 30))
    assert order == OrderData(
        external_id="820982911946154508", currency="USD", placed_at=at(2022, 1, 1), customer=buyer, number="#9999",
        subtotal_minor=40495, discount_minor=2000, shipping_minor=1000, tax_minor=0, total_minor=40495,
        refunded_minor=0, discount_codes=["SPRING20"], financial_status="paid", fulfillment_status=None,
        shipping_country="US", cancelled_at=None, checkout_token="123123123", status_url=STATUS_URL,
        lines=SAMPLE_LINES, fulfillments=[], refunds=[], source_updated_at=at(2022, 1, 1, 14, 30))
    assert order.placed_at.tzinfo is UTC and order.source_updated_at.utcoffset().total_seconds() == 0


SAMPLE_FULFILLMENT = FulfillmentData(
    external_id="123456", order_external_id="820982911946154508", status="success", shipment_status="in_transit",
    tracking_company="UPS", tracking_numbers=["1z827wk74630"],
    tracking_urls=["https://www.ups.com/WebTracking?loc=en_US&requester=ST&trackNums=1z827wk74630"],
    created_at=at(2022, 1, 1), source_updated_at=at(2022, 1, 2, 15, 0))


def test_orders_fulfilled_carries_its_fulfilments() -> None:
    order = one(payload("orders_fulfilled"), "orders/fulfilled")
    assert order.financial_status == "paid" and order.fulfillment_status == "fulfilled"
    assert order.fulfillments == [SAMPLE_FULFILLMENT]
    assert order.source_updated_at == at(2022, 1, 2, 15, 0) and order.refunded_minor == 0
    assert order.lines == SAMPLE_LINES and order.discount_codes == ["SPRING20"]


def test_orders_updated_carries_refunds_and_the_refunded_total() -> None:
    order = one(payload("orders_updated"), "orders/updated")
    assert order.financial_status == "partially_refunded" and order.fulfillment_status == "fulfilled"
    assert order.refunds == [RefundData(external_id="890088186047892319", order_external_id="820982911946154508",
                                        amount_minor=8500, currency="USD", refunded_at=at(2022, 1, 1),
                                        note="Things were damaged")]
    assert order.refunded_minor == 8500  # 75.00 + 10.00 returned, not the 414.95 of goods listed
    assert order.fulfillments == [SAMPLE_FULFILLMENT]
    assert order.source_updated_at == at(2022, 1, 3, 13, 0)


def test_an_order_in_a_three_decimal_currency() -> None:
    order = one(payload("orders_paid_kwd"), "orders/paid", StoreInfo("sto_k", "wsp_1", "shopify", "KWD"))
    assert order.currency == "KWD"
    assert (order.subtotal_minor, order.discount_minor, order.shipping_minor, order.tax_minor, order.total_minor) == (
        124320, 6140, 3070, 0, 124320)  # "124.320" KWD = 124320 fils
    assert [(line.unit_price_minor, line.total_minor) for line in order.lines] == [
        (27627, 27627), (6137, 6137), (7672, 7672), (49117, 49117), (36837, 36837)]
    assert order.number == "#10001" and order.discount_codes == ["SPRING20"]


def test_line_totals_subtract_discount_allocations() -> None:
    def discount(data: dict[str, Any]) -> None:
        line = data["line_items"][0]
        line["quantity"] = 3
        line["discount_allocations"] = [{"amount": "10.00", "discount_application_index": 0},
                                        {"amount": "0.50", "discount_application_index": 1}]
    order = one(edited("orders_paid", discount), "orders/paid")
    assert (order.lines[0].unit_price_minor, order.lines[0].quantity, order.lines[0].total_minor) == (8999, 3, 25947)


def test_a_guest_order_keeps_the_buyer_from_the_order_itself() -> None:
    def guest(data: dict[str, Any]) -> None:
        data["customer"] = None
        data["phone"] = "+14155550123"
        data["buyer_accepts_marketing"] = False
    buyer = one(edited("orders_create", guest), "orders/create").customer
    assert buyer == CustomerData(email="jon@example.com", phone="+14155550123", first_name="Steve",
                                 last_name="Shipper", country="US", language="en")  # unticked box: no statement


def test_imported_orders_are_placed_when_processed() -> None:
    order = one(edited("orders_paid", lambda d: d.update(processed_at="2019-06-30T23:15:00+02:00")), "orders/paid")
    assert order.placed_at == at(2019, 6, 30, 21, 15)


# ---- checkouts --------------------------------------------------------------------------------------------

CHECKOUT_LINES = [LineData(title="IPod Nano - 8GB", quantity=1, unit_price_minor=19900, total_minor=19900,
                           external_id="139cb5712fb4c8d9957dcfad9a3028da", product_external_id="632910392",
                           variant_external_id="808950810", sku="IPOD2008PINK")] * 2
RECOVERY_URL = "https://checkout.local/548380009/checkouts/123123123/recover?key=example-secret-token"


def test_checkouts_create() -> None:
    assert one(payload("checkouts_create"), "checkouts/create") == CheckoutData(
        external_id="981820079255243537", currency="USD", started_at=at(2022, 1, 1),
        customer=CustomerData(external_id="603851970716743426", email="john@example.com", first_name="John",
                              last_name="Smith", country="CA"),
        token="123123123", subtotal_minor=39800, total_minor=42188, discount_codes=[], lines=CHECKOUT_LINES,
        recovery_url=RECOVERY_URL, completed_at=None, source_updated_at=at(2022, 1, 1))


def test_checkouts_update_with_both_marketing_boxes_ticked() -> None:
    assert one(payload("checkouts_update"), "checkouts/update") == CheckoutData(
        external_id="981820079255243537", currency="USD", started_at=at(2022, 1, 1),
        customer=CustomerData(external_id="603851970716743426", email="john@example.com", phone="+16135550143",
                              first_name="John", last_name="Smith", country="CA", language="fr-CA",
                              email_marketing=True, sms_marketing=True, consent_at=at(2022, 1, 1, 13, 15),
                              sms_consent_at=at(2022, 1, 1, 13, 15)),
        token="123123123", subtotal_minor=39800, total_minor=42188, discount_codes=["WELCOME10"],
        lines=CHECKOUT_LINES, recovery_url=RECOVERY_URL, completed_at=at(2022, 1, 1, 13, 15),
        source_updated_at=at(2022, 1, 1, 13, 15))


def test_the_sms_box_does_not_grant_consent_for_another_number() -> None:
    def other_phone(data: dict[str, Any]) -> None:
        data["customer"]["phone"] = "+16135559999"
    buyer = one(edited("checkouts_update", other_phone), "checkouts/update").customer
    assert buyer.phone == "+16135559999" and buyer.sms_marketing is None and buyer.email_marketing is True

    def same_number_spelt_differently(data: dict[str, Any]) -> None:
        data["customer"]["phone"] = "+1 613-555-0143"
    assert one(edited("checkouts_update", same_number_spelt_differently), "checkouts/update").customer.sms_marketing


def test_a_checkout_in_a_zero_decimal_currency() -> None:
    checkout = one(payload("checkouts_create_jpy"), "checkouts/create", StoreInfo("sto_j", "wsp_1", "shopify", "JPY"))
    assert checkout.currency == "JPY"
    assert (checkout.subtotal_minor, checkout.total_minor) == (59700, 63282)  # yen have no minor unit
    assert [(x.unit_price_minor, x.total_minor) for x in checkout.lines] == [(29850, 29850), (29850, 29850)]


def test_a_checkout_without_the_deprecated_token_and_currency_fields() -> None:
    def modern(data: dict[str, Any]) -> None:
        del data["token"], data["currency"]
    checkout = one(edited("checkouts_create", modern), "checkouts/create")
    assert (checkout.external_id, checkout.token, checkout.currency) == ("981820079255243537", None, "USD")


# ---- customers and consent --------------------------------------------------------------------------------


def test_customers_create_in_the_2025_01_shape_says_nothing_about_consent() -> None:
    assert one(payload("customers_create"), "customers/create") == CustomerData(
        external_id="706405506930370084", email="bob@biller.com", phone=None, first_name="Bob", last_name="Biller",
        country="CA", tags=[], email_marketing=None, sms_marketing=None, consent_at=None,
        created_at=at(2022, 1, 1), source_updated_at=at(2022, 1, 1))


def test_customers_update_in_the_rest_resource_shape() -> None:
    assert one(payload("customers_update"), "customers/update") == CustomerData(
        external_id="207119551", email="bob.norman@mail.example.com", phone="+16136120707", first_name="Bob",
        last_name="Norman", country="US", tags=["Léon", "Noël"], email_marketing=None, sms_marketing=None,
        consent_at=None, created_at=at(2024, 1, 2, 13, 59, 11), source_updated_at=at(2024, 1, 2, 13, 59, 11))


@pytest.mark.parametrize(("state", "expected"), [
    ("subscribed", True), ("unsubscribed", False), ("redacted", False),
    ("not_subscribed", None), ("pending", None), ("invalid", None), (None, None), ("SUBSCRIBED", True)])
def test_consent_states(state: str | None, expected: bool | None) -> None:
    assert consent_from_state(state) is expected


def test_customer_consent_objects_become_booleans_with_each_channel_s_time() -> None:
    def consents(data: dict[str, Any]) -> None:
        data["email_marketing_consent"] = {"state": "subscribed", "opt_in_level": "confirmed_opt_in",
                                           "consent_updated_at": "2024-03-01T10:00:00+01:00"}
        data["sms_marketing_consent"] = {"state": "unsubscribed", "opt_in_level": "single_opt_in",
                                         "consent_updated_at": "2024-02-01T08:00:00-05:00",
                                         "consent_collected_from": "SHOPIFY"}
    customer = one(edited("customers_update", consents), "customers/update")
    assert (customer.email_marketing, customer.sms_marketing) == (True, False)
    assert (customer.consent_at, customer.sms_consent_at) == (at(2024, 3, 1, 9, 0), at(2024, 2, 1, 13, 0))


def test_email_marketing_consent_topic() -> None:
    assert one(payload("customers_email_marketing_consent_update"),
               "customers_email_marketing_consent/update") == CustomerData(
        external_id="706405506930370084", email="bob@biller.com", email_marketing=None)  # not_subscribed
    withdrawn = edited("customers_email_marketing_consent_update", lambda d: d["email_marketing_consent"].update(
        state="unsubscribed", consent_updated_at="2026-04-30T18:00:00-04:00"))
    assert one(withdrawn, "customers_email_marketing_consent/update") == CustomerData(
        external_id="706405506930370084", email="bob@biller.com", email_marketing=False, consent_at=at(2026, 4, 30, 22))


def test_sms_marketing_consent_topic() -> None:
    assert one(payload("customers_marketing_consent_update"), "customers_marketing_consent/update") == CustomerData(
        external_id="706405506930370084")  # state null: nothing to record

    def granted(data: dict[str, Any]) -> None:
        data["phone"] = "+16135550143"
        data["sms_marketing_consent"].update(state="subscribed", opt_in_level="single_opt_in",
                                             consent_updated_at="2026-04-30T12:00:00Z")
    assert one(edited("customers_marketing_consent_update", granted), "customers_marketing_consent/update") == (
        CustomerData(external_id="706405506930370084", phone="+16135550143", sms_marketing=True,
                     sms_consent_at=at(2026, 4, 30, 12)))


# ---- fulfilments, refunds, products ------------------------------------------------------------------------

UPS_URL = "https://www.ups.com/WebTracking?loc=en_US&requester=ST&trackNums=1z827wk74630"


def test_fulfillments_create() -> None:
    assert one(payload("fulfillments_create"), "fulfillments/create") == FulfillmentData(
        external_id="123456", order_external_id="820982911946154508", status="pending", shipment_status=None,
        tracking_company="UPS", tracking_numbers=["1z827wk74630"], tracking_urls=[UPS_URL],
        created_at=at(2022, 1, 1), source_updated_at=at(2022, 1, 1))


def test_fulfillments_update() -> None:
    assert one(payload("fulfillments_update"), "fulfillments/update") == FulfillmentData(
        external_id="123456", order_external_id="820982911946154508", status="success", shipment_status="delivered",
        tracking_company="UPS", tracking_numbers=["1z827wk74630"], tracking_urls=[UPS_URL],
        created_at=at(2022, 1, 1), source_updated_at=at(2022, 1, 4, 17, 0))


def test_a_fulfilment_with_only_the_single_tracking_fields() -> None:
    def single(data: dict[str, Any]) -> None:
        data.update(tracking_numbers=None, tracking_urls=None, tracking_number="9400111899223",
                    tracking_url="https://tools.usps.com/go/TrackConfirmAction?tLabels=9400111899223",
                    tracking_company="USPS")
    fulfillment = one(edited("fulfillments_create", single), "fulfillments/create")
    assert fulfillment.tracking_numbers == ["9400111899223"] and fulfillment.tracking_company == "USPS"
    assert fulfillment.tracking_urls == ["https://tools.usps.com/go/TrackConfirmAction?tLabels=9400111899223"]


def test_refunds_create_counts_the_money_returned() -> None:
    # the sample's transactions carry no currency: it comes from the refund lines' shop money
    assert one(payload("refunds_create"), "refunds/create") == RefundData(
        external_id="890088186047892319", order_external_id="820982911946154508", amount_minor=8500,
        currency="USD", refunded_at=at(2022, 1, 1), note="Things were damaged")


def test_failed_and_non_refund_transactions_are_not_money_returned() -> None:
    def mixed(data: dict[str, Any]) -> None:
        data["transactions"][0]["status"] = "failure"
        data["transactions"][1]["kind"] = "void"
    assert one(edited("refunds_create", mixed), "refunds/create").amount_minor == 0


PRODUCT_VARIANTS = [{"external_id": "642667041472713922", "title": "Small", "sku": None, "price_minor": 1999},
                    {"external_id": "757650484644203962", "title": "Medium", "sku": None, "price_minor": 1999}]


def test_products_create() -> None:
    assert one(payload("products_create"), "products/create") == ProductData(
        external_id="788032119674292922", title="Example T-Shirt", handle="example-t-shirt",
        url="https://jsmith.myshopify.com/products/example-t-shirt", image_url=None, vendor="Acme",
        product_type="Shirts", status="active", price_minor=1999, currency="USD", tags=["example", "mens", "t-shirt"],
        variants=PRODUCT_VARIANTS, source_updated_at=at(2022, 1, 1))


def test_products_update() -> None:
    product = one(payload("products_update"), "products/update")
    assert product == ProductData(
        external_id="788032119674292922", title="Example T-Shirt", handle="example-t-shirt",
        url="https://jsmith.myshopify.com/products/example-t-shirt",
        image_url="https://cdn.shopify.com/s/files/1/example-t-shirt.jpg", vendor="Acme", product_type="Shirts",
        status="active", price_minor=1999, currency="USD", tags=["example", "mens", "t-shirt"],
        variants=PRODUCT_VARIANTS, source_updated_at=at(2022, 1, 5, 5, 0))


def test_a_product_price_is_its_cheapest_variant_in_the_store_currency() -> None:
    body = edited("products_create", lambda d: d["variants"][1].update(price="1500"))
    product = one(body, "products/create", StoreInfo("sto_j", "wsp_1", "shopify", "JPY"))
    assert (product.currency, product.price_minor, product.url) == ("JPY", 20, None)  # "19.99" JPY rounds to 20
    assert [v["price_minor"] for v in product.variants] == [20, 1500]


# ---- malformed payloads ----------------------------------------------------------------------------------


def _set(path: str, value: Any) -> Any:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if value is KeyError:
            del node[int(last) if last.isdigit() else last]
        else:
            node[int(last) if last.isdigit() else last] = value
    return change


@pytest.mark.parametrize(("name", "topic", "change", "message"), [
    ("orders_create", "orders/create", _set("total_price", "abc"), "total_price: amount 'abc' is not a number"),
    ("orders_create", "orders/create", _set("id", KeyError), "id is missing"),
    ("orders_create", "orders/create", _set("currency", "dollars"), "currency: currency 'dollars'"),
    ("orders_create", "orders/create", _set("line_items", {"id": 1}), "line_items is a dict, expected a list"),
    ("orders_create", "orders/create", _set("line_items.1.quantity", "2"), "line_items[1].quantity '2'"),
    ("orders_create", "orders/create", _set("processed_at", "31/12/2021"), "processed_at '31/12/2021' is not"),
    ("orders_paid", "orders/paid", _set("customer.email_marketing_consent", "yes"),
     "customer.email_marketing_consent is a str, expected an object"),
    ("checkouts_create", "checkouts/create", _set("created_at", KeyError), "created_at is missing"),
    ("checkouts_create", "checkouts/create", _set("line_items.0.price", [1]),
     "line_items[0].price [1] is not an amount"),
    ("customers_create", "customers/create", _set("id", KeyError), "id is missing"),
    ("fulfillments_create", "fulfillments/create", _set("tracking_numbers", "1Z"),
     "fulfillment.tracking_numbers is a str, expected a list"),
    ("fulfillments_create", "fulfillments/create", _set("order_id", None), "fulfillment.order_id is missing"),
    ("refunds_create", "refunds/create", _set("transactions.0.amount", "x"), "refund.transactions[].amount"),
    ("products_create", "products/create", _set("variants.0.price", "cheap"), "variants[0].price"),
    ("products_create", "products/create", _set("title", ""), "title is missing"),
    ("customers_email_marketing_consent_update", "customers_email_marketing_consent/update",
     _set("email_marketing_consent", KeyError), "email_marketing_consent is missing"),
])
def test_a_malformed_payload_names_the_field(name: str, topic: str, change: Any, message: str) -> None:
    with pytest.raises(BadPayload) as raised:
        deliver(edited(name, change), topic)
    assert message in str(raised.value)


@pytest.mark.parametrize(("body", "message"), [(b"{not json", "the body is not JSON"),
                                          (b"[1, 2]", "the body is a JSON list"),
                                          (b"\xff\xfe", "the body is not JSON")])
def test_a_body_that_is_not_a_json_object(body: bytes, message: str) -> None:
    with pytest.raises(BadPayload, match=message):
        deliver(body, "orders/create")
