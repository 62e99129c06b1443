"""Web Push against a local push service on 127.0.0.1 that does what RFC 8030/8292 push services
do: it checks the VAPID JWT's ES256 signature against the `k=` key, the key against the one the
subscription was made with, `aud` and `exp`, and answers 201 + Location, or the documented error
statuses. The test then decrypts the body with `http_ece` and the browser's private key, as the
browser would. RFC 8291 Appendix A is reproduced byte for byte."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import urlsplit

import http_ece  # type: ignore[import-untyped]
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.channels.push import webpush
from herald.channels.push.webpush import WebPushProvider, application_server_key, encrypt_payload, load_vapid_key
from herald.domain.delivery import (
    FailureReason,
    OutboundMessage,
    ProviderConfigError,
    PushContent,
    SendResult,
    UnsupportedFeature,
)
from tests.channels.email.httpserver import Posted, closed_port, json_reply, serve_posts
from tests.channels.push.peers import b64url, unb64url, verify_es256
from tests.stores.localserver import Reply

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
MESSAGE_ID = "msg_01HXMSG0000000000000000001"
SUBJECT = "mailto:push-ops@shop.example"
T = TypeVar("T")


def run(use: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(use())  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.at = NOW

    def now(self) -> datetime:
        return self.at


@dataclass(frozen=True)
class Browser:
    """A subscribed browser: its ECDH key pair and auth secret (what PushSubscription holds)."""

    private: ec.EllipticCurvePrivateKey
    auth: bytes

    @property
    def keys(self) -> dict[str, str]:
        public = self.private.public_key().public_bytes(serialization.Encoding.X962,
                                                        serialization.PublicFormat.UncompressedPoint)
        return {"p256dh": b64url(public), "auth": b64url(self.auth)}

    def decrypt(self, body: bytes) -> bytes:
        plaintext: bytes = http_ece.decrypt(body, private_key=self.private, auth_secret=self.auth,
                                            version="aes128gcm")
        return plaintext


def a_browser() -> Browser:
    return Browser(ec.generate_private_key(ec.SECP256R1()), bytes(range(16)))


VAPID = ec.generate_private_key(ec.SECP256R1())
VAPID_PEM = VAPID.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
VAPID_PUBLIC = application_server_key(VAPID)


def a_message(to: str, keys: dict[str, str], *, purpose: str = "marketing", metadata: dict[str, str] | None = None,
              **push_changes: Any) -> OutboundMessage:
    push = PushContent(title="Your cart misses you", body="Still thinking it over? ✓", url="https://shop.example/cart",
                       icon="https://shop.example/icon.png", data={"cart": "c_42"}, keys=keys, ttl_seconds=3600)
    values = {name: getattr(push, name) for name in PushContent.__dataclass_fields__}
    return OutboundMessage(id=MESSAGE_ID, workspace_id="ws_1", channel="push", purpose=purpose,  # type: ignore[arg-type]
                           to=to, push=PushContent(**{**values, **push_changes}), metadata=metadata or {})


# ---- the push service ----------------------------------------------------------------------------------

def push_service(subscribed_with: str = VAPID_PUBLIC, status: int = 201,
                 extra: dict[str, str] | None = None) -> Callable[[Posted], Reply]:
    """RFC 8030 + RFC 8292: 401 without a valid VAPID token, 403 for a key other than the one the
    subscription was created with, else `status`."""

    def answer(request: Posted) -> Reply:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        params = dict(part.strip().split("=", 1) for part in credentials.split(","))
        if scheme != "vapid" or set(params) != {"t", "k"}:
            return json_reply(401, {"errno": 109, "message": "missing VAPID authorization"})
        try:
            key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), unb64url(params["k"]))
            header, claims = verify_es256(params["t"], key)
        except (ValueError, InvalidSignature):
            return json_reply(401, {"errno": 109, "message": "invalid VAPID token"})
        origin = f"http://{request.headers['host']}"
        if (header.get("typ") != "JWT" or claims.get("aud") != origin or claims.get("sub") != SUBJECT
                or not 0 < claims["exp"] - NOW.timestamp() <= 24 * 3600):
            return json_reply(401, {"errno": 109, "message": f"bad VAPID claims {claims}"})
        if params["k"] != subscribed_with:
            return json_reply(403, {"errno": 109, "message": "VAPID key does not match the subscription"})
        return Reply(status, b"", {"Location": f"{origin}/m/abc123", **(extra or {})})

    return answer


def send(message: OutboundMessage, *, key: str = VAPID_PEM, clock: Clock | None = None) -> SendResult:
    async def go() -> SendResult:
        provider = WebPushProvider(SUBJECT, key, clock=clock or Clock(), allow_http=True)
        try:
            return await provider.send(message)
        finally:
            await provider.aclose()
    return run(go)


# ---- RFC 8291 -----------------------------------------------------------------------------------------

def test_rfc_8291_appendix_a_is_reproduced_byte_for_byte() -> None:
    as_private = ec.derive_private_key(int.from_bytes(unb64url("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"), "big"),
                                       ec.SECP256R1())
    keys = {"p256dh": "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
            "auth": "BTBZMqHH6r4Tts7J_aSIgg"}
    body = encrypt_payload(b"When I grow up, I want to be a watermelon", keys,
                           salt=unb64url("DGv6ra1nlYgDCS1FRnbzlw"), sender_key=as_private)
    assert b64url(body) == (
        "DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27ml"
        "mlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPT"
        "pK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWGNWQexSgSxsj_Qulcy4a-fN")


# ---- sending -----------------------------------------------------------------------------------------

def test_a_message_is_encrypted_for_the_browser_and_vapid_signed() -> None:
    browser = a_browser()
    with serve_posts(push_service()) as (url, seen):
        result = send(a_message(f"{url}/wpush/v2/sub-1", browser.keys))
    assert result == SendResult.accepted(MESSAGE_ID, f"{url}/m/abc123")
    [request] = seen
    assert request.path == "/wpush/v2/sub-1"
    assert request.headers["ttl"] == "3600"
    assert request.headers["urgency"] == "normal"          # marketing
    assert request.headers["content-encoding"] == "aes128gcm"
    assert request.headers["content-type"] == "application/octet-stream"
    assert "topic" not in request.headers
    assert json.loads(browser.decrypt(request.body)) == {
        "title": "Your cart misses you", "body": "Still thinking it over? ✓", "url": "https://shop.example/cart",
        "icon": "https://shop.example/icon.png", "data": {"cart": "c_42"}, "message_id": MESSAGE_ID}
    # One record (RFC 8291 section 4): the header names rs 4096 and our ephemeral key.
    assert int.from_bytes(request.body[16:20], "big") == 4096 and request.body[20] == 65


def test_each_message_gets_a_fresh_salt_and_ephemeral_key() -> None:
    browser = a_browser()
    with serve_posts(push_service()) as (url, seen):
        send(a_message(f"{url}/s", browser.keys))
        send(a_message(f"{url}/s", browser.keys))
    first, second = (r.body for r in seen)
    assert first[:16] != second[:16] and first[21:86] != second[21:86]
    assert browser.decrypt(first) == browser.decrypt(second)


def test_optional_fields_urgency_and_topic() -> None:
    browser = a_browser()
    message = a_message("", browser.keys, purpose="transactional", url=None, icon=None, data={})
    with serve_posts(push_service()) as (url, seen):
        plain = send(OutboundMessage(**{**_fields(message), "to": f"{url}/s"}))
        hinted = send(a_message(f"{url}/s", browser.keys, metadata={"urgency": "very-low", "collapse_key": "cart_42"}))
    assert plain.status == hinted.status == "accepted"
    assert seen[0].headers["urgency"] == "high"            # transactional
    assert json.loads(browser.decrypt(seen[0].body)) == {"title": "Your cart misses you",
                                                         "body": "Still thinking it over? ✓", "data": {},
                                                         "message_id": MESSAGE_ID}
    assert (seen[1].headers["urgency"], seen[1].headers["topic"]) == ("very-low", "cart_42")


@pytest.mark.parametrize("metadata", [{"urgency": "urgent"}, {"collapse_key": "has spaces"},
                                      {"collapse_key": "x" * 33}])
def test_unusable_hints_are_refused_before_any_request(metadata: dict[str, str]) -> None:
    with serve_posts(push_service()) as (url, seen), pytest.raises(UnsupportedFeature):
        send(a_message(f"{url}/s", a_browser().keys, metadata=metadata))
    assert seen == []


def test_the_vapid_token_is_reused_per_push_service_and_renewed_at_half_its_life() -> None:
    browser, clock = a_browser(), Clock()

    async def go(base: str) -> None:
        provider = WebPushProvider(SUBJECT, VAPID_PEM, clock=clock, allow_http=True)
        try:
            for step in (timedelta(0), timedelta(hours=5), timedelta(hours=2)):
                clock.at += step
                assert (await provider.send(a_message(f"{base}/s", browser.keys))).status == "accepted"
        finally:
            await provider.aclose()

    with serve_posts(push_service()) as (url, seen):
        run(lambda: go(url))
    tokens = [r.headers["authorization"] for r in seen]
    assert tokens[0] == tokens[1] != tokens[2]   # renewed once 6 of its 12 hours had passed
    assert provider_key_of(tokens[0]) == VAPID_PUBLIC


def provider_key_of(authorization: str) -> str:
    return authorization.split("k=")[1]


# ---- refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "reason", "outcome"), [
    (404, FailureReason.INVALID_ADDRESS, "failed"),
    (410, FailureReason.INVALID_ADDRESS, "failed"),
    (413, FailureReason.CONTENT_REJECTED, "failed"),
    (400, FailureReason.CONTENT_REJECTED, "failed"),
    (500, FailureReason.PROVIDER_DOWN, "retry"),
    (503, FailureReason.PROVIDER_DOWN, "retry"),
])
def test_push_service_statuses(status: int, reason: FailureReason, outcome: str) -> None:
    errors = {404: "subscription not found", 410: "subscription expired", 413: "payload too large"}

    def answer(_: Posted) -> Reply:
        return json_reply(status, {"code": status, "errno": 106, "message": errors.get(status, "error")})

    with serve_posts(answer) as (url, _):
        result = send(a_message(f"{url}/s", a_browser().keys))
    assert (result.status, result.reason, result.provider_code) == (outcome, reason, str(status))
    assert f"HTTP {status}" in result.detail


def test_429_waits_for_retry_after() -> None:
    with serve_posts(lambda _: json_reply(429, {"message": "slow down"}, {"Retry-After": "120"})) as (url, _):
        result = send(a_message(f"{url}/s", a_browser().keys))
    assert (result.status, result.reason, result.retry_after) == ("retry", FailureReason.THROTTLED, 120.0)


def test_a_key_other_than_the_subscriptions_is_refused_as_our_credentials() -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    raw = b64url(other.private_numbers().private_value.to_bytes(32, "big"))
    with serve_posts(push_service()) as (url, seen):
        result = send(a_message(f"{url}/s", a_browser().keys), key=raw)
    assert (result.status, result.reason, result.provider_code) == ("retry", FailureReason.AUTH_FAILED, "403")
    assert provider_key_of(seen[0].headers["authorization"]) == application_server_key(other)


def test_an_expired_clock_makes_the_push_service_refuse_the_token() -> None:
    clock = Clock()
    clock.at = NOW - timedelta(days=2)   # our token's exp is already past for the push service
    with serve_posts(push_service()) as (url, _):
        result = send(a_message(f"{url}/s", a_browser().keys), clock=clock)
    assert (result.status, result.reason, result.provider_code) == ("retry", FailureReason.AUTH_FAILED, "401")


def test_a_connection_lost_after_the_request_may_have_sent_it_a_refused_one_did_not() -> None:
    with serve_posts(lambda _: None) as (url, seen):
        dropped = send(a_message(f"{url}/s", a_browser().keys))
    refused = send(a_message(f"http://127.0.0.1:{closed_port()}/s", a_browser().keys))
    assert len(seen) >= 1
    assert (dropped.status, dropped.reason, dropped.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, True)
    assert (refused.status, refused.reason, refused.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, False)


@pytest.mark.parametrize(("to", "keys"), [
    ("{url}/s", {"p256dh": "not base64!", "auth": "AAECAwQFBgcICQoLDA0ODw"}),
    ("{url}/s", {"auth": "AAECAwQFBgcICQoLDA0ODw"}),
    ("{url}/s", {"p256dh": b64url(b"\x04" + b"\x01" * 64), "auth": "AAECAwQFBgcICQoLDA0ODw"}),  # not on the curve
    ("{url}/s", {"p256dh": "BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNtoIAiw4",
                 "auth": "c2hvcnQ"}),
    ("ftp://push.example/s", None),
    ("https://user:pw@push.example/s", None),
    ("", None),
])
def test_an_unusable_subscription_fails_its_address_without_a_request(to: str, keys: dict[str, str] | None) -> None:
    with serve_posts(push_service()) as (url, seen):
        result = send(a_message(to.format(url=url), a_browser().keys if keys is None else keys))
    assert (result.status, result.reason, result.provider_code) == (
        "failed", FailureReason.INVALID_ADDRESS, "invalid_subscription")
    assert seen == []


def test_http_endpoints_are_refused_unless_allowed() -> None:
    async def go() -> SendResult:
        provider = WebPushProvider(SUBJECT, VAPID_PEM, clock=Clock())
        try:
            return await provider.send(a_message("http://push.example/s", a_browser().keys))
        finally:
            await provider.aclose()
    assert run(go).reason is FailureReason.INVALID_ADDRESS


def test_a_payload_over_one_record_is_refused_without_a_request() -> None:
    browser = a_browser()
    with serve_posts(push_service()) as (url, seen):
        fits = send(a_message(f"{url}/s", browser.keys, body="x" * 3700))
        too_big = send(a_message(f"{url}/s", browser.keys, body="x" * 4000))
    assert fits.status == "accepted" and len(seen) == 1 and len(seen[0].body) <= 4096
    assert (too_big.status, too_big.reason, too_big.provider_code) == (
        "failed", FailureReason.CONTENT_REJECTED, "payload_too_large")


def test_a_non_push_message_is_refused() -> None:
    message = OutboundMessage(id=MESSAGE_ID, workspace_id="ws_1", channel="sms", purpose="marketing", to="+15550100")
    with pytest.raises(UnsupportedFeature, match="push"):
        send(message)


# ---- keys and settings ---------------------------------------------------------------------------------

def test_vapid_keys_are_read_from_pem_raw_or_der_and_generated() -> None:
    raw = b64url(VAPID.private_numbers().private_value.to_bytes(32, "big"))
    der = b64url(VAPID.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()))
    assert {application_server_key(load_vapid_key(k)) for k in (VAPID_PEM, raw, der)} == {VAPID_PUBLIC}
    private, public = webpush.new_vapid_key()
    assert application_server_key(load_vapid_key(private)) == public and len(unb64url(public)) == 65


@pytest.mark.parametrize("secret", ["not a key", b64url(b"\x01" * 31),
                                    "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"])
def test_unusable_vapid_keys_are_refused_without_echoing_them(secret: str) -> None:
    with pytest.raises(ProviderConfigError, match="vapid_private_key") as caught:
        load_vapid_key(secret)
    assert secret not in str(caught.value)


def test_a_vapid_key_on_another_curve_is_refused() -> None:
    other = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with pytest.raises(ProviderConfigError, match="P-256"):
        load_vapid_key(other)


def test_make_provider_reads_the_documented_settings() -> None:
    async def go() -> None:
        provider = webpush.make_provider({"subject": SUBJECT, "token_lifetime_hours": 6},
                                         {"vapid_private_key": VAPID_PEM})
        assert (provider.key, provider.channel, provider.public_key) == ("webpush", "push", VAPID_PUBLIC)
        await provider.aclose()
    run(go)


@pytest.mark.parametrize(("config", "secrets", "match"), [
    ({}, {"vapid_private_key": VAPID_PEM}, "subject"),
    ({"subject": "push-ops@shop.example"}, {"vapid_private_key": VAPID_PEM}, "mailto"),
    ({"subject": SUBJECT}, {}, "vapid_private_key"),
    ({"subject": SUBJECT, "endpoint": "x"}, {"vapid_private_key": VAPID_PEM}, "unknown settings endpoint"),
    ({"subject": SUBJECT, "token_lifetime_hours": 48}, {"vapid_private_key": VAPID_PEM}, "24 hours"),
    ({"subject": SUBJECT, "token_lifetime_hours": "6"}, {"vapid_private_key": VAPID_PEM}, "number of hours"),
])
def test_make_provider_says_what_to_fix(config: dict[str, Any], secrets: dict[str, str], match: str) -> None:
    with pytest.raises(ProviderConfigError, match=match):
        webpush.make_provider(config, secrets)


def test_the_vapid_audience_is_the_endpoint_origin() -> None:
    assert webpush.parse_endpoint("https://fcm.googleapis.com/fcm/send/abc:def").origin == "https://fcm.googleapis.com"
    assert webpush.parse_endpoint("https://Push.Example:443/x").origin == "https://push.example"
    assert webpush.parse_endpoint("https://push.example:8443/x").origin == "https://push.example:8443"
    assert urlsplit(webpush.parse_endpoint("https://[::1]:8443/x").origin).port == 8443


def _fields(message: OutboundMessage) -> dict[str, Any]:
    return {name: getattr(message, name) for name in OutboundMessage.__dataclass_fields__}
