"""Web Push: one encrypted, VAPID-signed POST to the browser's push service per message. Pure
translation between `herald.domain.delivery` and the Web Push wire format; no database, no logging.

Settings (stored provider kind "webpush"):
  config   subject              who runs this sender: "mailto:ops@shop.example" or "https://shop.example"
                                (RFC 8292 section 2.1 `sub`; push services contact it about problems)
           token_lifetime_hours how long one VAPID token is valid, 1-24 (default 12)
  secrets  vapid_private_key    the VAPID key pair's private key: PEM (EC P-256), or base64url of the
                                32-byte private value (what the `web-push` tools print). The site
                                subscribes with the matching public key (`application_server_key`).

The message: `OutboundMessage.to` is the subscription's endpoint URL and `PushContent.keys` its
`p256dh` and `auth` values (PushSubscription.toJSON() in the browser). The service worker receives
the JSON {title, body, url, icon, data, message_id}; url and icon only when set, message_id is our
id (`OutboundMessage.id`), which is how a click or a "shown" report from the page finds the message:
push services themselves send no delivery callbacks, so there is no callback parser.

Sources (checked, not guessed; the RFCs at rfc-editor.org/rfc/rfc<number>):
  * RFC 8030 "Generic Event Delivery Using HTTP Push": POST to the push resource; `TTL` is required
    (5.2), `Urgency` very-low|low|normal|high (5.3), `Topic` at most 32 characters of the URL and
    filename safe base64 alphabet replaces a pending message with the same topic (5.4); 201 Created
    with a `Location` naming the push message resource (5); 413 for a payload the service will not
    take (7.2); 429 when the sender is rate limited (8.4); a subscription that expired or was
    removed answers 404 Not Found or 410 Gone (Mozilla autopush and FCM both document 404/410 as
    "delete the subscription").
  * RFC 8291 "Message Encryption for Web Push": aes128gcm content coding (RFC 8188) with an
    ephemeral ECDH P-256 key of ours, the subscription's p256dh (65-byte uncompressed point) and
    16-byte auth secret; `Content-Encoding: aes128gcm`; "an application server MUST encrypt a push
    message with a single record", rs 4096, so at most 3993 octets of plaintext (section 4).
    Appendix A's example is reproduced byte for byte in the tests. Encryption: `http_ece`.
  * RFC 8292 "VAPID": `Authorization: vapid t=<JWT>, k=<base64url uncompressed public key>`; the
    JWT is ES256 with `aud` = the origin of the push resource, `exp` at most 24 hours ahead and
    `sub` a mailto: or https: URI (sections 2, 2.1, 3). Signing: PyJWT.

A 401/403 says the push service refused our VAPID token or key (also what a subscription made for
another VAPID key gets): AUTH_FAILED, retried so messages wait while the settings are fixed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import http_ece  # type: ignore[import-untyped]
import httpx
import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from herald.channels.config import only_known
from herald.channels.http import (
    default_client,
    error_detail,
    other_error_outcome,
    retry_after_seconds,
    transport_failure,
)
from herald.channels.push.common import (
    WEB_PUSH_TOPIC,
    Json,
    b64url_decode,
    b64url_encode,
    collapse_key_of,
    needed_text,
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

KEY = "webpush"
RECORD_SIZE = 4096           # RFC 8291 section 4: one record of at most 4096 octets
MAX_PLAINTEXT = 3993         # 4096 - 86 (header with a 65-byte key id) - 16 (tag) - 1 (delimiter)
MAX_TOKEN_LIFETIME = timedelta(hours=24)   # RFC 8292 section 2: exp no more than 24 hours ahead
DEFAULT_TOKEN_LIFETIME = timedelta(hours=12)
MAX_ENDPOINT_LENGTH = 2000   # push_subscriptions.token


class InvalidSubscription(ValueError):
    """The subscription (endpoint or keys) cannot be sent to: the address is unusable."""


# ---- keys -------------------------------------------------------------------------------------------

def load_vapid_key(secret: str) -> ec.EllipticCurvePrivateKey:
    """The VAPID private key from PEM or base64url (32-byte raw value, or DER); ProviderConfigError
    saying what is wrong (never echoing the secret)."""
    text = secret.strip()
    try:
        if text.startswith("-----BEGIN"):
            key: object = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            raw = b64url_decode(text)
            key = (ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1()) if len(raw) == 32
                   else serialization.load_der_private_key(raw, password=None))
    except (ValueError, TypeError):
        raise ProviderConfigError("webpush: `vapid_private_key` is neither a PEM private key nor the base64url "
                                  "32-byte private value of a P-256 key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ProviderConfigError("webpush: `vapid_private_key` must be an EC key on the P-256 curve (RFC 8292)")
    return key


def application_server_key(key: ec.EllipticCurvePrivateKey) -> str:
    """The public key as base64url of its uncompressed point: the `k=` of the Authorization header
    and the `applicationServerKey` the site passes to pushManager.subscribe()."""
    return b64url_encode(key.public_key().public_bytes(serialization.Encoding.X962,
                                                       serialization.PublicFormat.UncompressedPoint))


def new_vapid_key() -> tuple[str, str]:
    """A fresh VAPID key pair: (the `vapid_private_key` secret as base64url, the public
    applicationServerKey)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return b64url_encode(key.private_numbers().private_value.to_bytes(32, "big")), application_server_key(key)


# ---- the subscription ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    origin: str   # the VAPID `aud`


def parse_endpoint(url: str, *, allow_http: bool = False) -> Endpoint:
    """The push resource URL of a subscription; InvalidSubscription for anything that is not an
    absolute https URL (http only when `allow_http`, for local test peers)."""
    if not url or len(url) > MAX_ENDPOINT_LENGTH or any(c.isspace() for c in url):
        raise InvalidSubscription("the subscription endpoint is empty, too long or contains spaces")
    parts = urlsplit(url)
    schemes = ("https", "http") if allow_http else ("https",)
    if parts.scheme not in schemes or not parts.hostname or parts.username is not None or parts.fragment:
        raise InvalidSubscription(f"the subscription endpoint {url[:100]!r} is not an https URL of a push service")
    default_port = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port
    except ValueError:
        raise InvalidSubscription(f"the subscription endpoint {url[:100]!r} has an invalid port") from None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    origin = f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, default_port) else "")
    return Endpoint(url, origin)


def subscription_keys(keys: Mapping[str, str]) -> tuple[bytes, bytes]:
    """(p256dh as a 65-byte uncompressed P-256 point, the 16-byte auth secret)."""
    try:
        p256dh = b64url_decode(keys.get("p256dh", ""))
        auth = b64url_decode(keys.get("auth", ""))
    except ValueError:
        raise InvalidSubscription("the subscription's p256dh or auth key is not base64url") from None
    if len(auth) != 16:
        raise InvalidSubscription("the subscription's auth secret must be 16 bytes (RFC 8291 section 3.2)")
    try:
        if len(p256dh) != 65:
            raise ValueError
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), p256dh)
    except ValueError:
        raise InvalidSubscription("the subscription's p256dh key is not an uncompressed P-256 point") from None
    return p256dh, auth


def encrypt_payload(plaintext: bytes, keys: Mapping[str, str], *, salt: bytes | None = None,
                    sender_key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """The RFC 8291 aes128gcm body for one subscription: a fresh salt and ephemeral key per message
    unless given (the RFC's example fixes both). InvalidSubscription for unusable keys; ValueError
    when the plaintext does not fit one record."""
    p256dh, auth = subscription_keys(keys)
    if len(plaintext) > MAX_PLAINTEXT:
        raise ValueError(f"the push payload is {len(plaintext)} bytes; Web Push carries at most {MAX_PLAINTEXT}")
    body: bytes = http_ece.encrypt(plaintext, salt=salt or os.urandom(16),
                                   private_key=sender_key or ec.generate_private_key(ec.SECP256R1()),
                                   dh=p256dh, auth_secret=auth, version="aes128gcm", rs=RECORD_SIZE)
    return body


def payload_of(message: OutboundMessage, push: PushContent) -> bytes:
    """What the service worker's `push` event reads (event.data.json())."""
    payload: Json = {"title": push.title, "body": push.body}
    if push.url:
        payload["url"] = push.url
    if push.icon:
        payload["icon"] = push.icon
    payload["data"] = dict(push.data)
    payload["message_id"] = message.id
    return orjson.dumps(payload)


# ---- sending ---------------------------------------------------------------------------------------

class WebPushProvider:
    """Sends one message per POST to the subscription's endpoint; VAPID tokens are cached per push
    service origin for half their lifetime."""

    key = KEY
    channel: Channel = "push"

    def __init__(self, subject: str, vapid_private_key: str, *, token_lifetime: timedelta = DEFAULT_TOKEN_LIFETIME,
                 client: httpx.AsyncClient | None = None, clock: Clock | None = None,
                 allow_http: bool = False) -> None:
        if not subject.startswith(("mailto:", "https://")) or len(subject) < len("mailto:x"):
            raise ProviderConfigError(f"webpush: `subject` {subject!r} must be a mailto: address or an https: URL "
                                      "where the push service can reach you (RFC 8292 section 2.1)")
        if not timedelta(hours=1) <= token_lifetime <= MAX_TOKEN_LIFETIME:
            raise ProviderConfigError("webpush: the VAPID token lifetime must be between 1 and 24 hours")
        self.subject = subject
        self._key = load_vapid_key(vapid_private_key)
        self.public_key = application_server_key(self._key)
        self._lifetime = token_lifetime
        self._tokens: dict[str, tuple[str, datetime]] = {}   # origin -> (JWT, expires at)
        self._owns_client = client is None
        self._client = client or default_client()
        self._clock = clock or SystemClock()
        self._allow_http = allow_http

    async def send(self, message: OutboundMessage) -> SendResult:
        push = push_of(message, "Web Push")
        headers = self._delivery_headers(message, push)
        try:
            endpoint = parse_endpoint(message.to, allow_http=self._allow_http)
            body = encrypt_payload(payload_of(message, push), push.keys)
        except InvalidSubscription as exc:
            return SendResult.failed(message.id, FailureReason.INVALID_ADDRESS, str(exc),
                                     provider_code="invalid_subscription")
        except ValueError as exc:
            return SendResult.failed(message.id, FailureReason.CONTENT_REJECTED, str(exc),
                                     provider_code="payload_too_large")
        now = self._clock.now()
        headers["Authorization"] = self.authorization(endpoint.origin, now)
        try:
            response = await self._client.post(endpoint.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return transport_failure(message.id, exc, f"the push service at {endpoint.origin}")
        return send_outcome(message.id, response, now, endpoint.origin)

    def authorization(self, origin: str, now: datetime) -> str:
        """`vapid t=<JWT>, k=<public key>` for the push service at `origin` (RFC 8292 section 3)."""
        cached = self._tokens.get(origin)
        if cached is None or cached[1] - now < self._lifetime / 2:
            expires = now + self._lifetime
            token = jwt.encode({"aud": origin, "exp": int(expires.timestamp()), "sub": self.subject}, self._key,
                               algorithm="ES256", headers={"typ": "JWT"})
            if len(self._tokens) >= 256:   # a handful of push services in practice; never let junk grow it
                self._tokens.clear()
            cached = self._tokens[origin] = (token, expires)
        return f"vapid t={cached[0]}, k={self.public_key}"

    @staticmethod
    def _delivery_headers(message: OutboundMessage, push: PushContent) -> dict[str, str]:
        headers = {"TTL": str(max(0, push.ttl_seconds)), "Urgency": urgency_of(message),
                   "Content-Encoding": "aes128gcm", "Content-Type": "application/octet-stream"}
        topic = collapse_key_of(message)
        if topic is not None:
            if not WEB_PUSH_TOPIC.match(topic):
                raise UnsupportedFeature(f"message {message.id}: a Web Push Topic (collapse_key) is at most 32 "
                                         f"characters of A-Z a-z 0-9 - _ (RFC 8030 section 5.4), not {topic!r}")
            headers["Topic"] = topic
        return headers

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def send_outcome(message_id: str, response: httpx.Response, now: datetime, origin: str) -> SendResult:
    status = response.status_code
    if 200 <= status < 300:
        return SendResult.accepted(message_id, response.headers.get("location") or None)
    detail = error_detail(f"the push service at {origin}", status, response.text.strip()[:300])
    code = str(status)
    if status in (404, 410):
        # The subscription expired or the user revoked it: it will never work again.
        return SendResult.failed(message_id, FailureReason.INVALID_ADDRESS, detail, provider_code=code)
    if status == 429:
        return SendResult.retry(message_id, FailureReason.THROTTLED, detail, provider_code=code,
                                retry_after=retry_after_seconds(response.headers.get("retry-after"), now))
    if status in (401, 403):
        return SendResult.retry(message_id, FailureReason.AUTH_FAILED, detail, provider_code=code)
    return other_error_outcome(message_id, response, now, detail, FailureReason.CONTENT_REJECTED)


# ---- settings ----------------------------------------------------------------------------------------

def make_provider(config: Mapping[str, Any], secrets: Mapping[str, str]) -> WebPushProvider:
    """The provider for stored settings (see the module docstring); ProviderConfigError naming what
    to fix."""
    only_known(config, {"subject", "token_lifetime_hours"}, KEY)
    hours = config.get("token_lifetime_hours", DEFAULT_TOKEN_LIFETIME / timedelta(hours=1))
    if isinstance(hours, bool) or not isinstance(hours, int | float):
        raise ProviderConfigError("webpush: `token_lifetime_hours` must be a number of hours between 1 and 24")
    subject = needed_text(config, "subject", KEY, "a mailto: address or https: URL the push services can "
                                                  "contact you at")
    private_key = needed_text(secrets, "vapid_private_key", KEY, "the VAPID private key (PEM, or base64url)")
    return WebPushProvider(subject, private_key, token_lifetime=timedelta(hours=hours))
