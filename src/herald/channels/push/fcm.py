"""Firebase Cloud Messaging, HTTP v1 API: one `messages:send` per message, authorised by an OAuth2
access token the service account obtains with a signed JWT. Pure translation between
`herald.domain.delivery` and FCM's wire format; no database, no logging.

Settings (stored provider kind "fcm"):
  config   project_id   the Firebase project (default: the service account's `project_id`)
           base_url     default https://fcm.googleapis.com (a local peer in tests)
           token_uri    the OAuth2 token endpoint (default: the service account's `token_uri`,
                        else https://oauth2.googleapis.com/token)
  secrets  service_account_json   the service account key file as downloaded from the Firebase
                        console (Project settings > Service accounts > Generate new private key)

The message: `OutboundMessage.to` is the app's FCM registration token. FCM sends no delivery
callbacks; our id travels in `data.message_id` (and the link in `data.url`), so the app can report
opens with it. Urgency and collapse_key hints as in common.py; one collapse_key serves Android, APNs
and Web Push at once, so it must fit the strictest rule (a Web Push Topic).

A 401/403 (our credentials, or SENDER_ID_MISMATCH: a token of another Firebase project) is
AUTH_FAILED and retried, so messages wait while the settings are fixed.

Sources (checked, not guessed): firebase.google.com/docs/reference/fcm/rest/v1/projects.messages,
firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode, firebase.google.com/docs/cloud-messaging/error-codes,
developers.google.com/identity/protocols/oauth2/service-account:
  * `POST https://fcm.googleapis.com/v1/projects/{project_id}/messages:send` with
    `Authorization: Bearer <access token>` and {"message": Message}; 200 answers the sent Message
    whose `name` is "projects/*/messages/{message_id}" (reference: projects.messages.send and
    the Message resource). Message fields used: token; notification {title, body}; data (string
    values only); android {priority "NORMAL"|"HIGH", ttl as a Duration string "<seconds>s",
    collapse_key}; apns {headers}; webpush {headers, notification, fcm_options.link (HTTPS only)}.
  * Errors (reference: ErrorCode, and "FCM error codes"): a google.rpc error object
    {"error": {code, message, status, details: [{"@type": "...FcmError", "errorCode": ...},
    {"@type": "...BadRequest", "fieldViolations": [{field, description}]}]}}.
    UNREGISTERED (404) the token is no longer valid (a 404 without FCM's error body, say from a
    wrong base_url, retires nothing: it fails as UNKNOWN); INVALID_ARGUMENT (400) any invalid
    parameter, the registration token among them ("The registration token is not a valid FCM
    registration token"); SENDER_ID_MISMATCH (403) the token belongs to another sender;
    QUOTA_EXCEEDED (429) and UNAVAILABLE (503) honour Retry-After; INTERNAL (500);
    THIRD_PARTY_AUTH_ERROR (401) the APNs certificate or web push auth key was refused.
  * OAuth2 for service accounts (Google Identity "Using OAuth 2.0 for Server to Server
    Applications", RFC 7523): an RS256 JWT {iss: client_email, scope, aud: token_uri, iat, exp <=
    iat + 1 hour}, header kid = private_key_id, POSTed as
    grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>; the answer is
    {access_token, expires_in, token_type: "Bearer"}, errors {error, error_description}. Scope:
    https://www.googleapis.com/auth/firebase.messaging. Tokens are cached until 5 minutes before
    they expire; a 401 from FCM drops the cached token so the next send fetches a new one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from herald.channels.config import only_known
from herald.channels.http import (
    DETAIL_LIMIT,
    default_client,
    error_detail,
    json_object,
    retry_after_seconds,
    text_or_none,
    transport_failure,
)
from herald.channels.push.common import (
    WEB_PUSH_TOPIC,
    Json,
    apns_priority,
    base_url_setting,
    collapse_key_of,
    expiry_time,
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

KEY = "fcm"
DEFAULT_BASE_URL = "https://fcm.googleapis.com"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105 (a URL, not a secret)
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = timedelta(hours=1)    # Google's maximum for the assertion's exp - iat
TOKEN_MARGIN = timedelta(minutes=5)        # refresh this long before the access token expires
MESSAGE_ID_KEY = "message_id"              # our id, in `data`


# ---- the service account and its access tokens ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ServiceAccount:
    client_email: str
    private_key: rsa.RSAPrivateKey
    private_key_id: str | None
    project_id: str | None
    token_uri: str | None


def load_service_account(text: str) -> ServiceAccount:
    """The service account key file (JSON); ProviderConfigError naming what is missing (never
    echoing the key)."""
    info = json_object(text.encode())
    if info is None or info.get("type") != "service_account":
        raise ProviderConfigError("fcm: `service_account_json` is not a service account key file (JSON with "
                                  "\"type\": \"service_account\"); generate one in the Firebase console")
    email, pem = text_or_none(info.get("client_email")), text_or_none(info.get("private_key"))
    if email is None or pem is None:
        raise ProviderConfigError("fcm: the service account key file lacks `client_email` or `private_key`")
    try:
        key = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ProviderConfigError("fcm: the service account's `private_key` is not a PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ProviderConfigError("fcm: the service account's `private_key` must be an RSA key (RS256)")
    return ServiceAccount(email, key, text_or_none(info.get("private_key_id")), text_or_none(info.get("project_id")),
                          text_or_none(info.get("token_uri")))


class TokenUnavailable(Exception):
    """No access token now; the send is retried for `reason`."""

    def __init__(self, reason: FailureReason, detail: str, provider_code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.provider_code, self.retry_after = reason, detail, provider_code, retry_after


class AccessTokens:
    """OAuth2 access tokens for one service account, fetched with a signed JWT assertion and cached
    until TOKEN_MARGIN before they expire. Concurrent sends share one fetch."""

    def __init__(self, account: ServiceAccount, token_uri: str, client: httpx.AsyncClient, clock: Clock) -> None:
        self.account = account
        self.token_uri = token_uri
        self._client = client
        self._clock = clock
        self._token: tuple[str, datetime] | None = None   # (access token, refresh after)
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        """A valid access token; TokenUnavailable when the token endpoint refused or failed."""
        current = self._current()
        if current is not None:
            return current
        async with self._lock:
            current = self._current()   # another send may have fetched it while we waited
            if current is None:
                self._token = await self._fetch(self._clock.now())
                current = self._token[0]
            return current

    def forget(self, token: str) -> None:
        """Drop `token` (FCM said 401): the next send fetches a new one."""
        if self._token is not None and self._token[0] == token:
            self._token = None

    def _current(self) -> str | None:
        if self._token is not None and self._clock.now() < self._token[1]:
            return self._token[0]
        return None

    def assertion(self, now: datetime) -> str:
        issued = int(now.timestamp())
        claims = {"iss": self.account.client_email, "scope": SCOPE, "aud": self.token_uri, "iat": issued,
                  "exp": issued + int(ASSERTION_LIFETIME.total_seconds())}
        headers = {"kid": self.account.private_key_id} if self.account.private_key_id else None
        return jwt.encode(claims, self.account.private_key, algorithm="RS256", headers=headers)

    async def _fetch(self, now: datetime) -> tuple[str, datetime]:
        form = {"grant_type": JWT_BEARER, "assertion": self.assertion(now)}
        try:
            response = await self._client.post(self.token_uri, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise TokenUnavailable(FailureReason.PROVIDER_DOWN, f"no answer from the OAuth2 token endpoint "
                                   f"{self.token_uri} ({type(exc).__name__}: {exc})"[:DETAIL_LIMIT]) from None
        answer = json_object(response.content) or {}
        if response.status_code == 200:
            token = text_or_none(answer.get("access_token"))
            lifetime = answer.get("expires_in", 3600)
            if token is not None and isinstance(lifetime, int) and not isinstance(lifetime, bool):
                refresh_at = now + max(timedelta(seconds=lifetime) - TOKEN_MARGIN, timedelta(seconds=lifetime) / 2)
                return token, refresh_at
            raise TokenUnavailable(FailureReason.PROVIDER_DOWN, "the OAuth2 token endpoint answered 200 without an "
                                   "access_token and expires_in")
        raise _token_refusal(response, answer, now)


def _token_refusal(response: httpx.Response, answer: Json, now: datetime) -> TokenUnavailable:
    status = response.status_code
    error = text_or_none(answer.get("error"))
    said = ": ".join(s for s in (error, text_or_none(answer.get("error_description"))) if s)
    detail = error_detail("the OAuth2 token endpoint", status, said or response.text.strip()[:300])
    retry_after = retry_after_seconds(response.headers.get("retry-after"), now)
    if status == 429:
        return TokenUnavailable(FailureReason.THROTTLED, detail, error or str(status), retry_after)
    if status >= 500:
        return TokenUnavailable(FailureReason.PROVIDER_DOWN, detail, error or str(status), retry_after)
    # invalid_grant (revoked key, clock skew), invalid_client, unauthorized_client: fix the settings.
    return TokenUnavailable(FailureReason.AUTH_FAILED, detail, error or str(status))


# ---- sending ---------------------------------------------------------------------------------------

class FcmProvider:
    """Sends one message per `messages:send` call."""

    key = KEY
    channel: Channel = "push"

    def __init__(self, account: ServiceAccount, *, project_id: str | None = None, base_url: str = DEFAULT_BASE_URL,
                 token_uri: str | None = None, client: httpx.AsyncClient | None = None,
                 clock: Clock | None = None) -> None:
        project = project_id or account.project_id
        if not project:
            raise ProviderConfigError("fcm: no `project_id`: set it, or use a service account key file that names it")
        self.project_id = project
        self._url = f"{base_url_setting(base_url, KEY)}/v1/projects/{quote(project, safe='')}/messages:send"
        self._owns_client = client is None
        self._client = client or default_client()
        self._clock = clock or SystemClock()
        self.tokens = AccessTokens(account, token_uri or account.token_uri or DEFAULT_TOKEN_URI, self._client,
                                   self._clock)

    async def send(self, message: OutboundMessage) -> SendResult:
        push = push_of(message, "FCM")
        if not message.to.strip():
            return SendResult.failed(message.id, FailureReason.INVALID_ADDRESS, "no FCM registration token",
                                     provider_code="missing_token")
        body = message_body(message, push, self._clock.now())
        try:
            token = await self.tokens.get()
        except TokenUnavailable as exc:
            return SendResult.retry(message.id, exc.reason, exc.detail, provider_code=exc.provider_code,
                                    retry_after=exc.retry_after)
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json; charset=UTF-8"}
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return transport_failure(message.id, exc, "FCM")
        if response.status_code == 401:
            self.tokens.forget(token)
        return send_outcome(message.id, response, self._clock.now())

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def message_body(message: OutboundMessage, push: PushContent, now: datetime) -> bytes:
    """{"message": Message} for one registration token (see the module docstring)."""
    urgency = urgency_of(message)
    ttl = max(0, push.ttl_seconds)
    data = dict(push.data)
    if push.url:
        data["url"] = push.url
    data[MESSAGE_ID_KEY] = message.id
    android: Json = {"priority": "HIGH" if urgency == "high" else "NORMAL", "ttl": f"{ttl}s"}
    apns_headers = {"apns-priority": apns_priority(urgency), "apns-expiration": str(expiry_time(now, ttl))}
    webpush: Json = {"headers": {"TTL": str(ttl), "Urgency": urgency}}
    collapse_key = collapse_key_of(message)
    if collapse_key is not None:
        if not WEB_PUSH_TOPIC.match(collapse_key):   # the strictest of the three platforms' rules
            raise UnsupportedFeature(f"message {message.id}: an FCM collapse_key must also be a Web Push Topic: at "
                                     f"most 32 characters of A-Z a-z 0-9 - _, not {collapse_key!r}")
        android["collapse_key"] = apns_headers["apns-collapse-id"] = webpush["headers"]["Topic"] = collapse_key
    if push.icon:
        webpush["notification"] = {"icon": push.icon}
    if push.url and push.url.startswith("https://"):   # FCM accepts only HTTPS links
        webpush["fcm_options"] = {"link": push.url}
    fcm_message: Json = {"token": message.to.strip(), "notification": {"title": push.title, "body": push.body},
                         "data": data, "android": android, "apns": {"headers": apns_headers}, "webpush": webpush}
    return orjson.dumps({"message": fcm_message})


@dataclass(frozen=True, slots=True)
class FcmError:
    status: int
    grpc_status: str | None      # error.status, e.g. "INVALID_ARGUMENT"
    error_code: str | None       # the FcmError detail's errorCode, e.g. "UNREGISTERED"
    message: str
    fields: tuple[str, ...]      # BadRequest fieldViolations[].field

    @property
    def code(self) -> str:
        return self.error_code or self.grpc_status or str(self.status)

    @property
    def about_the_token(self) -> bool:
        return "message.token" in self.fields or "registration token" in self.message.lower()


def error_of(response: httpx.Response) -> FcmError:
    error = (json_object(response.content) or {}).get("error")
    if not isinstance(error, dict):
        return FcmError(response.status_code, None, None, response.text.strip()[:300], ())
    error_code, fields = None, []
    for detail in error.get("details") or []:
        if not isinstance(detail, dict):
            continue
        if str(detail.get("@type", "")).endswith(".FcmError"):
            error_code = text_or_none(detail.get("errorCode"))
        for violation in detail.get("fieldViolations") or []:
            if isinstance(violation, dict) and isinstance(violation.get("field"), str):
                fields.append(violation["field"])
    return FcmError(response.status_code, text_or_none(error.get("status")), error_code,
                    str(error.get("message") or ""), tuple(fields))


def send_outcome(message_id: str, response: httpx.Response, now: datetime) -> SendResult:
    status = response.status_code
    if status == 200:
        return SendResult.accepted(message_id, text_or_none((json_object(response.content) or {}).get("name")))
    error = error_of(response)
    detail = error_detail("FCM", status, f"{error.code}: {error.message}" if error.message else error.code)
    code = error.code
    if code in ("UNREGISTERED", "NOT_FOUND"):
        # Only FCM's own word retires a token: a bare 404 (a wrong base_url, a proxy) is not about it.
        return SendResult.failed(message_id, FailureReason.INVALID_ADDRESS, detail, provider_code=code)
    if status in (401, 403) or code in ("SENDER_ID_MISMATCH", "THIRD_PARTY_AUTH_ERROR", "PERMISSION_DENIED"):
        # Our credentials, or a token of another Firebase project: retried, so messages wait while
        # the settings are fixed (and another provider may take them).
        return SendResult.retry(message_id, FailureReason.AUTH_FAILED, detail, provider_code=code)
    retry_after = retry_after_seconds(response.headers.get("retry-after"), now)
    if status == 429 or code in ("QUOTA_EXCEEDED", "RESOURCE_EXHAUSTED"):
        return SendResult.retry(message_id, FailureReason.THROTTLED, detail, provider_code=code,
                                retry_after=retry_after)
    if status >= 500 or code in ("UNAVAILABLE", "INTERNAL"):
        return SendResult.retry(message_id, FailureReason.PROVIDER_DOWN, detail, provider_code=code,
                                retry_after=retry_after, maybe_sent=status in (502, 504))
    if status == 400 or code == "INVALID_ARGUMENT":
        reason = FailureReason.INVALID_ADDRESS if error.about_the_token else FailureReason.CONTENT_REJECTED
        return SendResult.failed(message_id, reason, detail, provider_code=code)
    if status == 413:
        return SendResult.failed(message_id, FailureReason.CONTENT_REJECTED, detail, provider_code=code)
    return SendResult.failed(message_id, FailureReason.UNKNOWN, detail, provider_code=code)


# ---- settings ----------------------------------------------------------------------------------------

def make_provider(config: Mapping[str, Any], secrets: Mapping[str, str]) -> FcmProvider:
    """The provider for stored settings (see the module docstring); ProviderConfigError naming what
    to fix."""
    only_known(config, {"project_id", "base_url", "token_uri"}, KEY)
    service_account = secrets.get("service_account_json")
    if not isinstance(service_account, str) or not service_account.strip():
        raise ProviderConfigError("fcm: `service_account_json` is missing: the service account key file from the "
                                  "Firebase console (Project settings > Service accounts)")
    token_uri = optional_text(config, "token_uri", KEY)
    if token_uri is not None:
        base_url_setting(token_uri, KEY)
    return FcmProvider(load_service_account(service_account), project_id=optional_text(config, "project_id", KEY),
                       base_url=optional_text(config, "base_url", KEY) or DEFAULT_BASE_URL, token_uri=token_uri)
