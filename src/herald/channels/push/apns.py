"""Apple Push Notification service: one HTTP/2 POST per message with token-based (JWT)
authentication. Pure translation between `herald.domain.delivery` and APNs' wire format; no
database, no logging.

Settings (stored provider kind "apns"):
  config   team_id      the 10-character Team ID of the Apple developer account
           key_id       the 10-character Key ID of the APNs authentication key (.p8)
           topic        the app's bundle ID (apns-topic)
           environment  "production" (default, api.push.apple.com) or "sandbox"
                        (api.sandbox.push.apple.com, for development builds of the app)
           base_url     overrides the environment's host (a local peer in tests)
  secrets  signing_key  the contents of the AuthKey_<KeyID>.p8 file (PEM, EC P-256)

The message: `OutboundMessage.to` is the device token (hex). APNs sends no delivery callbacks; our
id travels twice: as `apns-id` (a UUID derived from it, see `apns_id_for`; APNs echoes it and it is
what Apple's delivery log is searched by) and as `message_id` in the payload for the app.

Sources (checked, not guessed), Apple developer documentation, UserNotifications
(developer.apple.com/documentation/usernotifications/<page>):
  * "Sending notification requests to APNs" (sending-notification-requests-to-apns):
    `POST /3/device/<device token>` over HTTP/2 to api.push.apple.com or
    api.sandbox.push.apple.com; headers `authorization: bearer <JWT>`, `apns-push-type` (alert for
    a visible notification), `apns-id` (a canonical UUID; APNs creates one if absent),
    `apns-expiration` (Unix seconds; 0 = deliver once, never store), `apns-priority` (10 at once,
    5 power-considerate, 1 prioritise power), `apns-topic` (the bundle ID), `apns-collapse-id` (at
    most 64 bytes); payload {"aps": {"alert": {"title", "body"}}} plus custom keys outside "aps",
    at most 4096 bytes.
  * "Establishing a token-based connection to APNs" (establishing-a-token-based-connection-to-apns):
    the JWT header {alg: ES256, kid: Key ID}, claims {iss: Team ID, iat}; refresh it no more than
    once every 20 minutes and no less than once every 60 (APNs rejects a token older than an hour
    with ExpiredProviderToken, and answers 429 TooManyProviderTokenUpdates to a sender that changes
    it too often). We renew every 50 minutes.
  * "Handling notification responses from APNs" (handling-notification-responses-from-apns):
    200 with `apns-id` on success; on error a JSON body {"reason": ...} (410 adds "timestamp"):
    400 BadDeviceToken, DeviceTokenNotForTopic, MissingDeviceToken, BadTopic, TopicDisallowed,
    BadCollapseId, BadExpirationDate, BadMessageId, BadPriority, PayloadEmpty, ...; 403
    BadCertificate, ExpiredProviderToken, InvalidProviderToken, MissingProviderToken,
    UnrelatedKeyIdInToken, BadEnvironmentKeyInToken, Forbidden; 404 BadPath; 405
    MethodNotAllowed; 410 Unregistered, ExpiredToken; 413 PayloadTooLarge; 429 TooManyRequests,
    TooManyProviderTokenUpdates; 500 InternalServerError; 503 ServiceUnavailable, Shutdown.

BadDeviceToken also answers a token of the other environment (a development build's token sent to
production): the message fails as INVALID_ADDRESS either way; a seller who sees every token fail
this way has the wrong `environment`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.channels.config import only_known
from herald.channels.http import error_detail, json_object, retry_after_seconds, text_or_none, transport_failure
from herald.channels.push.common import (
    Json,
    apns_priority,
    base_url_setting,
    collapse_key_of,
    expiry_time,
    needed_text,
        optional_text,
    push_of,
    urgency_of,
)
from herald.domain.clock import Clock, SystemClock
from herald.domain.delivery import (
    Channel,
    FailureReason,
    OutboundMessage,
    ProviderConfigError,
    PushContent,
    SendResult,
    UnsupportedFeature,
)

KEY = "apns"
BASE_URLS = {"production": "https://api.push.apple.com", "sandbox": "https://api.sandbox.push.apple.com"}
TOKEN_LIFETIME = timedelta(minutes=50)     # Apple: renew every 20-60 minutes
APPLE_ID = re.compile(r"^[A-Z0-9]{10}$")   # Team ID and Key ID
DEVICE_TOKEN = re.compile(r"^(?:[0-9a-fA-F]{2}){16,200}$")
MAX_COLLAPSE_ID = 64
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_APNS_ID_NAMESPACE = uuid.UUID("6f1c2a8e-5b0d-4d7e-9f4a-3c8b1e2d7a90")   # Herald's, for uuid5 fallbacks

# Refusals by `reason`, where the status code alone does not say enough.
_ADDRESS_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic", "MissingDeviceToken", "Unregistered",
                              "ExpiredToken"})
_SETTINGS_REASONS = frozenset({"BadTopic", "MissingTopic", "TopicDisallowed"})


def apns_id_for(message_id: str) -> str:
    """The `apns-id` for our message: a Herald id "<prefix>_<ULID>" is 128 bits, read as a UUID
    (so the apns-id converts back to the id); any other id maps to a name-based UUID (version 5)."""
    _, _, ulid = message_id.rpartition("_")
    ulid = ulid.upper()
    if len(ulid) == 26 and ulid[0] <= "7" and all(c in _CROCKFORD for c in ulid):
        value = 0
        for char in ulid:
            value = value * 32 + _CROCKFORD.index(char)
        return str(uuid.UUID(int=value))
    return str(uuid.uuid5(_APNS_ID_NAMESPACE, message_id))


def load_signing_key(pem: str) -> ec.EllipticCurvePrivateKey:
    """The .p8 key; ProviderConfigError saying what is wrong (never echoing the key)."""
    try:
        key = serialization.load_pem_private_key(pem.strip().encode(), password=None)
    except (ValueError, TypeError):
        raise ProviderConfigError("apns: `signing_key` is not the PEM contents of an AuthKey_<KeyID>.p8 file") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ProviderConfigError("apns: `signing_key` must be an EC P-256 key (an APNs .p8 authentication key)")
    return key


def http2_client() -> httpx.AsyncClient:
    """APNs speaks HTTP/2 only: streams multiplex on a few long-lived connections, as Apple asks
    ("keep your connections with APNs open across multiple notifications")."""
    return httpx.AsyncClient(http2=True, timeout=httpx.Timeout(30.0, connect=10.0, pool=10.0),
                             limits=httpx.Limits(max_connections=8, max_keepalive_connections=8))


class ApnsProvider:
    """Sends one message per POST; one provider token is shared by all sends and renewed every
    TOKEN_LIFETIME (or after APNs says ExpiredProviderToken)."""

    key = KEY
    channel: Channel = "push"

    def __init__(self, team_id: str, key_id: str, topic: str, signing_key: str, *,
                 base_url: str = BASE_URLS["production"], token_lifetime: timedelta = TOKEN_LIFETIME,
                 client: httpx.AsyncClient | None = None, clock: Clock | None = None) -> None:
        for name, value in (("team_id", team_id), ("key_id", key_id)):
            if not APPLE_ID.match(value):
                raise ProviderConfigError(f"apns: `{name}` must be the 10-character ID shown in the Apple developer "
                                          f"account (A-Z, 0-9), not {value!r}")
        if not topic.strip():
            raise ProviderConfigError("apns: `topic` (the app's bundle ID) is empty")
        if not timedelta(minutes=20) <= token_lifetime <= timedelta(minutes=60):
            raise ProviderConfigError("apns: the provider token must be renewed every 20 to 60 minutes")
        self.team_id, self.key_id, self.topic = team_id, key_id, topic.strip()
        self._key = load_signing_key(signing_key)
        self._base_url = base_url_setting(base_url, KEY)
        self._lifetime = token_lifetime
        self._token: tuple[str, datetime] | None = None   # (JWT, issued at)
        self._owns_client = client is None
        self._client = client or http2_client()
        self._clock = clock or SystemClock()

    async def send(self, message: OutboundMessage) -> SendResult:
        push = push_of(message, "APNs")
        device = message.to.strip()
        if not DEVICE_TOKEN.match(device):
            return SendResult.failed(message.id, FailureReason.INVALID_ADDRESS,
                                     f"{device[:80]!r} is not an APNs device token (hex)",
                                     provider_code="invalid_device_token")
        now = self._clock.now()
        token = self.provider_token(now)
        headers = {"authorization": f"bearer {token}", **request_headers(message, push, self.topic, now)}
        try:
            response = await self._client.post(f"{self._base_url}/3/device/{device}",
                                               content=payload_of(message, push), headers=headers)
        except httpx.HTTPError as exc:
            return transport_failure(message.id, exc, "APNs")
        result = send_outcome(message.id, response, now)
        if result.provider_code == "ExpiredProviderToken" and self._token is not None and self._token[0] == token:
            self._token = None   # renewed on the next send
        return result

    def provider_token(self, now: datetime) -> str:
        """The ES256 JWT APNs authenticates us by; reused until it is TOKEN_LIFETIME old."""
        if self._token is None or not timedelta(0) <= now - self._token[1] < self._lifetime:
            token = jwt.encode({"iss": self.team_id, "iat": int(now.timestamp())}, self._key, algorithm="ES256",
                               headers={"kid": self.key_id})
            self._token = (token, now)
        return self._token[0]

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def request_headers(message: OutboundMessage, push: PushContent, topic: str, now: datetime) -> dict[str, str]:
    headers = {"apns-id": apns_id_for(message.id), "apns-push-type": "alert",
               "apns-priority": apns_priority(urgency_of(message)), "apns-topic": topic,
               "apns-expiration": str(expiry_time(now, push.ttl_seconds))}
    collapse_id = collapse_key_of(message)
    if collapse_id is not None:
        if len(collapse_id.encode()) > MAX_COLLAPSE_ID:
            raise UnsupportedFeature(f"message {message.id}: an APNs collapse id is at most {MAX_COLLAPSE_ID} bytes")
        headers["apns-collapse-id"] = collapse_id
    return headers


def payload_of(message: OutboundMessage, push: PushContent) -> bytes:
    """{"aps": {"alert": {title, body}}} and, outside "aps", the message's data, url, icon and our
    message_id (ours win over data keys of the same name)."""
    payload: Json = dict(push.data)
    if push.url:
        payload["url"] = push.url
    if push.icon:
        payload["icon"] = push.icon
    payload["message_id"] = message.id
    payload["aps"] = {"alert": {"title": push.title, "body": push.body}}
    return orjson.dumps(payload)


def send_outcome(message_id: str, response: httpx.Response, now: datetime) -> SendResult:
    status = response.status_code
    if status == 200:
        return SendResult.accepted(message_id, response.headers.get("apns-id") or None)
    reason = text_or_none((json_object(response.content) or {}).get("reason"))
    code = reason or str(status)
    detail = error_detail("APNs", status, reason or response.text.strip()[:300])
    if status == 410 or reason in _ADDRESS_REASONS:
        return SendResult.failed(message_id, FailureReason.INVALID_ADDRESS, detail, provider_code=code)
    if status == 403 or reason in _SETTINGS_REASONS:
        # Our key, team, topic or environment: retried, so messages wait while the settings are fixed.
        return SendResult.retry(message_id, FailureReason.AUTH_FAILED, detail, provider_code=code)
    retry_after = retry_after_seconds(response.headers.get("retry-after"), now)
    if status == 429:
        return SendResult.retry(message_id, FailureReason.THROTTLED, detail, provider_code=code,
                                retry_after=retry_after)
    if status >= 500:
        return SendResult.retry(message_id, FailureReason.PROVIDER_DOWN, detail, provider_code=code,
                                retry_after=retry_after)
    if status in (400, 413):
        return SendResult.failed(message_id, FailureReason.CONTENT_REJECTED, detail, provider_code=code)
    return SendResult.failed(message_id, FailureReason.UNKNOWN, detail, provider_code=code)


# ---- settings ----------------------------------------------------------------------------------------

def make_provider(config: Mapping[str, Any], secrets: Mapping[str, str]) -> ApnsProvider:
    """The provider for stored settings (see the module docstring); ProviderConfigError naming what
    to fix."""
    only_known(config, {"team_id", "key_id", "topic", "environment", "base_url"}, KEY)
    environment = optional_text(config, "environment", KEY) or "production"
    if environment not in BASE_URLS:
        raise ProviderConfigError(f"apns: `environment` must be production or sandbox, not {environment!r}")
    return ApnsProvider(
        needed_text(config, "team_id", KEY, "the Team ID of the Apple developer account"),
        needed_text(config, "key_id", KEY, "the Key ID of the APNs authentication key"),
        needed_text(config, "topic", KEY, "the app's bundle ID"),
        needed_text(secrets, "signing_key", KEY, "the contents of the AuthKey_<KeyID>.p8 file"),
        base_url=optional_text(config, "base_url", KEY) or BASE_URLS[environment])
