"""WooCommerce connector, pure (no database): signatures computed here the way WC_Webhook signs
(base64 HMAC-SHA256 of the body, keyed by the secret), headers as WC_Webhook::deliver() sends
them, the unsigned activation ping, and every topic's REST API v3 payload
(tests/stores/payloads/woocommerce/, see its README.md) mapped to the typed objects with every
value checked."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from herald.domain.commerce import CustomerData, LineData, OrderData, ProductData, RefundData, StoreInfo
from herald.domain.connectors import BadPayload, SignatureError, UnknownTopic
from herald.stores.woocommerce import TOPICS, WooCommerceConnector, statuses

PAYLOADS = Path(__file__).parent / "payloads" / "woocommerce"
SECRET = "Zq8#v!r2X@p9&Lm4"  # WooCommerce generates secrets with punctuation
OLD_SECRET = "previous-secret-0123456789"
NOW = datetime(2026, 5, 3, 12, 0, tzinfo=UTC)
STORE = StoreInfo(id="sto_2", workspace_id="wsp_1", platform="woocommerce", currency="EUR", domain="example.com")
CONNECTOR = WooCommerceConnector()
WEBHOOK_ID = "17"
USER_AGENT = "WooCommerce/9.4.2 Hookshot (WordPress/6.7.1)"


def at(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def payload(name: str) -> bytes:
    return (PAYLOADS / f"{name}.json").read_bytes()


def edited(name: str, change: Any) -> bytes:
    data = json.loads(payload(name))
    change(data)
    return json.dumps(data).encode()


def signature(body: bytes, key: str = SECRET) -> str:
    return base64.b64encode(hmac.new(key.encode(), body, hashlib.sha256).digest()).decode()


def delivery_id(second: int = 1777809600) -> str:
    """wp_hash(webhook id . time()): a 32-hex keyed MD5 of the webhook id and the current second."""
    return hashlib.md5(f"{WEBHOOK_ID}{second}".encode()).hexdigest()


def headers(body: bytes, topic: str, *, key: str = SECRET, delivery: str | None = None) -> dict[str, str]:
    """Lower-cased, as WC_Webhook::deliver() sends them."""
    resource, event = topic.split(".", 1)
    sent = {"user-agent": USER_AGENT, "content-type": "application/json",
            "x-wc-webhook-source": "https://example.com/", "x-wc-webhook-topic": topic,
            "x-wc-webhook-resource": resource, "x-wc-webhook-event": event,
            "x-wc-webhook-signature": signature(body, key), "x-wc-webhook-id": WEBHOOK_ID}
    sent["x-wc-webhook-delivery-id"] = delivery or delivery_id()
    return sent


def deliver(body: bytes, topic: str, store: StoreInfo = STORE) -> list[Any]:
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
    body = payload("order_created")
    CONNECTOR.verify(headers(body, "order.created"), body, [SECRET], NOW)


@pytest.mark.parametrize("index", [0, 700, -1])
def test_a_one_bit_change_to_the_body_is_refused(index: int) -> None:
    body = payload("order_created")
    with pytest.raises(SignatureError, match="does not match the body"):
        CONNECTOR.verify(headers(body, "order.created"), flip_bit(body, index), [SECRET], NOW)


def test_a_body_signed_with_another_secret_is_refused() -> None:
    body = payload("order_created")
    with pytest.raises(SignatureError, match="Secret in WooCommerce"):
        CONNECTOR.verify(headers(body, "order.created", key="someone-else"), body, [SECRET], NOW)


def test_a_missing_signature_header_is_refused() -> None:
    body = payload("order_created")
    sent = headers(body, "order.created")
    del sent["x-wc-webhook-signature"]
    with pytest.raises(SignatureError, match="missing X-WC-Webhook-Signature"):
        CONNECTOR.verify(sent, body, [SECRET], NOW)


@pytest.mark.parametrize("value", ["not base64!", "c2hvcnQ=", signature(b"x")[:-2]])
def test_a_malformed_signature_is_refused(value: str) -> None:
    body = payload("order_created")
    sent = {**headers(body, "order.created"), "x-wc-webhook-signature": value}
    with pytest.raises(SignatureError, match="X-WC-Webhook-Signature is not"):
        CONNECTOR.verify(sent, body, [SECRET], NOW)


def test_during_a_rotation_the_previous_secret_is_still_accepted() -> None:
    body = payload("order_updated")
    CONNECTOR.verify(headers(body, "order.updated", key=OLD_SECRET), body, [SECRET, OLD_SECRET], NOW)
    CONNECTOR.verify(headers(body, "order.updated", key=SECRET), body, [SECRET, OLD_SECRET], NOW)
    with pytest.raises(SignatureError):
        CONNECTOR.verify(headers(body, "order.updated", key=OLD_SECRET), body, [SECRET], NOW)


def test_a_secret_copied_html_escaped_still_verifies() -> None:
    # WooCommerce signs with wp_specialchars_decode(secret): "a&amp;b" signs as "a&b"
    body = payload("order_updated")
    CONNECTOR.verify(headers(body, "order.updated", key="Zq8#v!r2X@p9&Lm4"), body, ["Zq8#v!r2X@p9&amp;Lm4"], NOW)


# ---- the activation ping --------------------------------------------------------------------------------


def test_the_activation_ping_is_accepted_unsigned_and_translates_to_nothing() -> None:
    body = b"webhook_id=17"  # WC_Webhook::deliver_ping(): only a User-Agent, no X-WC-* headers
    sent = {"user-agent": USER_AGENT, "content-type": "application/x-www-form-urlencoded"}
    CONNECTOR.verify(sent, body, [SECRET], NOW)
    info = CONNECTOR.identify(sent, body)
    assert info.is_ping and info.topic == "ping" and info.dedupe_key == "ping|webhook_id=17"
    assert CONNECTOR.parse(info.topic, body, STORE) == []


@pytest.mark.parametrize(("body", "extra"), [
    (b"webhook_id=17", {"x-wc-webhook-topic": "order.created"}),  # claims to be a real delivery
    (b"webhook_id=17&status=completed", {}),  # carries more than the ping does
    (b'{"webhook_id": 17}', {}),
    (b"webhook_id=", {}),
])
def test_anything_else_without_a_signature_is_refused(body: bytes, extra: dict[str, str]) -> None:
    with pytest.raises(SignatureError, match="missing X-WC-Webhook-Signature"):
        CONNECTOR.verify({"user-agent": USER_AGENT, **extra}, body, [SECRET], NOW)


# ---- delivery identity -----------------------------------------------------------------------------------


def test_the_dedupe_key_is_the_delivery_id_and_the_body() -> None:
    body = payload("order_updated")
    info = CONNECTOR.identify(headers(body, "order.updated"), body)
    assert info.topic == "order.updated" and not info.is_ping
    assert info.dedupe_key == f"order.updated|{delivery_id()}|{hashlib.sha256(body).hexdigest()[:32]}"
    assert CONNECTOR.identify(headers(body, "order.updated"), body).dedupe_key == info.dedupe_key  # a replay


def test_two_deliveries_in_the_same_second_share_a_delivery_id_but_not_a_key() -> None:
    # wp_hash(webhook id . time()) repeats within one second; two different updates must both count
    first, second = payload("order_created"), payload("order_updated")
    same = delivery_id(1777809600)
    assert CONNECTOR.identify(headers(first, "order.updated", delivery=same), first).dedupe_key != \
        CONNECTOR.identify(headers(second, "order.updated", delivery=same), second).dedupe_key


def test_without_a_delivery_id_the_body_hash_is_the_key() -> None:
    body = payload("order_updated")
    sent = headers(body, "order.updated")
    del sent["x-wc-webhook-delivery-id"]
    assert CONNECTOR.identify(sent, body).dedupe_key == f"order.updated|sha256:{hashlib.sha256(body).hexdigest()}"


def test_an_unknown_topic_is_reported_not_dropped() -> None:
    body = b'{"id": 719, "code": "10off"}'
    info = CONNECTOR.identify(headers(body, "coupon.created"), body)
    with pytest.raises(UnknownTopic, match=r"'coupon\.created' is not translated"):
        CONNECTOR.parse(info.topic, body, STORE)


def test_a_signed_delivery_without_a_topic_is_reported() -> None:
    body = payload("order_created")
    sent = headers(body, "order.created")
    del sent["x-wc-webhook-topic"]
    CONNECTOR.verify(sent, body, [SECRET], NOW)
    info = CONNECTOR.identify(sent, body)
    with pytest.raises(UnknownTopic, match="no X-WC-Webhook-Topic header"):
        CONNECTOR.parse(info.topic, body, STORE)


def test_every_topic_the_issue_lists_is_translated() -> None:
    assert {"order.created", "order.updated", "order.deleted", "customer.created", "customer.updated",
            "product.created", "product.updated"} <= set(TOPICS)


# ---- orders ---------------------------------------------------------------------------------------------

GUEST = CustomerData(email="john.doe@example.com", phone="(555) 555-5555", first_name="John", last_name="Doe",
                     country="US")
ORDER_LINES = [
    LineData(title="Woo Single #1", quantity=2, unit_price_minor=300, total_minor=600, external_id="315",
             product_external_id="93"),
    LineData(title="Ship Your Idea \u2013 Color: Black, Size: M Test", quantity=1, unit_price_minor=1200,
             total_minor=1200, external_id="316", product_external_id="22", variant_external_id="23", sku="Bar3"),
]


def test_order_created() -> None:
    assert one(payload("order_created"), "order.created") == OrderData(
        external_id="727", currency="USD", placed_at=at(2017, 3, 22, 19, 28, 2), customer=GUEST, number="727",
        subtotal_minor=1800, discount_minor=0, shipping_minor=1000, tax_minor=135, total_minor=2935,
        refunded_minor=0, discount_codes=[], financial_status="paid", fulfillment_status=None,
        shipping_country="US", cancelled_at=None, checkout_token=None, status_url=None, lines=ORDER_LINES,
        fulfillments=[], refunds=[], source_updated_at=at(2017, 3, 22, 19, 28, 8))


def test_order_updated_to_completed() -> None:
    order = one(payload("order_updated"), "order.updated")
    assert (order.financial_status, order.fulfillment_status) == ("paid", "fulfilled")
    assert order.source_updated_at == at(2017, 3, 22, 19, 30, 35) and order.placed_at == at(2017, 3, 22, 19, 28, 2)
    assert order.lines == ORDER_LINES and order.customer == GUEST and order.total_minor == 2935


def test_order_updated_with_refunds() -> None:
    assert one(payload("order_updated_refunded"), "order.updated") == OrderData(
        external_id="723", currency="USD", placed_at=at(2017, 3, 21, 19, 16),
        customer=CustomerData(external_id="26", email="joao.silva@example.com", phone="(11) 1111-1111",
                              first_name="João", last_name="Silva", country="BR"),
        number="723", subtotal_minor=2900, discount_minor=0, shipping_minor=1000, tax_minor=0, total_minor=3900,
        refunded_minor=1900, discount_codes=[], financial_status="partially_refunded", fulfillment_status="fulfilled",
        shipping_country="BR", cancelled_at=None, status_url=None,
        lines=[LineData(title="Woo Album #2", quantity=1, unit_price_minor=900, total_minor=900, external_id="311",
                        product_external_id="87"),
               LineData(title="Woo Ninja", quantity=1, unit_price_minor=2000, total_minor=2000, external_id="313",
                        product_external_id="34")],
        refunds=[RefundData(external_id="726", order_external_id="723", amount_minor=1000, currency="USD",
                            refunded_at=at(2017, 3, 21, 19, 54, 51)),
                 RefundData(external_id="724", order_external_id="723", amount_minor=900, currency="USD",
                            refunded_at=at(2017, 3, 21, 19, 54, 51))],
        source_updated_at=at(2017, 3, 21, 19, 54, 51))


def test_an_order_in_a_zero_decimal_currency() -> None:
    order = one(payload("order_created_jpy"), "order.created", StoreInfo("sto_j", "wsp_1", "woocommerce", "JPY"))
    assert order.currency == "JPY"
    assert (order.subtotal_minor, order.shipping_minor, order.tax_minor, order.total_minor) == (2700, 1500, 203, 4403)
    assert [(x.unit_price_minor, x.quantity, x.total_minor) for x in order.lines] == [(450, 2, 900), (1800, 1, 1800)]


def test_coupons_and_a_refund_reason() -> None:
    def coupon(data: dict[str, Any]) -> None:
        data["coupon_lines"] = [{"id": 321, "code": "summer10", "discount": "1.80", "discount_tax": "0.00",
                                 "meta_data": []}]
        data["discount_total"] = "1.80"
        data["refunds"] = [{"id": 730, "reason": "Damaged in transit", "total": "-5.50"}]
    order = one(edited("order_created", coupon), "order.created")
    assert order.discount_codes == ["summer10"] and order.discount_minor == 180
    assert order.refunds == [RefundData(external_id="730", order_external_id="727", amount_minor=550, currency="USD",
                                        refunded_at=at(2017, 3, 22, 19, 28, 8), note="Damaged in transit")]
    assert (order.refunded_minor, order.financial_status) == (550, "partially_refunded")


def test_a_registered_buyer_keeps_the_customer_id() -> None:
    order = one(edited("order_created", lambda d: d.update(customer_id=25)), "order.created")
    assert order.customer.external_id == "25"


@pytest.mark.parametrize(("status", "paid", "refunded", "expected"), [
    ("pending", False, False, ("pending", None)),
    ("on-hold", False, False, ("pending", None)),
    ("processing", True, False, ("paid", None)),
    ("completed", True, False, ("paid", "fulfilled")),
    ("completed", True, True, ("partially_refunded", "fulfilled")),
    ("cancelled", False, False, ("voided", None)),
    ("refunded", True, True, ("refunded", None)),
    ("failed", False, False, ("failed", None)),
    ("trash", True, False, (None, None)),
    ("wc-completed", True, False, ("paid", "fulfilled")),
    ("shipped", True, False, ("paid", None)),  # a plugin's status: paid because date_paid is set
    ("awaiting-shipment", False, False, (None, None)),
])
def test_status_mapping(status: str, paid: bool, refunded: bool, expected: tuple[str | None, str | None]) -> None:
    assert statuses(status, paid=paid, refunded=refunded) == expected


def test_a_cancelled_order_is_cancelled_when_last_modified() -> None:
    order = one(edited("order_created", lambda d: d.update(status="cancelled")), "order.created")
    assert order.cancelled_at == at(2017, 3, 22, 19, 28, 8) and order.financial_status == "voided"


def test_an_unpaid_order_keeps_its_payment_link() -> None:
    def pending(data: dict[str, Any]) -> None:
        data.update(status="pending", date_paid=None, date_paid_gmt=None,
                    payment_url="https://example.com/checkout/order-pay/727/?pay_for_order=true&key=wc_order_58d2d042d1d")
    order = one(edited("order_created", pending), "order.created")
    assert order.financial_status == "pending"
    assert order.status_url == "https://example.com/checkout/order-pay/727/?pay_for_order=true&key=wc_order_58d2d042d1d"


def test_order_deleted_translates_to_nothing() -> None:
    assert deliver(payload("order_deleted"), "order.deleted") == []


def test_an_order_without_its_refunds_field_leaves_the_refunded_total_unknown() -> None:
    order = one(edited("order_created", lambda d: d.pop("refunds")), "order.created")
    assert order.refunded_minor is None and order.refunds == []


def test_a_legacy_api_payload_says_how_to_fix_the_webhook() -> None:
    body = json.dumps({"order": json.loads(payload("order_created"))}).encode()
    with pytest.raises(BadPayload, match="WP REST API Integration v3"):
        deliver(body, "order.created")


# ---- customers and products -------------------------------------------------------------------------------


def test_customer_created() -> None:
    assert one(payload("customer_created"), "customer.created") == CustomerData(
        external_id="25", email="john.doe@example.com", phone="(555) 555-5555", first_name="John", last_name="Doe",
        country="US", tags=[], email_marketing=None, sms_marketing=None, consent_at=None,
        created_at=at(2017, 3, 21, 19, 9, 28), source_updated_at=at(2017, 3, 21, 19, 9, 30))


def test_customer_updated() -> None:
    customer = one(payload("customer_updated"), "customer.updated")
    assert (customer.external_id, customer.first_name, customer.last_name) == ("25", "James", "Doe")
    assert customer.source_updated_at == at(2017, 3, 21, 19, 12, 28)
    assert customer.created_at == at(2017, 3, 21, 19, 9, 28)
    assert (customer.email_marketing, customer.sms_marketing) == (None, None)  # WooCommerce core records no consent


def test_product_created() -> None:
    assert one(payload("product_created"), "product.created") == ProductData(
        external_id="794", title="Premium Quality", handle="premium-quality-19",
        url="https://example.com/product/premium-quality-19/",
        image_url="https://example.com/wp-content/uploads/2017/03/T_2_front-4.jpg", vendor=None,
        product_type="simple", status="publish", price_minor=2199, currency="EUR", tags=[], variants=[],
        source_updated_at=at(2017, 3, 23, 20, 1, 14))


def test_product_updated() -> None:
    assert one(payload("product_updated"), "product.updated") == ProductData(
        external_id="799", title="Ship Your Idea", handle="ship-your-idea-22",
        url="https://example.com/product/ship-your-idea-22/",
        image_url="https://example.com/wp-content/uploads/2017/03/T_4_front-11.jpg", vendor=None,
        product_type="variable", status="publish", price_minor=None, currency="EUR", tags=[], variants=[],
        source_updated_at=at(2017, 3, 23, 20, 3, 12))


def test_a_variable_product_lists_its_variations_and_tags() -> None:
    def variable(data: dict[str, Any]) -> None:
        data["variations"] = [800, 801]
        data["tags"] = [{"id": 5, "name": "Caf&eacute; &amp; Co", "slug": "cafe-co"}]
        data["price"] = "20"
    product = one(edited("product_updated", variable), "product.updated", StoreInfo("s", "w", "woocommerce", "JPY"))
    assert product.tags == ["Café & Co"] and (product.price_minor, product.currency) == (20, "JPY")
    assert product.variants == [{"external_id": "800", "title": None, "sku": None, "price_minor": None},
                                {"external_id": "801", "title": None, "sku": None, "price_minor": None}]


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
    ("order_created", "order.created", _set("date_created_gmt", KeyError), "date_created_gmt is missing"),
    ("order_created", "order.created", _set("date_modified_gmt", "yesterday"), "date_modified_gmt 'yesterday'"),
    ("order_created", "order.created", _set("total", "29,35"), "total: amount '29,35' is not a number"),
    ("order_created", "order.created", _set("id", KeyError), "id is missing"),
    ("order_created", "order.created", _set("billing", "John"), "billing is a str, expected an object"),
    ("order_created", "order.created", _set("line_items.1.quantity", 1.5), "line_items[1].quantity 1.5"),
    ("order_created", "order.created", _set("line_items.0.name", ""), "line_items[0].name is missing"),
    ("order_updated_refunded", "order.updated", _set("refunds.1.total", "-9,00"), "refunds[1].total: amount '-9,00'"),
    ("order_updated_refunded", "order.updated", _set("refunds.0.id", KeyError), "refunds[0].id is missing"),
    ("order_deleted", "order.deleted", _set("id", KeyError), "id is missing"),
    ("customer_created", "customer.created", _set("id", 0), "id is missing"),
    ("customer_created", "customer.created", _set("date_modified_gmt", 1490123370), "date_modified_gmt 1490123370"),
    ("product_created", "product.created", _set("name", None), "name is missing"),
    ("product_created", "product.created", _set("images", {"src": "x"}), "images is a dict, expected a list"),
])
def test_a_malformed_payload_names_the_field(name: str, topic: str, change: Any, message: str) -> None:
    with pytest.raises(BadPayload) as raised:
        deliver(edited(name, change), topic)
    assert message in str(raised.value)


def test_a_body_that_is_not_json() -> None:
    with pytest.raises(BadPayload, match="the body is not JSON"):
        deliver(b"order=727", "order.created")
