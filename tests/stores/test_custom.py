"""Custom-site connector: Standard Webhooks signatures (signed by the official `standardwebhooks`
package, so interoperability is proven) and every event type mapped to typed objects."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from standardwebhooks.webhooks import Webhook

from herald.domain.commerce import (
    CheckoutData,
    CustomerData,
    FulfillmentData,
    OrderData,
    ProductData,
    RefundData,
    StoreInfo,
)
from herald.domain.connectors import BadPayload, SignatureError, UnknownTopic
from herald.stores.custom import EVENT_TYPES, CustomSiteConnector

PAYLOADS = Path(__file__).parent / "payloads" / "custom"
NOW = datetime(2024, 5, 3, 12, 0, 0, tzinfo=UTC)
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OTHER_SECRET = "whsec_" + base64.b64encode(bytes(range(100, 132))).decode()
STORE = StoreInfo(id="sto_1", workspace_id="wsp_1", platform="custom", currency="USD")
CONNECTOR = CustomSiteConnector()


def payload(name: str) -> bytes:
    return (PAYLOADS / f"{name}.json").read_bytes()


def signed(
    body: bytes, secret: str = SECRET, *, msg_id: str = "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W", at: datetime = NOW
) -> dict[str, str]:
    """Headers exactly as a Standard Webhooks sender makes them (the official library signs)."""
    signature = Webhook(secret).sign(msg_id=msg_id, timestamp=at, data=body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": signature}


def flip_bit(body: bytes) -> bytes:
    mutated = bytearray(body)
    mutated[len(mutated) // 2] ^= 0x01
    return bytes(mutated)


def parse_one(name: str) -> Any:
    body = payload(name)
    info = CONNECTOR.identify(signed(body), body)
    objects = CONNECTOR.parse(info.topic, body, STORE)
    assert len(objects) == 1
    return objects[0]


# --- signatures ------------------------------------------------------------------------------


def test_official_known_answer_vector_verifies() -> None:
    # From standard-webhooks libraries/python/tests/test_webhooks.py::test_sign_function.
    headers = {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }
    now = datetime.fromtimestamp(1614265330, UTC)
    CONNECTOR.verify(headers, b'{"test": 2432232314}', ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], now)
    with pytest.raises(SignatureError):
        CONNECTOR.verify(headers, b'{"test": 2432232315}', ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], now)


def test_good_signature_from_the_official_library_verifies() -> None:
    body = payload("order.created")
    headers = signed(body)
    CONNECTOR.verify(headers, body, [SECRET], NOW)


def test_one_flipped_bit_in_the_body_is_refused() -> None:
    body = payload("order.created")
    headers = signed(body)
    with pytest.raises(SignatureError, match="matches"):
        CONNECTOR.verify(headers, flip_bit(body), [SECRET], NOW)


def test_signature_covers_id_and_timestamp() -> None:
    body = payload("order.created")
    headers = signed(body)
    with pytest.raises(SignatureError):
        CONNECTOR.verify({**headers, "webhook-id": "msg_other"}, body, [SECRET], NOW)
    with pytest.raises(SignatureError):
        CONNECTOR.verify({**headers, "webhook-timestamp": str(int(NOW.timestamp()) + 1)}, body, [SECRET], NOW)


def test_wrong_secret_is_refused() -> None:
    body = payload("order.created")
    with pytest.raises(SignatureError, match="matches"):
        CONNECTOR.verify(signed(body, OTHER_SECRET), body, [SECRET], NOW)


@pytest.mark.parametrize("header", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_missing_header_is_refused(header: str) -> None:
    body = payload("order.created")
    headers = signed(body)
    del headers[header]
    with pytest.raises(SignatureError, match=header):
        CONNECTOR.verify(headers, body, [SECRET], NOW)


@pytest.mark.parametrize(
    ("offset", "message"),
    [(timedelta(seconds=-301), "old"), (timedelta(seconds=301), "future"), (timedelta(days=-2), "old")],
)
def test_timestamp_outside_five_minutes_is_refused(offset: timedelta, message: str) -> None:
    body = payload("order.created")
    with pytest.raises(SignatureError, match=message):
        CONNECTOR.verify(signed(body, at=NOW + offset), body, [SECRET], NOW)


@pytest.mark.parametrize("offset", [timedelta(seconds=-300), timedelta(seconds=300)])
def test_timestamp_at_the_tolerance_edge_is_accepted(offset: timedelta) -> None:
    body = payload("order.created")
    CONNECTOR.verify(signed(body, at=NOW + offset), body, [SECRET], NOW)


def test_non_integer_timestamp_is_refused() -> None:
    body = payload("order.created")
    headers = {**signed(body), "webhook-timestamp": "2024-05-03T12:00:00Z"}
    with pytest.raises(SignatureError, match="unix seconds"):
        CONNECTOR.verify(headers, body, [SECRET], NOW)


def test_any_signature_in_the_list_may_match() -> None:
    body = payload("order.created")
    headers = signed(body)
    good = headers["webhook-signature"]
    headers["webhook-signature"] = " ".join(
        [
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc=",
            "v2," + good.split(",", 1)[1],  # right bytes under an unknown version: ignored
            "garbage",
            good,
        ]
    )
    CONNECTOR.verify(headers, body, [SECRET], NOW)
    headers["webhook-signature"] = "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2," + good.split(",", 1)[1]
    with pytest.raises(SignatureError):
        CONNECTOR.verify(headers, body, [SECRET], NOW)


def test_sender_signing_with_old_and_new_secret_verifies_with_either() -> None:
    body = payload("order.created")
    old, new = signed(body, OTHER_SECRET), signed(body, SECRET)
    both = {**new, "webhook-signature": f"{old['webhook-signature']} {new['webhook-signature']}"}
    CONNECTOR.verify(both, body, [SECRET], NOW)
    CONNECTOR.verify(both, body, [OTHER_SECRET], NOW)


def test_previous_secret_is_accepted_during_rotation_only_while_listed() -> None:
    body = payload("order.created")
    signed_with_previous = signed(body, OTHER_SECRET)
    CONNECTOR.verify(signed_with_previous, body, [SECRET, OTHER_SECRET], NOW)
    with pytest.raises(SignatureError):
        CONNECTOR.verify(signed_with_previous, body, [SECRET], NOW)


def test_secret_without_prefix_and_unpadded_is_the_same_key() -> None:
    body = payload("order.created")
    bare = SECRET.removeprefix("whsec_").rstrip("=")
    CONNECTOR.verify(signed(body), body, [bare], NOW)


def test_unusable_secret_says_what_a_secret_looks_like() -> None:
    body = payload("order.created")
    with pytest.raises(SignatureError, match="whsec_"):
        CONNECTOR.verify(signed(body), body, ["not base64 at all!"], NOW)


def test_v1a_ed25519_signature_verifies_with_the_whpk_public_key() -> None:
    private = Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    body = payload("customer.created")
    stamp = str(int(NOW.timestamp()))
    signature = base64.b64encode(private.sign(f"msg_1.{stamp}.".encode() + body)).decode()
    headers = {"webhook-id": "msg_1", "webhook-timestamp": stamp, "webhook-signature": f"v1a,{signature}"}
    key = "whpk_" + base64.b64encode(public).decode()
    CONNECTOR.verify(headers, body, [SECRET, key], NOW)
    with pytest.raises(SignatureError):
        CONNECTOR.verify(headers, flip_bit(body), [key], NOW)
    other = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    with pytest.raises(SignatureError):
        CONNECTOR.verify(headers, body, ["whpk_" + base64.b64encode(other).decode()], NOW)
    # a v1a signature is never checked as an HMAC and vice versa
    with pytest.raises(SignatureError):
        CONNECTOR.verify({**headers, "webhook-signature": f"v1,{signature}"}, body, [key], NOW)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_the_documented_openssl_signing_recipe_verifies(tmp_path: Path) -> None:
    """docs/custom-site-webhooks.md's shell recipe, run for real."""
    body = payload("order.created")
    (tmp_path / "body.json").write_bytes(body)
    script = r"""
set -eu
SECRET="$1"; ID=msg_shell_1; TS="$2"
KEY_HEX=$(printf '%s' "${SECRET#whsec_}" | base64 -d | od -An -v -tx1 | tr -d ' \n')
SIG=$( { printf '%s.%s.' "$ID" "$TS"; cat body.json; } \
  | openssl dgst -sha256 -mac HMAC -macopt "hexkey:$KEY_HEX" -binary | base64)
printf 'v1,%s' "$SIG"
"""
    stamp = str(int(NOW.timestamp()))
    result = subprocess.run(
        ["sh", "-c", script, "sign", SECRET, stamp],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    headers = {"webhook-id": "msg_shell_1", "webhook-timestamp": stamp, "webhook-signature": result.stdout}
    CONNECTOR.verify(headers, body, [SECRET], NOW)


# --- identify --------------------------------------------------------------------------------


def test_identify_uses_webhook_id_and_type() -> None:
    body = payload("order.paid")
    info = CONNECTOR.identify(signed(body, msg_id="msg_abc"), body)
    assert (info.topic, info.dedupe_key, info.is_ping) == ("order.paid", "msg_abc", False)


def test_identify_ping() -> None:
    body = payload("ping")
    info = CONNECTOR.identify(signed(body), body)
    assert info.is_ping
    assert CONNECTOR.parse(info.topic, body, STORE) == []


def test_identify_unreadable_body_is_kept_as_unknown_and_reported_by_parse() -> None:
    body = b"<xml/>"
    info = CONNECTOR.identify(signed(body), body)
    assert info.topic == "unknown"
    with pytest.raises(UnknownTopic):
        CONNECTOR.parse(info.topic, body, STORE)


# --- every event type -> typed objects -------------------------------------------------------


def test_every_documented_type_has_a_fixture_that_parses() -> None:
    for event_type in EVENT_TYPES:
        body = payload(event_type)
        assert json.loads(body)["type"] == event_type
        CONNECTOR.parse(event_type, body, STORE)


def test_customer_created() -> None:
    customer = parse_one("customer.created")
    assert customer == CustomerData(
        external_id="cus_1001",
        email="ana@example.com.br",
        phone="+55 11 91234-5678",
        first_name="Ana",
        last_name="Silva",
        country="BR",
        language="pt-BR",
        tags=["vip", "wholesale"],
        email_marketing=True,
        sms_marketing=False,
        consent_at=datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
        created_at=datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
        source_updated_at=datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
    )


def test_customer_updated_integer_id_becomes_a_string() -> None:
    customer = parse_one("customer.updated")
    assert isinstance(customer, CustomerData)
    assert customer.external_id == "1001"
    assert customer.email_marketing is False
    assert customer.sms_marketing is None


def test_order_created() -> None:
    order = parse_one("order.created")
    assert isinstance(order, OrderData)
    assert (order.external_id, order.number, order.currency) == ("ord_5001", "#5001", "EUR")
    assert order.placed_at == datetime(2024, 5, 3, 12, 0, tzinfo=UTC)
    assert order.placed_at.tzinfo is UTC
    assert (order.subtotal_minor, order.discount_minor, order.shipping_minor, order.tax_minor, order.total_minor) == (
        5980,
        598,
        490,
        0,
        5872,
    )
    assert order.refunded_minor is None
    assert order.discount_codes == ["WELCOME10"]
    assert (order.financial_status, order.fulfillment_status) == ("pending", None)
    assert order.shipping_country == "PT"
    assert order.checkout_token == "chk_77"
    assert order.status_url == "https://shop.example.com/orders/ord_5001"
    assert order.customer is not None
    assert (order.customer.external_id, order.customer.email, order.customer.country) == (
        "cus_1001",
        "ana@example.com.br",
        "BR",
    )
    (line,) = order.lines
    assert (line.title, line.quantity, line.unit_price_minor, line.total_minor) == ("Linen shirt", 2, 2990, 5980)
    assert (line.external_id, line.product_external_id, line.variant_external_id, line.sku) == (
        "li_1",
        "prod_9",
        "var_9_m",
        "LS-M",
    )


def test_order_updated_embeds_fulfillments_and_refunds() -> None:
    order = parse_one("order.updated")
    assert isinstance(order, OrderData)
    assert order.refunded_minor == 1000
    assert (order.financial_status, order.fulfillment_status) == ("partially_refunded", "partial")
    assert order.source_updated_at == datetime(2024, 5, 3, 13, 0, tzinfo=UTC)
    (line,) = order.lines
    assert (line.quantity, line.total_minor) == (2, 5980)  # total defaults to unit price x quantity
    assert order.fulfillments == [
        FulfillmentData(
            external_id="ful_1",
            order_external_id="ord_5001",
            status="success",
            tracking_company="CTT",
            tracking_numbers=["RR123456789PT"],
            tracking_urls=["https://track.example.com/RR123456789PT"],
            created_at=datetime(2024, 5, 3, 12, 30, tzinfo=UTC),
        )
    ]
    assert order.refunds == [
        RefundData(
            external_id="ref_1",
            order_external_id="ord_5001",
            amount_minor=1000,
            currency="EUR",
            refunded_at=datetime(2024, 5, 3, 12, 45, tzinfo=UTC),
            note="damaged",
        )
    ]


def test_order_paid_defaults_to_paid_and_zero_decimal_currency() -> None:
    order = parse_one("order.paid")
    assert isinstance(order, OrderData)
    assert order.financial_status == "paid"
    assert (order.currency, order.total_minor, order.subtotal_minor, order.tax_minor) == ("JPY", 3300, 3000, 300)
    assert order.placed_at == datetime(2024, 5, 3, 12, 0, tzinfo=UTC)
    assert order.customer is not None
    assert order.customer.external_id is None  # a guest: email and phone only
    assert order.customer.phone == "+81 90-1234-5678"


def test_order_cancelled_takes_the_event_time_and_three_decimal_currency() -> None:
    order = parse_one("order.cancelled")
    assert isinstance(order, OrderData)
    assert order.cancelled_at == datetime(2024, 5, 4, 8, 0, tzinfo=UTC)
    assert (order.currency, order.total_minor, order.financial_status) == ("KWD", 12345, "voided")


def test_order_fulfilled_defaults_to_fulfilled() -> None:
    order = parse_one("order.fulfilled")
    assert isinstance(order, OrderData)
    assert (order.fulfillment_status, order.financial_status) == ("fulfilled", "paid")


def test_checkout_created_and_updated() -> None:
    created = parse_one("checkout.created")
    assert isinstance(created, CheckoutData)
    assert (created.external_id, created.token, created.currency) == ("chk_77", "tok_77", "EUR")
    assert (created.subtotal_minor, created.total_minor) == (5980, 6470)
    assert created.started_at == datetime(2024, 5, 3, 11, 50, tzinfo=UTC)
    assert created.recovery_url == "https://shop.example.com/cart/recover/tok_77"
    assert created.customer == CustomerData(email="ana@example.com.br")
    assert created.completed_at is None
    assert created.lines[0].sku == "LS-M"
    updated = parse_one("checkout.updated")
    assert isinstance(updated, CheckoutData)
    assert updated.completed_at == datetime(2024, 5, 3, 12, 0, tzinfo=UTC)
    assert updated.discount_codes == ["WELCOME10"]
    assert updated.total_minor == 5872


def test_fulfillment_created_and_updated() -> None:
    created = parse_one("fulfillment.created")
    assert created == FulfillmentData(
        external_id="ful_1",
        order_external_id="ord_5001",
        status="success",
        shipment_status="in_transit",
        tracking_company="CTT",
        tracking_numbers=["RR123456789PT"],
        tracking_urls=["https://track.example.com/RR123456789PT"],
        created_at=datetime(2024, 5, 3, 12, 30, tzinfo=UTC),
    )
    updated = parse_one("fulfillment.updated")
    assert isinstance(updated, FulfillmentData)
    assert (updated.shipment_status, updated.source_updated_at) == ("delivered", datetime(2024, 5, 5, 9, tzinfo=UTC))


def test_refund_created() -> None:
    assert parse_one("refund.created") == RefundData(
        external_id="ref_2",
        order_external_id="ord_5001",
        amount_minor=4872,
        currency="EUR",
        refunded_at=datetime(2024, 5, 6, 10, tzinfo=UTC),
        note="returned",
    )


def test_product_created_price_is_the_lowest_variant() -> None:
    product = parse_one("product.created")
    assert isinstance(product, ProductData)
    assert (product.external_id, product.title, product.handle, product.currency) == (
        "prod_9",
        "Linen shirt",
        "linen-shirt",
        "EUR",
    )
    assert product.price_minor == 2990
    assert product.variants == [
        {"external_id": "var_9_m", "title": "M", "sku": "LS-M", "price_minor": 2990},
        {"external_id": "var_9_xl", "title": "XL", "sku": "LS-XL", "price_minor": 3290},
    ]
    assert (product.vendor, product.product_type, product.status, product.tags) == (
        "Atelier",
        "Shirts",
        "active",
        ["summer"],
    )


def test_product_updated_without_currency_uses_the_store_currency() -> None:
    product = parse_one("product.updated")
    assert isinstance(product, ProductData)
    assert (product.currency, product.price_minor, product.title) == ("USD", 2750, "Linen shirt (new)")


# --- errors ----------------------------------------------------------------------------------


def mutate(name: str, change: dict[str, Any]) -> bytes:
    document = json.loads(payload(name))
    for dotted, value in change.items():
        target = document
        *parents, last = dotted.split(".")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if value is DELETE:
            del target[last]
        else:
            target[last] = value
    return json.dumps(document).encode()


DELETE = object()


@pytest.mark.parametrize(
    ("name", "change", "field"),
    [
        ("order.created", {"data.total": DELETE}, "data.total: required"),
        ("order.created", {"data.total": "12,50"}, "data.total"),
        ("order.created", {"data.total": False}, "data.total"),
        ("order.created", {"data.currency": "EURO"}, "data.currency"),
        ("order.created", {"data.currency": DELETE}, "data.currency: required"),
        ("order.created", {"data.created_at": "2024-05-03 14:00:00"}, "data.created_at"),
        ("order.created", {"data.created_at": "yesterday"}, "data.created_at"),
        ("order.created", {"data.lines.0.quantity": "two"}, r"data.lines\[0\].quantity"),
        ("order.created", {"data.lines.0.quantity": -1}, r"data.lines\[0\].quantity"),
        ("order.created", {"data.lines.0.title": DELETE}, r"data.lines\[0\].title"),
        ("order.created", {"data.lines": {"title": "x"}}, "data.lines"),
        ("order.created", {"data.customer.country": "Brazil"}, "data.customer.country"),
        ("order.created", {"data.customer": {"first_name": "Nobody"}}, "data.customer: needs at least one"),
        ("order.created", {"data.financial_status": "settled"}, "data.financial_status"),
        ("order.created", {"data.discount_codes": "WELCOME10"}, "data.discount_codes"),
        ("order.created", {"data.id": {"nested": 1}}, "data.id"),
        ("customer.created", {"data.id": DELETE}, "data.id: required"),
        ("customer.created", {"data.accepts_email_marketing": "yes"}, "data.accepts_email_marketing"),
        ("refund.created", {"data.order_id": DELETE}, "data.order_id"),
        ("product.created", {"data.variants.1.price": "cheap"}, r"data.variants\[1\].price"),
        ("fulfillment.created", {"data.tracking_numbers": [1, 2]}, "data.tracking_numbers"),
        ("checkout.created", {"data": DELETE}, "data: required"),
    ],
)
def test_malformed_payload_names_the_field(name: str, change: dict[str, Any], field: str) -> None:
    body = mutate(name, change)
    with pytest.raises(BadPayload, match=field):
        CONNECTOR.parse(name, body, STORE)


def test_body_that_is_not_json_is_a_bad_payload() -> None:
    with pytest.raises(BadPayload, match="not JSON"):
        CONNECTOR.parse("order.created", b"{not json", STORE)


def test_type_must_match_the_topic() -> None:
    with pytest.raises(BadPayload, match=r"body\.type"):
        CONNECTOR.parse("order.paid", payload("order.created"), STORE)


def test_unknown_event_type_is_reported() -> None:
    body = json.dumps({"type": "subscription.renewed", "timestamp": "2024-05-01T00:00:00Z", "data": {}}).encode()
    info = CONNECTOR.identify(signed(body), body)
    with pytest.raises(UnknownTopic, match=r"subscription\.renewed"):
        CONNECTOR.parse(info.topic, body, STORE)
