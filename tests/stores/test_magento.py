"""Magento / Adobe Commerce Webhooks: RSA signatures made like Commerce makes them (SHA-256,
PKCS#1 v1.5, over the base64 text of the body) with real key pairs, cross-checked against Adobe's
documented Node.js verifier, and the documented default payloads mapped to typed objects."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from herald.domain.commerce import CustomerData, LineData, OrderData, StoreInfo
from herald.domain.connectors import BadPayload, SignatureError, UnknownTopic
from herald.stores.magento import REQUEST_ID_HEADER, SIGNATURE_HEADER, MagentoConnector

PAYLOADS = Path(__file__).parent / "payloads" / "magento"
NOW = datetime(2024, 5, 1, 10, 16, tzinfo=UTC)
STORE = StoreInfo(id="sto_m", workspace_id="wsp_1", platform="magento", currency="USD")
CONNECTOR = MagentoConnector()


def payload(name: str) -> bytes:
    return (PAYLOADS / f"{name}.json").read_bytes()


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def other_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private: rsa.RSAPrivateKey) -> str:
    """The key as the Commerce Admin shows it (Stores > Configuration > Adobe Services > Webhooks)."""
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def commerce_signature(private: rsa.RSAPrivateKey, body: bytes) -> str:
    """What Commerce puts in x-adobe-commerce-webhook-signature: openssl_sign(base64(body), SHA256)."""
    return base64.b64encode(private.sign(base64.b64encode(body), padding.PKCS1v15(), hashes.SHA256())).decode()


def flip_bit(body: bytes) -> bytes:
    mutated = bytearray(body)
    mutated[len(mutated) // 3] ^= 0x01
    return bytes(mutated)


# --- signatures ------------------------------------------------------------------------------


def test_good_signature_verifies(key: rsa.RSAPrivateKey) -> None:
    body = payload("order_save_after")
    CONNECTOR.verify({SIGNATURE_HEADER: commerce_signature(key, body)}, body, [public_pem(key)], NOW)


def test_one_flipped_bit_in_the_body_is_refused(key: rsa.RSAPrivateKey) -> None:
    body = payload("order_save_after")
    headers = {SIGNATURE_HEADER: commerce_signature(key, body)}
    with pytest.raises(SignatureError, match="does not match"):
        CONNECTOR.verify(headers, flip_bit(body), [public_pem(key)], NOW)


def test_signature_by_another_key_is_refused(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    body = payload("order_save_after")
    with pytest.raises(SignatureError, match="does not match"):
        CONNECTOR.verify({SIGNATURE_HEADER: commerce_signature(other_key, body)}, body, [public_pem(key)], NOW)


def test_missing_header_is_refused_with_the_admin_setting_to_enable(key: rsa.RSAPrivateKey) -> None:
    body = payload("order_save_after")
    with pytest.raises(SignatureError, match="Adobe Services > Webhooks"):
        CONNECTOR.verify({}, body, [public_pem(key)], NOW)


def test_signature_over_the_raw_body_is_not_what_commerce_sends(key: rsa.RSAPrivateKey) -> None:
    body = payload("order_save_after")
    raw = base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()
    with pytest.raises(SignatureError):
        CONNECTOR.verify({SIGNATURE_HEADER: raw}, body, [public_pem(key)], NOW)


def test_non_base64_header_is_refused(key: rsa.RSAPrivateKey) -> None:
    body = payload("order_save_after")
    with pytest.raises(SignatureError, match="not base64"):
        CONNECTOR.verify({SIGNATURE_HEADER: "%%%"}, body, [public_pem(key)], NOW)


def test_previous_key_is_accepted_while_listed(key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey) -> None:
    body = payload("customer_save_after")
    headers = {SIGNATURE_HEADER: commerce_signature(other_key, body)}
    CONNECTOR.verify(headers, body, [public_pem(key), public_pem(other_key)], NOW)
    with pytest.raises(SignatureError):
        CONNECTOR.verify(headers, body, [public_pem(key)], NOW)


def test_pem_pasted_base64_wrapped_or_with_escaped_newlines(key: rsa.RSAPrivateKey) -> None:
    body = payload("customer_save_after")
    headers = {SIGNATURE_HEADER: commerce_signature(key, body)}
    pem = public_pem(key)
    CONNECTOR.verify(headers, body, [base64.b64encode(pem.encode()).decode()], NOW)
    CONNECTOR.verify(headers, body, ['"' + pem.strip().replace("\n", "\\n") + '"'], NOW)


def test_a_key_cut_after_its_first_line_says_how_to_store_it(key: rsa.RSAPrivateKey) -> None:
    body = payload("customer_save_after")
    first_line = public_pem(key).splitlines()[0]
    with pytest.raises(SignatureError, match="base64 -w0"):
        CONNECTOR.verify({SIGNATURE_HEADER: commerce_signature(key, body)}, body, [first_line], NOW)


def test_a_secret_that_is_no_public_key_says_what_to_paste(key: rsa.RSAPrivateKey) -> None:
    body = payload("customer_save_after")
    with pytest.raises(SignatureError, match="BEGIN PUBLIC KEY"):
        CONNECTOR.verify({SIGNATURE_HEADER: commerce_signature(key, body)}, body, ["a shared secret"], NOW)


ADOBE_NODE_VERIFIER = """
// Adobe's documented verifier (commerce-extensibility webhooks/signature-verification.md, and
// webhookVerify of the checkout starter kit): App Builder hands the action the raw body as base64
// in __ow_body, and that text is what crypto.createVerify('SHA256') checks.
const crypto = require("crypto");
const fs = require("fs");
const [publicKeyPath, signature, bodyPath] = process.argv.slice(2);
const __ow_body = fs.readFileSync(bodyPath).toString("base64");
const verifier = crypto.createVerify("SHA256");
verifier.update(__ow_body);
process.stdout.write(String(verifier.verify(fs.readFileSync(publicKeyPath, "utf-8"), signature, "base64")));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node to run Adobe's reference verifier")
def test_adobe_reference_verifier_and_herald_agree(
    tmp_path: Path, key: rsa.RSAPrivateKey, other_key: rsa.RSAPrivateKey
) -> None:
    body = payload("order_rest_shape")
    (tmp_path / "verify.js").write_text(ADOBE_NODE_VERIFIER)
    (tmp_path / "body.json").write_bytes(body)
    (tmp_path / "key.pem").write_text(public_pem(key))

    def adobe_says(signature: str) -> bool:
        result = subprocess.run(
            ["node", "verify.js", "key.pem", signature, "body.json"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        return result.stdout == "true"

    def herald_says(signature: str) -> bool:
        try:
            CONNECTOR.verify({SIGNATURE_HEADER: signature}, body, [public_pem(key)], NOW)
        except SignatureError:
            return False
        return True

    good = commerce_signature(key, body)
    over_raw_body = base64.b64encode(key.sign(body, padding.PKCS1v15(), hashes.SHA256())).decode()
    wrong_key = commerce_signature(other_key, body)
    assert [adobe_says(s) for s in (good, over_raw_body, wrong_key)] == [True, False, False]
    assert [herald_says(s) for s in (good, over_raw_body, wrong_key)] == [True, False, False]


# --- identify --------------------------------------------------------------------------------


def test_identify_dedupes_on_topic_and_body_not_on_the_unsigned_request_id() -> None:
    body = payload("order_save_after")
    info = CONNECTOR.identify({REQUEST_ID_HEADER: "req-7f3a"}, body)
    assert (info.topic, info.is_ping) == ("sales_order_save_after", False)
    assert info.dedupe_key == hashlib.sha256(b"sales_order_save_after\n" + body).hexdigest()
    # a replay under a new request id is still the same delivery ...
    assert CONNECTOR.identify({REQUEST_ID_HEADER: "req-other"}, body).dedupe_key == info.dedupe_key
    # ... and a second save in the same storefront request (same request id) is not swallowed
    assert CONNECTOR.identify({REQUEST_ID_HEADER: "req-7f3a"}, flip_bit(body)).dedupe_key != info.dedupe_key


def test_identify_strips_the_observer_prefix() -> None:
    assert CONNECTOR.identify({}, payload("order_rest_shape")).topic == "sales_order_save_commit_after"


def test_payload_without_event_name_is_kept_as_unknown_and_reported() -> None:
    body = json.dumps({"order": {"entity_id": 1}}).encode()  # a <fields>-filtered hook
    info = CONNECTOR.identify({}, body)
    assert info.topic == "unknown"
    with pytest.raises(UnknownTopic, match="default payload"):
        CONNECTOR.parse(info.topic, body, STORE)


# --- topics -> typed objects -----------------------------------------------------------------


def parse_one(name: str) -> Any:
    body = payload(name)
    objects = CONNECTOR.parse(CONNECTOR.identify({}, body).topic, body, STORE)
    assert len(objects) == 1
    return objects[0]


def test_order_save_after_model_payload() -> None:
    order = parse_one("order_save_after")
    assert isinstance(order, OrderData)
    assert (order.external_id, order.number, order.currency) == ("42", "000000042", "USD")
    assert order.placed_at == datetime(2024, 5, 1, 10, 11, 12, tzinfo=UTC)  # naive Magento time is UTC
    assert order.source_updated_at == datetime(2024, 5, 1, 10, 15, tzinfo=UTC)
    assert (order.subtotal_minor, order.discount_minor, order.shipping_minor, order.tax_minor, order.total_minor) == (
        9900,
        990,
        500,
        1049,
        10459,
    )
    assert order.discount_codes == ["SUMMER10"]
    assert (order.financial_status, order.fulfillment_status) == ("paid", None)
    assert order.shipping_country == "US"
    assert order.cancelled_at is None
    assert order.refunded_minor is None
    assert order.customer == CustomerData(
        external_id="7",
        email="roni_cost@example.com",
        phone="(555) 229-3326",
        first_name="Veronica",
        last_name="Costello",
        country="US",
    )
    assert order.lines == [
        LineData(
            title="Didi Sport Watch",
            quantity=2,
            unit_price_minor=4950,
            total_minor=9900,
            external_id="101",
            product_external_id="18",
            sku="24-WG02",
        )
    ]


def test_order_rest_shape_with_configurable_child_and_shipping_assignment() -> None:
    order = parse_one("order_rest_shape")
    assert isinstance(order, OrderData)
    assert (order.external_id, order.currency, order.total_minor, order.tax_minor) == ("3", "EUR", 13690, 790)
    assert order.placed_at == datetime(2024, 3, 2, 23, 30, tzinfo=UTC)
    assert order.shipping_country == "AT"  # shipping_assignments, not the billing country
    assert order.customer is not None
    assert (order.customer.country, order.customer.phone) == ("DE", "030 1234567")
    assert (order.financial_status, order.fulfillment_status) == ("paid", "fulfilled")
    assert order.discount_codes == []
    assert [(line.title, line.quantity, line.total_minor, line.variant_external_id) for line in order.lines] == [
        ("Hero Hoodie", 2, 10800, "1290"),  # the child row only names the variant
        ("Strive Shoulder Pack", 1, 1100, None),
    ]


def test_canceled_guest_order_in_yen_keyed_collections() -> None:
    order = parse_one("order_canceled")
    assert isinstance(order, OrderData)
    assert (order.currency, order.total_minor) == ("JPY", 1500)
    assert order.financial_status == "voided"
    assert order.cancelled_at == datetime(2024, 6, 10, 3, 30, tzinfo=UTC)
    assert order.customer is not None
    assert order.customer.external_id is None  # customer_is_guest
    assert (order.customer.email, order.customer.country) == ("guest@example.com", "JP")
    assert [(line.external_id, line.quantity, line.unit_price_minor) for line in order.lines] == [("201", 3, 500)]


@pytest.mark.parametrize(
    ("changes", "financial", "fulfillment", "refunded"),
    [
        ({"state": "new", "status": "pending", "total_paid": None}, "pending", None, None),
        ({"state": "processing", "total_paid": "50.0000"}, "partially_paid", None, None),
        ({"state": "processing", "total_paid": None}, "paid", None, None),
        ({"state": "closed", "total_refunded": "104.5900"}, "refunded", None, 10459),
        ({"state": "processing", "total_refunded": "4.5900"}, "partially_refunded", None, 459),
        ({"state": "complete", "total_paid": None}, "paid", "fulfilled", None),
        ({"state": "payment_review", "total_paid": "0.0000"}, "pending", None, None),
    ],
)
def test_state_and_totals_map_to_statuses(
    changes: dict[str, Any], financial: str, fulfillment: str | None, refunded: int | None
) -> None:
    document = json.loads(payload("order_save_after"))
    document["data"]["order"].update(changes)
    (order,) = CONNECTOR.parse("sales_order_save_after", json.dumps(document).encode(), STORE)
    assert isinstance(order, OrderData)
    assert order.financial_status == financial
    assert order.fulfillment_status == fulfillment
    assert order.refunded_minor == refunded


def test_partially_shipped_items_are_a_partial_fulfilment() -> None:
    document = json.loads(payload("order_save_after"))
    document["data"]["order"]["items"][0]["qty_shipped"] = "1.0000"
    (order,) = CONNECTOR.parse("sales_order_save_after", json.dumps(document).encode(), STORE)
    assert isinstance(order, OrderData)
    assert order.fulfillment_status == "partial"


def test_checkout_submit_all_after_is_an_order_event() -> None:
    document = json.loads(payload("order_save_after"))
    document["eventName"] = "checkout_submit_all_after"
    body = json.dumps(document).encode()
    (order,) = CONNECTOR.parse(CONNECTOR.identify({}, body).topic, body, STORE)
    assert isinstance(order, OrderData)
    assert order.external_id == "42"


def test_customer_save_after() -> None:
    assert parse_one("customer_save_after") == CustomerData(
        external_id="7",
        email="roni_cost@example.com",
        phone="(555) 229-3326",
        first_name="Veronica",
        last_name="Costello",
        country="US",
        created_at=datetime(2023, 11, 20, 9, 0, tzinfo=UTC),
        source_updated_at=datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
    )


def test_customer_register_success_rest_shape_prefers_the_default_billing_address() -> None:
    customer = parse_one("customer_register_success")
    assert isinstance(customer, CustomerData)
    assert (customer.external_id, customer.email, customer.country, customer.phone) == (
        "12",
        "jdoe@example.de",
        "DE",
        "030 1234567",
    )
    assert customer.email_marketing is True
    assert customer.created_at == datetime(2024, 3, 1, 11, 0, tzinfo=UTC)  # the +01:00 offset is honoured


def test_customer_save_after_data_object() -> None:
    customer = parse_one("customer_save_after_data_object")
    assert isinstance(customer, CustomerData)
    assert (customer.external_id, customer.email, customer.email_marketing, customer.country) == (
        "15",
        "new.person@example.org",
        False,
        None,
    )


def test_place_before_has_no_order_id_yet_and_is_reported_not_translated() -> None:
    with pytest.raises(UnknownTopic, match="sales_order_save_after"):
        parse_one("order_place_before")


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"entity_id": None}, "data.order.entity_id: required"),
        ({"order_currency_code": None}, "data.order.order_currency_code: required"),
        ({"order_currency_code": "dollars"}, "data.order.order_currency_code"),
        ({"created_at": None}, "data.order.created_at: required"),
        ({"created_at": "01/05/2024"}, "data.order.created_at"),
        ({"grand_total": "lots"}, "data.order.grand_total"),
        ({"grand_total": {"value": 1}}, "data.order.grand_total"),
        ({"items": "101"}, "data.order.items"),
        ({"items": ["101"]}, r"data.order.items\[0\]"),
        ({"customer_email": ["a@example.com"]}, "data.order.customer_email"),
        ({"billing_address": "US"}, "data.order.billing_address"),
    ],
)
def test_malformed_order_names_the_field(change: dict[str, Any], field: str) -> None:
    document = json.loads(payload("order_save_after"))
    document["data"]["order"].update(change)
    with pytest.raises(BadPayload, match=field):
        CONNECTOR.parse("sales_order_save_after", json.dumps(document).encode(), STORE)


def test_bad_item_quantity_names_the_row() -> None:
    document = json.loads(payload("order_canceled"))
    document["data"]["order"]["items"]["201"]["qty_ordered"] = "three"
    with pytest.raises(BadPayload, match=r"data.order.items.201.qty_ordered"):
        CONNECTOR.parse("sales_order_save_after", json.dumps(document).encode(), STORE)


def test_missing_entity_and_non_json_bodies_are_bad_payloads() -> None:
    with pytest.raises(BadPayload, match=r"data\.order: required"):
        CONNECTOR.parse("sales_order_save_after", b'{"eventName": "sales_order_save_after", "data": {}}', STORE)
    with pytest.raises(BadPayload, match="data: required"):
        CONNECTOR.parse("customer_save_after", b'{"eventName": "customer_save_after"}', STORE)
    with pytest.raises(BadPayload, match="not JSON"):
        CONNECTOR.parse("customer_save_after", b"eventName=customer_save_after", STORE)
    with pytest.raises(BadPayload, match=r"data\.customer\.id: required"):
        CONNECTOR.parse("customer_save_after", b'{"data": {"customer": {"email": "x@example.com"}}}', STORE)


def test_unknown_event_is_reported() -> None:
    body = json.dumps({"eventName": "catalog_product_save_after", "data": {"product": {}}}).encode()
    with pytest.raises(UnknownTopic, match="catalog_product_save_after"):
        CONNECTOR.parse(CONNECTOR.identify({}, body).topic, body, STORE)
