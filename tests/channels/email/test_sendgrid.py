"""SendGrid v3 against a local HTTP server on 127.0.0.1 that speaks Mail Send's documented wire
format (Bearer auth, the JSON body, 202 + X-Message-Id, {"errors": [...]} bodies, 429 with
X-RateLimit-Reset), and the Signed Event Webhook verified against requests signed here with a
real ECDSA P-256 key over the documented sample events (payloads/sendgrid/)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.channels.email.sendgrid import SendGridEventParser, SendGridProvider, drop_reason, sendgrid_message_id
from herald.domain.delivery import (
    Attachment,
    CallbackRequest,
    DeliveryEvent,
    EmailContent,
    FailureReason,
    OutboundMessage,
    ProviderConfigError,
    SendResult,
    SignatureError,
    UnsupportedFeature,
)
from tests.channels.email.httpserver import closed_port, json_reply, serve_posts
from tests.stores.localserver import Reply

PAYLOADS = Path(__file__).parent / "payloads" / "sendgrid"
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
API_KEY = "SG.test-key.not-real"
T = TypeVar("T")


def run(use: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(use())  # type: ignore[arg-type]


class FixedClock:
    def now(self) -> datetime:
        return NOW


def a_message(**email_changes: Any) -> OutboundMessage:
    email = EmailContent(
        from_address="shop@example.com", from_name="Example Shop", subject="Your order ✓", html="<p>Hi</p>",
        text="Hi", reply_to="help@example.com",
        headers=(("List-Unsubscribe", "<https://h.example/u/abc>, <mailto:u+abc@example.com>"),
                 ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")),
        attachments=(Attachment("invoice.pdf", "application/pdf", b"%PDF-1.4 bytes"),))
    values = {name: getattr(email, name) for name in EmailContent.__slots__}
    return OutboundMessage(id="01HXMSG0000000000000000001", workspace_id="ws_1", channel="email",
                           purpose="marketing", to="anna@example.org",
                           email=EmailContent(**{**values, **email_changes}), sending_domain="example.com")


def send(base_url: str, message: OutboundMessage | None = None) -> SendResult:
    async def go() -> SendResult:
        provider = SendGridProvider(API_KEY, base_url=base_url, clock=FixedClock())
        try:
            return await provider.send(message or a_message())
        finally:
            await provider.aclose()
    return run(go)


# ---- Mail Send -------------------------------------------------------------------------------------

def test_a_message_is_posted_as_documented_and_accepted_with_the_x_message_id() -> None:
    with serve_posts(lambda _: json_reply(202, headers={"X-Message-Id": "W5u4sLx6RXyTrCzn1wKGmg"})) as (url, seen):
        result = send(url)
    assert result == SendResult.accepted("01HXMSG0000000000000000001", "W5u4sLx6RXyTrCzn1wKGmg")
    [request] = seen
    assert request.path == "/v3/mail/send"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    body = json.loads(request.body)
    assert body["personalizations"] == [{"to": [{"email": "anna@example.org"}],
                                         "custom_args": {"herald_message_id": "01HXMSG0000000000000000001"}}]
    assert body["from"] == {"email": "shop@example.com", "name": "Example Shop"}
    assert body["reply_to"] == {"email": "help@example.com"}
    assert body["subject"] == "Your order ✓"
    assert body["content"] == [{"type": "text/plain", "value": "Hi"}, {"type": "text/html", "value": "<p>Hi</p>"}]
    assert body["headers"] == {"List-Unsubscribe": "<https://h.example/u/abc>, <mailto:u+abc@example.com>",
                               "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    [attachment] = body["attachments"]
    assert base64.b64decode(attachment["content"]) == b"%PDF-1.4 bytes"
    assert attachment | {"content": ""} == {"content": "", "type": "application/pdf", "filename": "invoice.pdf",
                                            "disposition": "attachment"}
    # Herald tracks clicks and opens and writes List-Unsubscribe itself: SendGrid's own are off.
    assert body["tracking_settings"] == {"click_tracking": {"enable": False, "enable_text": False},
                                         "open_tracking": {"enable": False},
                                         "subscription_tracking": {"enable": False}}
    assert set(body) == {"personalizations", "from", "reply_to", "subject", "content", "headers", "attachments",
                         "tracking_settings"}


def test_text_only_international_domain_and_non_ascii_header_values() -> None:
    message = a_message(html=None, attachments=(), reply_to=None, from_name=None,
                        headers=(("X-Campagne", "Été"),))
    message = OutboundMessage(**{**{n: getattr(message, n) for n in OutboundMessage.__dataclass_fields__},
                                 "to": "anna@bücher.example"})
    with serve_posts(lambda _: json_reply(202, headers={"X-Message-Id": "id1"})) as (url, seen):
        assert send(url, message).status == "accepted"
    body = json.loads(seen[0].body)
    assert body["personalizations"][0]["to"] == [{"email": "anna@xn--bcher-kva.example"}]
    assert body["content"] == [{"type": "text/plain", "value": "Hi"}]
    assert body["from"] == {"email": "shop@example.com"}
    assert "reply_to" not in body and "attachments" not in body
    assert body["headers"]["X-Campagne"] == "=?utf-8?b?w4l0w6k=?="   # RFC 2047, as SendGrid asks


@pytest.mark.parametrize("name", ["Reply-To", "content-type", "DKIM-Signature", "X-SG-ID"])
def test_reserved_headers_are_refused_before_any_request(name: str) -> None:
    with serve_posts(lambda _: json_reply(202)) as (url, seen), pytest.raises(UnsupportedFeature, match="reserved"):
        send(url, a_message(headers=((name, "x"),)))
    assert seen == []


def test_a_400_about_the_recipient_fails_the_address_and_others_the_content() -> None:
    recipient = {"errors": [{"message": "Does not contain a valid address.", "field": "personalizations.0.to.0.email",
                             "help": "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"}]}
    content = {"errors": [{"message": "The content value must be a string at least one character in length.",
                           "field": "content.0.value", "help": None}]}
    with serve_posts(lambda _: json_reply(400, recipient)) as (url, _):
        bad_address = send(url)
    with serve_posts(lambda _: json_reply(400, content)) as (url, _):
        bad_content = send(url)
    assert (bad_address.status, bad_address.reason, bad_address.provider_code) == (
        "failed", FailureReason.INVALID_ADDRESS, "400")
    assert "personalizations.0.to.0.email: Does not contain a valid address." in bad_address.detail
    assert (bad_content.status, bad_content.reason) == ("failed", FailureReason.CONTENT_REJECTED)
    assert "content.0.value" in bad_content.detail


def test_refused_credentials_wait_for_the_settings_to_be_fixed() -> None:
    unauthorized = {"errors": [{"field": None, "message": "The provided authorization grant is invalid, expired, "
                                                          "or revoked"}]}
    with serve_posts(lambda _: json_reply(401, unauthorized)) as (url, _):
        result = send(url)
    assert (result.status, result.reason, result.provider_code) == ("retry", FailureReason.AUTH_FAILED, "401")
    assert "authorization grant is invalid" in result.detail and API_KEY not in result.detail
    with serve_posts(lambda _: json_reply(403, {"errors": [{"message": "The from address does not match a verified "
                                                                       "Sender Identity."}]})) as (url, _):
        assert send(url).reason is FailureReason.AUTH_FAILED


def test_429_waits_until_x_ratelimit_reset_or_retry_after() -> None:
    reset = str(int(NOW.timestamp()) + 30)
    too_many = {"errors": [{"field": None, "message": "too many requests"}]}
    limit_headers = {"X-RateLimit-Limit": "150", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}
    with serve_posts(lambda _: json_reply(429, too_many, limit_headers)) as (url, _):
        by_reset = send(url)
    with serve_posts(lambda _: json_reply(429, too_many, {**limit_headers, "Retry-After": "7"})) as (url, _):
        by_retry_after = send(url)
    assert (by_reset.status, by_reset.reason, by_reset.retry_after) == ("retry", FailureReason.THROTTLED, 30.0)
    assert by_retry_after.retry_after == 7.0


def test_server_errors_and_oversized_messages() -> None:
    with serve_posts(lambda _: json_reply(500, {"errors": [{"message": "internal error"}]})) as (url, _):
        down = send(url)
    with serve_posts(lambda _: Reply(413, b"Request Entity Too Large", {"Content-Type": "text/plain"})) as (url, _):
        too_big = send(url)
    assert (down.status, down.reason, down.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, False)
    assert (too_big.status, too_big.reason, too_big.detail) == (
        "failed", FailureReason.CONTENT_REJECTED, "SendGrid HTTP 413: Request Entity Too Large")


def test_a_connection_lost_after_the_request_may_have_sent_it_a_refused_one_did_not() -> None:
    with serve_posts(lambda _: None) as (url, seen):
        dropped = send(url)
    assert len(seen) >= 1   # the server read the whole request before hanging up
    refused = send(f"http://127.0.0.1:{closed_port()}")
    assert (dropped.status, dropped.reason, dropped.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, True)
    assert (refused.status, refused.reason, refused.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, False)


def test_settings_without_a_key_are_refused() -> None:
    with pytest.raises(ProviderConfigError, match="API key"):
        SendGridProvider("  ")


# ---- the Signed Event Webhook ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Keys:
    private: ec.EllipticCurvePrivateKey
    public_b64: str   # what SendGrid shows: base64 DER SubjectPublicKeyInfo


def new_keys() -> Keys:
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(serialization.Encoding.DER,
                                            serialization.PublicFormat.SubjectPublicKeyInfo)
    return Keys(private, base64.b64encode(der).decode())


KEYS = new_keys()


def signed(body: bytes, keys: Keys = KEYS, at: datetime = NOW) -> CallbackRequest:
    timestamp = str(int(at.timestamp()))
    signature = keys.private.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return CallbackRequest("POST", "https://herald.example/hooks/sendgrid", {
        "content-type": "application/json",
        "x-twilio-email-event-webhook-signature": base64.b64encode(signature).decode(),
        "x-twilio-email-event-webhook-timestamp": timestamp,
    }, body)


def parse(request: CallbackRequest, secrets: list[str] | None = None,
          parser: SendGridEventParser | None = None) -> list[DeliveryEvent]:
    return run(lambda: (parser or SendGridEventParser()).parse_callback(
        request, [KEYS.public_b64] if secrets is None else secrets, NOW))


def documented(name: str, message_ids: bool = True) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = json.loads((PAYLOADS / name).read_text())
    if message_ids:   # custom_args of a v3 send arrive as top-level keys
        for number, record in enumerate(records):
            record["herald_message_id"] = f"msg_{number}"
    return records


def test_the_documented_events_translate_to_delivery_events() -> None:
    events = parse(signed(json.dumps(documented("event_reference.json")).encode()))
    summary = [(e.kind, e.reason, e.permanent) for e in events]
    assert summary == [
        ("sent", None, None),
        ("rejected", FailureReason.INVALID_ADDRESS, True),        # dropped: Bounced Address
        ("delivered", None, None),
        ("deferred", FailureReason.TRANSIENT, False),
        ("bounced", FailureReason.INVALID_ADDRESS, True),          # type bounce: "500 unknown recipient"
        ("bounced", FailureReason.INVALID_ADDRESS, False),         # type blocked: final, not the address
        ("opened", None, None),
        ("clicked", None, None),
        ("complained", FailureReason.COMPLAINT, None),
        ("unsubscribed", FailureReason.UNSUBSCRIBED, None),
        ("unsubscribed", FailureReason.UNSUBSCRIBED, None),        # group_unsubscribe; group_resubscribe skipped
    ]
    assert all(e.provider == "sendgrid" and e.recipient == "example@test.com" for e in events)
    assert all(e.provider_message_id == "14c5d75ce93.dfd.64b469" for e in events)   # = X-Message-Id
    assert [e.message_id for e in events] == [f"msg_{n}" for n in range(11)]
    assert events[0].occurred_at == datetime.fromtimestamp(1513299569, UTC)
    assert (events[2].reply_code, events[2].detail) == (250, "250 OK")
    assert (events[3].reply_code, events[3].provider_code) == (400, "5")
    assert (events[4].status, events[4].reply_code, events[4].provider_code) == ("5.0.0", 500, "bounce")
    assert events[7].url == "http://www.sendgrid.com/"
    assert events[10].provider_code == "asm_group_id:10"
    assert events[1].raw["sg_event_id"] == "zmzJhfJgAfUSOW80yEbPyw=="


def test_the_all_events_example_without_custom_args() -> None:
    events = parse(signed(json.dumps(documented("event_examples.json", message_ids=False)).encode()))
    assert [e.kind for e in events] == ["sent", "deferred", "delivered", "opened", "clicked", "bounced", "rejected",
                                        "complained", "unsubscribed", "unsubscribed"]
    assert all(e.message_id is None for e in events)


def test_a_sent_message_and_its_events_name_the_same_ids() -> None:
    with serve_posts(lambda _: json_reply(202, headers={"X-Message-Id": "UZWrYIL8TOS_cOBNjzPXag"})) as (url, seen):
        sent = send(url)
    custom_args = json.loads(seen[0].body)["personalizations"][0]["custom_args"]
    event = {"email": "anna@example.org", "timestamp": int(NOW.timestamp()), "event": "delivered",
             "sg_event_id": "ZGVsaXZlcmVk", "response": "250 2.0.0 OK",
             "sg_message_id": "UZWrYIL8TOS_cOBNjzPXag.recvd-5f8d7b9c4-x2x7q-1-663866A1-6.0", **custom_args}
    [delivered] = parse(signed(json.dumps([event]).encode()))
    assert (delivered.message_id, delivered.provider_message_id) == (sent.message_id, sent.provider_message_id)


def test_bounce_texts_are_classified_and_classification_fills_the_gaps() -> None:
    gmail = {"event": "bounce", "type": "bounce", "status": "5.1.1", "email": "x@gmail.com", "timestamp": 1,
             "reason": "550 5.1.1 The email account that you tried to reach does not exist."}
    vague = {"event": "bounce", "type": "blocked", "status": "5.0.0", "timestamp": 1,
             "reason": "554 rejected", "bounce_classification": "Reputation"}
    first, second = parse(signed(json.dumps([gmail, vague]).encode()))
    assert (first.reason, first.permanent, first.status, first.reply_code) == (
        FailureReason.INVALID_ADDRESS, True, "5.1.1", 550)
    assert (second.reason, second.permanent, second.provider_code) == (FailureReason.BLOCKED, False, "Reputation")


@pytest.mark.parametrize(("said", "reason"), [
    ("Bounced Address", FailureReason.INVALID_ADDRESS),
    ("Unsubscribed Address", FailureReason.UNSUBSCRIBED),
    ("Spam Reporting Address", FailureReason.COMPLAINT),
    ("Invalid", FailureReason.INVALID_ADDRESS),
    ("Invalid SMTPAPI header", FailureReason.CONTENT_REJECTED),
    ("Spam Content (if Spam Checker app is enabled)", FailureReason.CONTENT_REJECTED),
    ("Recipient List over Package Quota", FailureReason.THROTTLED),
    ("Something new", FailureReason.UNKNOWN),
])
def test_documented_drop_reasons(said: str, reason: FailureReason) -> None:
    assert drop_reason(said) is reason


def test_sg_message_id_loses_its_machine_suffix() -> None:
    assert sendgrid_message_id("14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0") == "14c5d75ce93.dfd.64b469"
    assert sendgrid_message_id("142d9f3f351.7618.254f56.filter-147.22649.52A663508.0") == "142d9f3f351.7618.254f56"
    assert sendgrid_message_id("ExampleMessageId123.recvd-abc123def456-ghi789-1-12345678-9.0") == "ExampleMessageId123"
    assert sendgrid_message_id(None) is None


def test_one_changed_body_byte_breaks_the_signature() -> None:
    request = signed(json.dumps(documented("event_reference.json")).encode())
    body = bytearray(request.body)
    body[body.index(b"Bounced Address")] ^= 0x20   # "bounced Address"
    with pytest.raises(SignatureError, match="does not match"):
        parse(CallbackRequest(request.method, request.url, request.headers, bytes(body)))
    assert parse(request)   # the untouched request still verifies


def test_another_key_is_refused_and_a_rotation_accepts_either() -> None:
    other = new_keys()
    request = signed(b"[]", keys=other)
    with pytest.raises(SignatureError):
        parse(request)
    assert parse(request, [KEYS.public_b64, other.public_b64]) == []


def test_the_key_may_be_given_as_pem() -> None:
    pem = KEYS.private.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert parse(signed(b"[]"), [pem]) == []


@pytest.mark.parametrize("header", ["x-twilio-email-event-webhook-signature", "x-twilio-email-event-webhook-timestamp"])
def test_a_missing_signature_header_is_refused(header: str) -> None:
    request = signed(b"[]")
    headers = {k: v for k, v in request.headers.items() if k != header}
    with pytest.raises(SignatureError, match="missing"):
        parse(CallbackRequest(request.method, request.url, headers, request.body))


@pytest.mark.parametrize("offset", [timedelta(minutes=-11), timedelta(minutes=11)])
def test_a_stale_or_future_timestamp_is_refused_though_correctly_signed(offset: timedelta) -> None:
    with pytest.raises(SignatureError, match="outside the accepted window"):
        parse(signed(b"[]", at=NOW + offset))
    assert parse(signed(b"[]", at=NOW + offset), parser=SendGridEventParser(tolerance=timedelta(minutes=12))) == []


def test_garbage_signatures_and_timestamps_are_refused() -> None:
    request = signed(b"[]")
    for changes in ({"x-twilio-email-event-webhook-signature": "not base64!"},
                    {"x-twilio-email-event-webhook-signature": base64.b64encode(b"\x30\x03\x02\x01\x01").decode()},
                    {"x-twilio-email-event-webhook-timestamp": "yesterday"}):
        with pytest.raises(SignatureError):
            parse(CallbackRequest(request.method, request.url, {**request.headers, **changes}, request.body))


def test_unusable_verification_keys_are_a_settings_problem() -> None:
    with pytest.raises(ProviderConfigError, match="verification key"):
        parse(signed(b"[]"), [])
    with pytest.raises(ProviderConfigError, match="not a base64 public key"):
        parse(signed(b"[]"), ["c2VjcmV0"])
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ProviderConfigError, match="P-256"):
        parse(signed(b"[]"), [base64.b64encode(p384).decode()])


def test_a_verified_body_that_is_not_an_event_array_is_an_error_not_events() -> None:
    for body in (b"{not json", b'{"event": "delivered"}'):
        with pytest.raises(ValueError, match="SendGrid Event Webhook body"):
            parse(signed(body))
    assert [e.kind for e in parse(signed(b'[1, "x", {"event": "group_resubscribe"}, {"event": "open"}]'))] == [
        "opened"]
