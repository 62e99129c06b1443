"""APNs against a local HTTP/2 server over TLS on 127.0.0.1 (ALPN h2 only, like Apple's) that
checks what APNs checks: the ES256 provider token against the .p8 key's public half (kid, iss, an
iat under an hour old), the topic, the path and headers, and answers 200 + apns-id or the
documented {"reason": ...} errors."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.channels.push import apns
from herald.channels.push.apns import ApnsProvider, apns_id_for
from herald.domain.delivery import (
    FailureReason,
    OutboundMessage,
    ProviderConfigError,
    PushContent,
    SendResult,
    UnsupportedFeature,
)
from herald.domain.ids import ulid
from tests.channels.httpserver import closed_port
from tests.channels.push.peers import H2Reply, H2Request, serve_h2, verify_es256

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
MESSAGE_ID = "msg_01HXMSG0000000000000000001"
TEAM_ID, KEY_ID, TOPIC = "ABCDE12345", "KEY1234567", "com.shop.example.app"
DEVICE = "a1b2c3d4" * 8

P8 = ec.generate_private_key(ec.SECP256R1())
P8_PEM = P8.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption()).decode()


class Clock:
    def __init__(self) -> None:
        self.at = NOW

    def now(self) -> datetime:
        return self.at


def a_message(*, purpose: str = "transactional", metadata: dict[str, str] | None = None, to: str = DEVICE,
              **push_changes: Any) -> OutboundMessage:
    push = PushContent(title="Order shipped", body="Your parcel is on its way ✓", url="https://shop.example/o/1",
                       icon=None, data={"order": "1001"}, ttl_seconds=3600)
    values = {name: getattr(push, name) for name in PushContent.__dataclass_fields__}
    return OutboundMessage(id=MESSAGE_ID, workspace_id="ws_1", channel="push", purpose=purpose,  # type: ignore[arg-type]
                           to=to, push=PushContent(**{**values, **push_changes}), metadata=metadata or {})


# ---- the APNs peer -----------------------------------------------------------------------------------

def refusal(status: int, reason: str, **extra: Any) -> H2Reply:
    return H2Reply(status, orjson.dumps({"reason": reason, **extra}), {"apns-id": str(uuid.uuid4())})


@dataclass
class Apple:
    clock: Clock
    refuse: Callable[[H2Request], H2Reply | None] = field(default=lambda _: None)

    def __call__(self, request: H2Request) -> H2Reply:
        if request.http_version != "2" or request.method != "POST":
            return refusal(405, "MethodNotAllowed")
        if not request.path.startswith("/3/device/"):
            return refusal(404, "BadPath")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme != "bearer" or not token:
            return refusal(403, "MissingProviderToken")
        try:
            header, claims = verify_es256(token, P8.public_key())
        except (ValueError, InvalidSignature):
            return refusal(403, "InvalidProviderToken")
        if header.get("kid") != KEY_ID or claims.get("iss") != TEAM_ID:
            return refusal(403, "InvalidProviderToken")
        if not 0 <= self.clock.now().timestamp() - claims["iat"] < 3600:
            return refusal(403, "ExpiredProviderToken")
        if request.headers.get("apns-topic") != TOPIC:
            return refusal(400, "DeviceTokenNotForTopic")
        refused = self.refuse(request)
        return refused or H2Reply(200, b"", {"apns-id": request.headers["apns-id"]})


@dataclass
class Run:
    results: list[SendResult]
    seen: list[H2Request]


def send_all(folder: Path, apple: Apple, messages: list[OutboundMessage], *,
             between: timedelta = timedelta(0)) -> Run:
    async def go() -> Run:
        async with serve_h2(apple, folder) as server:
            client = httpx.AsyncClient(http2=True, verify=server.client_tls)
            provider = ApnsProvider(TEAM_ID, KEY_ID, TOPIC, P8_PEM, base_url=server.base_url, client=client,
                                    clock=apple.clock)
            results = []
            try:
                for message in messages:
                    results.append(await provider.send(message))
                    apple.clock.at += between
            finally:
                await provider.aclose()
                await client.aclose()
            return Run(results, server.seen)
    return asyncio.run(go())


def send_one(folder: Path, apple: Apple, message: OutboundMessage | None = None) -> tuple[SendResult, list[H2Request]]:
    outcome = send_all(folder, apple, [message or a_message()])
    return outcome.results[0], outcome.seen


# ---- sending -----------------------------------------------------------------------------------------

def test_a_message_is_posted_over_http2_with_a_provider_token(tmp_path: Path) -> None:
    result, seen = send_one(tmp_path, Apple(Clock()))
    apns_id = apns_id_for(MESSAGE_ID)
    assert result == SendResult.accepted(MESSAGE_ID, apns_id)
    [request] = seen
    assert (request.http_version, request.path) == ("2", f"/3/device/{DEVICE}")
    assert request.headers["apns-id"] == apns_id
    assert request.headers["apns-push-type"] == "alert"
    assert request.headers["apns-priority"] == "10"                    # transactional
    assert request.headers["apns-topic"] == TOPIC
    assert request.headers["apns-expiration"] == str(int(NOW.timestamp()) + 3600)
    assert "apns-collapse-id" not in request.headers
    assert request.json() == {"aps": {"alert": {"title": "Order shipped", "body": "Your parcel is on its way ✓"}},
                              "order": "1001", "url": "https://shop.example/o/1", "message_id": MESSAGE_ID}


def test_marketing_priority_collapse_id_and_reserved_keys(tmp_path: Path) -> None:
    message = a_message(purpose="marketing", metadata={"collapse_key": "promo-spring"}, url=None,
                        icon="https://shop.example/i.png", ttl_seconds=0, data={"aps": "x", "message_id": "spoofed"})
    result, [request] = send_one(tmp_path, Apple(Clock()), message)
    assert result.status == "accepted"
    assert (request.headers["apns-priority"], request.headers["apns-expiration"]) == ("5", "0")
    assert request.headers["apns-collapse-id"] == "promo-spring"
    assert request.json() == {"aps": {"alert": {"title": "Order shipped", "body": "Your parcel is on its way ✓"}},
                              "icon": "https://shop.example/i.png", "message_id": MESSAGE_ID}


def test_a_collapse_id_over_64_bytes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedFeature, match="64 bytes"):
        send_one(tmp_path, Apple(Clock()), a_message(metadata={"collapse_key": "é" * 33}))


def test_the_provider_token_is_reused_and_renewed_every_50_minutes(tmp_path: Path) -> None:
    outcome = send_all(tmp_path, Apple(Clock()), [a_message()] * 4, between=timedelta(minutes=20))
    assert [r.status for r in outcome.results] == ["accepted"] * 4
    tokens = [r.headers["authorization"] for r in outcome.seen]
    # sent at 0, 20, 40 and 60 minutes: renewed once, at 60 (Apple: every 20-60 minutes)
    assert tokens[0] == tokens[1] == tokens[2] != tokens[3]


def test_expired_provider_token_is_renewed_on_the_next_send(tmp_path: Path) -> None:
    expired = iter([True, False])
    apple = Apple(Clock(), refuse=lambda _: refusal(403, "ExpiredProviderToken") if next(expired) else None)
    outcome = send_all(tmp_path, apple, [a_message(), a_message()], between=timedelta(minutes=1))
    first, second = outcome.results
    assert (first.status, first.reason, first.provider_code) == ("retry", FailureReason.AUTH_FAILED,
                                                                 "ExpiredProviderToken")
    assert second.status == "accepted"
    assert outcome.seen[0].headers["authorization"] != outcome.seen[1].headers["authorization"]


def test_a_stale_clock_gets_expired_provider_token_from_apns(tmp_path: Path) -> None:
    apple = Apple(Clock())

    async def go() -> SendResult:
        async with serve_h2(apple, tmp_path) as server:
            client = httpx.AsyncClient(http2=True, verify=server.client_tls)
            stale = Clock()
            stale.at = NOW - timedelta(hours=2)
            provider = ApnsProvider(TEAM_ID, KEY_ID, TOPIC, P8_PEM, base_url=server.base_url, client=client,
                                    clock=stale)
            try:
                return await provider.send(a_message())
            finally:
                await client.aclose()
    result = asyncio.run(go())
    assert (result.reason, result.provider_code) == (FailureReason.AUTH_FAILED, "ExpiredProviderToken")


# ---- refusals ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "reason", "outcome", "failure"), [
    (410, "Unregistered", "failed", FailureReason.INVALID_ADDRESS),
    (410, "ExpiredToken", "failed", FailureReason.INVALID_ADDRESS),
    (400, "BadDeviceToken", "failed", FailureReason.INVALID_ADDRESS),
    (400, "DeviceTokenNotForTopic", "failed", FailureReason.INVALID_ADDRESS),
    (400, "BadCollapseId", "failed", FailureReason.CONTENT_REJECTED),
    (400, "PayloadEmpty", "failed", FailureReason.CONTENT_REJECTED),
    (413, "PayloadTooLarge", "failed", FailureReason.CONTENT_REJECTED),
    (400, "TopicDisallowed", "retry", FailureReason.AUTH_FAILED),
    (403, "InvalidProviderToken", "retry", FailureReason.AUTH_FAILED),
    (403, "BadEnvironmentKeyInToken", "retry", FailureReason.AUTH_FAILED),
    (429, "TooManyRequests", "retry", FailureReason.THROTTLED),
    (429, "TooManyProviderTokenUpdates", "retry", FailureReason.THROTTLED),
    (500, "InternalServerError", "retry", FailureReason.PROVIDER_DOWN),
    (503, "ServiceUnavailable", "retry", FailureReason.PROVIDER_DOWN),
    (503, "Shutdown", "retry", FailureReason.PROVIDER_DOWN),
    (405, "MethodNotAllowed", "failed", FailureReason.UNKNOWN),
])
def test_documented_refusals(tmp_path: Path, status: int, reason: str, outcome: str, failure: FailureReason) -> None:
    extra = {"timestamp": 1714979289000} if status == 410 else {}
    result, _ = send_one(tmp_path, Apple(Clock(), refuse=lambda _: refusal(status, reason, **extra)))
    assert (result.status, result.reason, result.provider_code) == (outcome, failure, reason)
    assert result.detail == f"APNs HTTP {status}: {reason}"


def test_an_answer_without_a_reason_is_classified_by_status(tmp_path: Path) -> None:
    result, _ = send_one(tmp_path, Apple(Clock(), refuse=lambda _: H2Reply(503, b"", {"retry-after": "5"})))
    assert (result.status, result.reason, result.provider_code, result.retry_after) == (
        "retry", FailureReason.PROVIDER_DOWN, "503", 5.0)


@pytest.mark.parametrize("device", ["", "not-hex", "ab" * 8, "../../3/device/" + "ab" * 32, "ab" * 32 + "a"])
def test_a_malformed_device_token_fails_without_a_request(tmp_path: Path, device: str) -> None:
    result, seen = send_one(tmp_path, Apple(Clock()), a_message(to=device))
    assert (result.status, result.reason, result.provider_code) == (
        "failed", FailureReason.INVALID_ADDRESS, "invalid_device_token")
    assert seen == []


def test_an_unreachable_apns_did_not_get_the_message() -> None:
    async def go() -> SendResult:
        provider = ApnsProvider(TEAM_ID, KEY_ID, TOPIC, P8_PEM, base_url=f"https://127.0.0.1:{closed_port()}",
                                clock=Clock())
        try:
            return await provider.send(a_message())
        finally:
            await provider.aclose()
    result = asyncio.run(go())
    assert (result.status, result.reason, result.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, False)


# ---- ids and settings ---------------------------------------------------------------------------------

def test_apns_id_is_our_ulid_as_a_uuid_or_a_stable_name_based_uuid() -> None:
    value = ulid()
    apns_id = apns_id_for(f"msg_{value}")
    crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    assert uuid.UUID(apns_id).int == int("".join(f"{crockford.index(c):05b}" for c in value), 2)
    assert apns_id_for("not-a-ulid") == apns_id_for("not-a-ulid") != apns_id_for("not-a-ulid-2")
    assert str(uuid.UUID(apns_id_for("not-a-ulid"))) == apns_id_for("not-a-ulid")


def test_make_provider_reads_the_documented_settings() -> None:
    async def go() -> None:
        config = {"team_id": TEAM_ID, "key_id": KEY_ID, "topic": TOPIC}
        for extra, base in (({}, "https://api.push.apple.com"), ({"environment": "sandbox"},
                                                                 "https://api.sandbox.push.apple.com"),
                            ({"base_url": "https://127.0.0.1:9/"}, "https://127.0.0.1:9")):
            provider = apns.make_provider({**config, **extra}, {"signing_key": P8_PEM})
            assert (provider.key, provider.channel, provider._base_url) == ("apns", "push", base)
            await provider.aclose()
    asyncio.run(go())


RSA_LIKE = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"


@pytest.mark.parametrize(("config", "secrets", "match"), [
    ({"key_id": KEY_ID, "topic": TOPIC}, {"signing_key": P8_PEM}, "team_id"),
    ({"team_id": "abc", "key_id": KEY_ID, "topic": TOPIC}, {"signing_key": P8_PEM}, "10-character"),
    ({"team_id": TEAM_ID, "key_id": KEY_ID}, {"signing_key": P8_PEM}, "bundle ID"),
    ({"team_id": TEAM_ID, "key_id": KEY_ID, "topic": TOPIC}, {}, "signing_key"),
    ({"team_id": TEAM_ID, "key_id": KEY_ID, "topic": TOPIC}, {"signing_key": RSA_LIKE}, ".p8"),
    ({"team_id": TEAM_ID, "key_id": KEY_ID, "topic": TOPIC, "environment": "staging"}, {"signing_key": P8_PEM},
     "production or sandbox"),
    ({"team_id": TEAM_ID, "key_id": KEY_ID, "topic": TOPIC, "bundle": "x"}, {"signing_key": P8_PEM},
     "unknown settings bundle"),
])
def test_make_provider_says_what_to_fix(config: dict[str, Any], secrets: dict[str, str], match: str) -> None:
    with pytest.raises(ProviderConfigError, match=match) as caught:
        apns.make_provider(config, secrets)
    assert "PRIVATE KEY" not in str(caught.value)


def test_a_signing_key_on_another_curve_is_refused() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()
    with pytest.raises(ProviderConfigError, match="P-256"):
        ApnsProvider(TEAM_ID, KEY_ID, TOPIC, p384)
