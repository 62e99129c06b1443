"""FCM HTTP v1 against a local peer on 127.0.0.1 playing both Google parts: the OAuth2 token
endpoint (it checks the RS256 JWT assertion with the service account's public key: kid, iss, scope,
aud, iat/exp, and the jwt-bearer grant) and `messages:send` (it checks the Bearer token it issued
and answers the documented success and google.rpc error bodies, the examples taken from Firebase's
"FCM error codes" page)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qs

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from herald.channels.push import fcm
from herald.channels.push.fcm import FcmProvider, load_service_account
from herald.domain.delivery import FailureReason, OutboundMessage, ProviderConfigError, PushContent, SendResult
from tests.channels.email.httpserver import Posted, closed_port, json_reply, serve_posts
from tests.channels.push.peers import verify_rs256
from tests.stores.localserver import Reply

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
MESSAGE_ID = "msg_01HXMSG0000000000000000001"
PROJECT = "herald-test"
DEVICE = "eTxKsXYZ:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx"
SEND_PATH = f"/v1/projects/{PROJECT}/messages:send"
FCM_NAME = f"projects/{PROJECT}/messages/0:1500415314455276%31bd1c9631bd1c96"
T = TypeVar("T")

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_PEM = RSA_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()


def service_account_json(**changes: Any) -> str:
    info = {"type": "service_account", "project_id": PROJECT, "private_key_id": "3f1e0c9a7b", "private_key": RSA_PEM,
            "client_email": "herald@herald-test.iam.gserviceaccount.com", "client_id": "1234567890",
            "token_uri": "https://oauth2.googleapis.com/token"}
    return json.dumps({k: v for k, v in {**info, **changes}.items() if v is not None})


def run(use: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(use())  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.at = NOW

    def now(self) -> datetime:
        return self.at


def a_message(*, purpose: str = "transactional", metadata: dict[str, str] | None = None, to: str = DEVICE,
              **push_changes: Any) -> OutboundMessage:
    push = PushContent(title="Order shipped", body="Your parcel is on its way", url="https://shop.example/o/1",
                       icon="https://shop.example/icon.png", data={"order": "1001"}, ttl_seconds=600)
    values = {name: getattr(push, name) for name in PushContent.__dataclass_fields__}
    return OutboundMessage(id=MESSAGE_ID, workspace_id="ws_1", channel="push", purpose=purpose,  # type: ignore[arg-type]
                           to=to, push=PushContent(**{**values, **push_changes}), metadata=metadata or {})


# ---- the Google peer -----------------------------------------------------------------------------------

SendAnswer = Callable[[Posted], Reply | None]   # None: hang up after reading the request


@dataclass
class Google:
    clock: Clock
    send_answer: SendAnswer = field(default=lambda _: json_reply(200, {"name": FCM_NAME}))
    token_answer: Callable[[Posted], Reply | None] | None = None
    issued: list[str] = field(default_factory=list)
    base: str = ""

    def __call__(self, request: Posted) -> Reply | None:
        if request.path == "/token":
            return self.token_answer(request) if self.token_answer else self.token(request)
        if request.path != SEND_PATH:
            return json_reply(404, {"error": {"code": 404, "message": "not found", "status": "NOT_FOUND"}})
        if request.headers.get("authorization") not in {f"Bearer {t}" for t in self.issued}:
            return json_reply(401, {"error": {"code": 401, "status": "UNAUTHENTICATED",
                                              "message": "Request had invalid authentication credentials."}})
        return self.send_answer(request)

    def token(self, request: Posted) -> Reply:
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return json_reply(400, {"error": "unsupported_grant_type", "error_description": "Invalid grant_type"})
        try:
            header, claims = verify_rs256(form["assertion"], RSA_KEY.public_key())
        except (KeyError, ValueError, InvalidSignature):
            return json_reply(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."})
        now = int(self.clock.now().timestamp())
        expected = {"iss": "herald@herald-test.iam.gserviceaccount.com", "aud": f"{self.base}/token",
                    "scope": "https://www.googleapis.com/auth/firebase.messaging", "iat": now, "exp": now + 3600}
        if header.get("kid") != "3f1e0c9a7b" or claims != expected:
            return json_reply(400, {"error": "invalid_grant", "error_description": f"bad claims {claims}"})
        self.issued.append(f"ya29.token-{len(self.issued) + 1}")
        return json_reply(200, {"access_token": self.issued[-1], "expires_in": 3599, "token_type": "Bearer"})

    def sends(self, seen: list[Posted]) -> list[Posted]:
        return [r for r in seen if r.path == SEND_PATH]


def provider_for(url: str, clock: Clock, **changes: Any) -> FcmProvider:
    account = load_service_account(service_account_json(**changes))
    return FcmProvider(account, base_url=url, token_uri=f"{url}/token", clock=clock)


def send_all(google: Google, messages: list[OutboundMessage], *, between: timedelta = timedelta(0),
             concurrently: bool = False) -> tuple[list[SendResult], list[Posted]]:
    with serve_posts(google) as (url, seen):
        google.base = url

        async def go() -> list[SendResult]:
            provider = provider_for(url, google.clock)
            try:
                if concurrently:
                    return list(await asyncio.gather(*(provider.send(m) for m in messages)))
                results = []
                for message in messages:
                    results.append(await provider.send(message))
                    google.clock.at += between
                return results
            finally:
                await provider.aclose()

        return run(go), seen


def send_one(google: Google, message: OutboundMessage | None = None) -> tuple[SendResult, list[Posted]]:
    [result], seen = send_all(google, [message or a_message()])
    return result, seen


# ---- sending -----------------------------------------------------------------------------------------

def test_a_message_is_sent_as_documented_with_our_id_in_data() -> None:
    google = Google(Clock())
    result, seen = send_one(google)
    assert result == SendResult.accepted(MESSAGE_ID, FCM_NAME)
    [token_request, request] = seen
    assert token_request.path == "/token" and request.path == SEND_PATH
    assert request.headers["authorization"] == "Bearer ya29.token-1"
    assert request.headers["content-type"] == "application/json; charset=UTF-8"
    expiry = str(int(NOW.timestamp()) + 600)
    assert request.json() == {"message": {
        "token": DEVICE,
        "notification": {"title": "Order shipped", "body": "Your parcel is on its way"},
        "data": {"order": "1001", "url": "https://shop.example/o/1", "message_id": MESSAGE_ID},
        "android": {"priority": "HIGH", "ttl": "600s"},
        "apns": {"headers": {"apns-priority": "10", "apns-expiration": expiry}},
        "webpush": {"headers": {"TTL": "600", "Urgency": "high"}, "notification": {"icon": "https://shop.example/icon.png"},
                    "fcm_options": {"link": "https://shop.example/o/1"}},
    }}


def test_marketing_urgency_collapse_key_and_a_plain_http_link() -> None:
    google = Google(Clock())
    message = a_message(purpose="marketing", metadata={"collapse_key": "promo"}, url="http://shop.example/x",
                        icon=None, ttl_seconds=0, data={"message_id": "spoofed"})
    result, seen = send_one(google, message)
    assert result.status == "accepted"
    body = seen[-1].json()["message"]
    assert body["data"] == {"url": "http://shop.example/x", "message_id": MESSAGE_ID}   # ours wins
    assert body["android"] == {"priority": "NORMAL", "ttl": "0s", "collapse_key": "promo"}
    assert body["apns"] == {"headers": {"apns-priority": "5", "apns-expiration": "0", "apns-collapse-id": "promo"}}
    assert body["webpush"] == {"headers": {"TTL": "0", "Urgency": "normal", "Topic": "promo"}}   # no https link


def test_the_access_token_is_cached_until_shortly_before_it_expires() -> None:
    google = Google(Clock())
    results, seen = send_all(google, [a_message()] * 4, between=timedelta(minutes=28))
    assert [r.status for r in results] == ["accepted"] * 4
    # 3599 s tokens renewed 5 minutes early (at 54:59): sends at 0 and 28 min share the first token,
    # 56 and 84 min the second.
    assert [r.path for r in seen] == ["/token", SEND_PATH, SEND_PATH, "/token", SEND_PATH, SEND_PATH]
    assert [r.headers["authorization"] for r in google.sends(seen)] == [
        "Bearer ya29.token-1", "Bearer ya29.token-1", "Bearer ya29.token-2", "Bearer ya29.token-2"]


def test_concurrent_sends_share_one_token_fetch() -> None:
    google = Google(Clock())
    results, seen = send_all(google, [a_message()] * 6, concurrently=True)
    assert [r.status for r in results] == ["accepted"] * 6
    assert [r.path for r in seen].count("/token") == 1


def test_a_401_drops_the_token_and_the_next_send_fetches_a_new_one() -> None:
    google = Google(Clock())
    refused = iter([True, False])

    def answer(_: Posted) -> Reply:
        if next(refused):
            return json_reply(401, {"error": {"code": 401, "status": "UNAUTHENTICATED",
                                              "message": "Request had invalid authentication credentials."}})
        return json_reply(200, {"name": FCM_NAME})

    google.send_answer = answer
    results, seen = send_all(google, [a_message(), a_message()])
    assert (results[0].status, results[0].reason, results[0].provider_code) == (
        "retry", FailureReason.AUTH_FAILED, "UNAUTHENTICATED")
    assert results[1].status == "accepted"
    assert [r.path for r in seen] == ["/token", SEND_PATH, "/token", SEND_PATH]


# ---- refusals ------------------------------------------------------------------------------------------

def fcm_error(code: int, status: str, message: str, error_code: str | None = None,
              violations: list[dict[str, str]] | None = None) -> dict[str, Any]:
    details: list[dict[str, Any]] = []
    if error_code:
        details.append({"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code})
    if violations:
        details.append({"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": violations})
    return {"error": {"code": code, "message": message, "status": status, "details": details}}


ERRORS = [
    (404, fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"), {},
     "failed", FailureReason.INVALID_ADDRESS, "UNREGISTERED"),
    (400, fcm_error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token",
                    "INVALID_ARGUMENT"), {}, "failed", FailureReason.INVALID_ADDRESS, "INVALID_ARGUMENT"),
    (400, fcm_error(400, "INVALID_ARGUMENT", "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
                    violations=[{"field": "message.data[0].value",
                                 "description": "Invalid value at 'message.data[0].value' (TYPE_STRING), 12"}]),
     {}, "failed", FailureReason.CONTENT_REJECTED, "INVALID_ARGUMENT"),
    (403, fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH"), {},
     "retry", FailureReason.AUTH_FAILED, "SENDER_ID_MISMATCH"),
    (401, fcm_error(401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service", "THIRD_PARTY_AUTH_ERROR"), {},
     "retry", FailureReason.AUTH_FAILED, "THIRD_PARTY_AUTH_ERROR"),
    (429, fcm_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Send requests'", "QUOTA_EXCEEDED"),
     {"Retry-After": "60"}, "retry", FailureReason.THROTTLED, "QUOTA_EXCEEDED"),
    (503, fcm_error(503, "UNAVAILABLE", "The service is currently unavailable.", "UNAVAILABLE"),
     {"Retry-After": "10"}, "retry", FailureReason.PROVIDER_DOWN, "UNAVAILABLE"),
    (500, fcm_error(500, "INTERNAL", "Internal error encountered.", "INTERNAL"), {},
     "retry", FailureReason.PROVIDER_DOWN, "INTERNAL"),
    (502, None, {}, "retry", FailureReason.PROVIDER_DOWN, "502"),
    (404, None, {}, "failed", FailureReason.UNKNOWN, "404"),   # not FCM speaking: no token is retired
]


@pytest.mark.parametrize(("status", "body", "headers", "outcome", "reason", "code"), ERRORS)
def test_documented_errors(status: int, body: dict[str, Any] | None, headers: dict[str, str], outcome: str,
                           reason: FailureReason, code: str) -> None:
    google = Google(Clock())
    google.send_answer = lambda _: (json_reply(status, body, headers) if body is not None
                                    else Reply(status, b"<html>Error</html>", {"Content-Type": "text/html"}))
    result, _ = send_one(google)
    assert (result.status, result.reason, result.provider_code) == (outcome, reason, code)
    assert result.detail.startswith(f"FCM HTTP {status}")
    if "Retry-After" in headers:
        assert result.retry_after == float(headers["Retry-After"])
    assert result.maybe_sent is (status == 502)


def test_an_empty_registration_token_fails_without_a_request() -> None:
    google = Google(Clock())
    result, seen = send_one(google, a_message(to="  "))
    assert (result.status, result.reason) == ("failed", FailureReason.INVALID_ADDRESS)
    assert seen == []


@pytest.mark.parametrize(("answer", "reason", "code"), [
    (json_reply(400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
     FailureReason.AUTH_FAILED, "invalid_grant"),
    (json_reply(401, {"error": "invalid_client", "error_description": "The OAuth client was not found."}),
     FailureReason.AUTH_FAILED, "invalid_client"),
    (json_reply(429, {"error": "rate_limit_exceeded"}, {"Retry-After": "30"}), FailureReason.THROTTLED,
     "rate_limit_exceeded"),
    (json_reply(503, {"error": "temporarily_unavailable"}), FailureReason.PROVIDER_DOWN, "temporarily_unavailable"),
    (json_reply(200, {"token_type": "Bearer"}), FailureReason.PROVIDER_DOWN, None),
])
def test_a_refused_token_request_retries_without_sending(answer: Reply, reason: FailureReason,
                                                         code: str | None) -> None:
    google = Google(Clock(), token_answer=lambda _: answer)
    result, seen = send_one(google)
    assert (result.status, result.reason, result.provider_code, result.maybe_sent) == ("retry", reason, code, False)
    assert google.sends(seen) == []
    assert RSA_PEM not in result.detail


def test_an_unreachable_token_endpoint_or_fcm() -> None:
    port = closed_port()

    async def go(token_uri: str, base_url: str) -> SendResult:
        account = load_service_account(service_account_json())
        provider = FcmProvider(account, base_url=base_url, token_uri=token_uri, clock=Clock())
        try:
            return await provider.send(a_message())
        finally:
            await provider.aclose()

    no_tokens = run(lambda: go(f"http://127.0.0.1:{port}/token", f"http://127.0.0.1:{port}"))
    assert (no_tokens.status, no_tokens.reason, no_tokens.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, False)
    assert "token endpoint" in no_tokens.detail
    google = Google(Clock(), send_answer=lambda _: None)   # FCM hangs up after reading the request
    dropped, _ = send_one(google)
    assert (dropped.status, dropped.reason, dropped.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, True)


# ---- settings ----------------------------------------------------------------------------------------

def test_make_provider_takes_the_project_and_token_uri_from_the_service_account() -> None:
    async def go() -> None:
        provider = fcm.make_provider({}, {"service_account_json": service_account_json()})
        assert (provider.key, provider.channel, provider.project_id) == ("fcm", "push", PROJECT)
        assert provider.tokens.token_uri == "https://oauth2.googleapis.com/token"
        await provider.aclose()
        provider = fcm.make_provider({"project_id": "other", "token_uri": "https://t.example/token"},
                                     {"service_account_json": service_account_json(token_uri=None)})
        assert (provider.project_id, provider.tokens.token_uri) == ("other", "https://t.example/token")
        await provider.aclose()
    run(go)


EC_PEM = ec.generate_private_key(ec.SECP256R1()).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()


@pytest.mark.parametrize(("config", "secrets", "match"), [
    ({}, {}, "service_account_json"),
    ({}, {"service_account_json": "{not json"}, "not a service account key file"),
    ({}, {"service_account_json": json.dumps({"type": "authorized_user"})}, "not a service account key file"),
    ({}, {"service_account_json": service_account_json(client_email=None)}, "client_email"),
    ({}, {"service_account_json": service_account_json(private_key="-----BEGIN PRIVATE KEY-----\nAA\n-----END "
                                                                    "PRIVATE KEY-----")}, "not a PEM private key"),
    ({}, {"service_account_json": service_account_json(private_key=EC_PEM)}, "RSA"),
    ({}, {"service_account_json": service_account_json(project_id=None)}, "project_id"),
    ({"base_url": "fcm.googleapis.com"}, {"service_account_json": service_account_json()}, "https://"),
    ({"token_uri": "oauth2.googleapis.com"}, {"service_account_json": service_account_json()}, "https://"),
    ({"projectId": "x"}, {"service_account_json": service_account_json()}, "unknown settings projectId"),
])
def test_make_provider_says_what_to_fix(config: dict[str, Any], secrets: dict[str, str], match: str) -> None:
    with pytest.raises(ProviderConfigError, match=match) as caught:
        fcm.make_provider(config, secrets)
    assert "PRIVATE KEY" not in str(caught.value)
