"""Mailgun: the MIME sending API out, the signed webhooks in. Pure translation between
`herald.domain.delivery` and Mailgun's wire formats; no database, no logging.

Sources (checked, not guessed):
  * Sending (mailgun/documentation api-sending.rst, and the current API reference "Send an email
    in MIME format"): `POST /v3/<domain>/messages.mime`, multipart/form-data with `to` and
    `message` (the MIME string "as a file upload"), `v:<name>` attaches custom data that events
    echo in `user-variables`. Answer: `{"id": "<...@domain>", "message": "Queued. Thank you."}`.
    Auth: HTTP Basic, user `api`, password the API key. Regions: api.mailgun.net (US),
    api.eu.mailgun.net (EU); a domain only exists in its own region (404 in the other).
  * Errors (api-intro.rst): 400 missing/invalid parameter, 401 no valid API key, 402 "parameters
    were valid but request failed", 404 not found, 5xx; plus 413 for a too large message and 429
    (rate limited, Retry-After) in practice. Error bodies are `{"message": "..."}` or plain text.
  * Webhooks ("Webhook Payloads" page of the user manual; samples in
    tests/channels/email/payloads/mailgun/): JSON `{"signature": {"timestamp", "token",
    "signature"}, "event-data": {...}}`; signature = hex HMAC-SHA256(webhook signing key,
    timestamp + token). Events: accepted, delivered, failed (severity permanent|temporary;
    reason bounce, generic, suppress-bounce, suppress-unsubscribe, suppress-complaint, espblock,
    old, ...; delivery-status {code, message, description, enhanced-code, bounce-type}), opened,
    clicked (url), unsubscribed, complained, rejected. Quirks kept here:
      - `user-variables` is `[]`, not `{}`, when the message had none (the documented samples);
      - `enhanced-code`/`description` may be null; `code` may be a Mailgun code, not SMTP
        (605 "previously bounced", 498 "No MX");
      - the final "old" failure (gave up retrying) arrives with severity "temporary";
      - THE SIGNATURE DOES NOT COVER event-data. Only timestamp + token are signed, so a captured
        signature block could be replayed with a forged body: the stale-timestamp check and the
        (per process) token replay cache below are what bound that.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from herald.channels.email.classify import classify, parse_status
from herald.channels.email.mime import build_mime, transport_address
from herald.channels.http import (
    DEFAULT_TOLERANCE,
    check_fresh,
    default_client,
    error_detail,
    json_object,
    other_error_outcome,
    retry_after_seconds,
    text_or_none,
    transport_failure,
    unix_time,
)
from herald.domain.clock import Clock, SystemClock
from herald.domain.delivery import (
    CallbackRequest,
    Channel,
    DeliveryEvent,
    EventKind,
    FailureReason,
    OutboundMessage,
    ProviderConfigError,
    SendResult,
    SignatureError,
)

KEY = "mailgun"
US_BASE_URL = "https://api.mailgun.net"
EU_BASE_URL = "https://api.eu.mailgun.net"
MESSAGE_ID_VARIABLE = "herald_message_id"   # sent as v:herald_message_id, read from user-variables
DEFAULT_REPLAY_CACHE = 10_000

Json = dict[str, Any]


# ---- sending ---------------------------------------------------------------------------------------

class MailgunProvider:
    """Sends the message Herald built (build_mime) through `messages.mime`, so the bytes Mailgun
    relays are ours (Message-ID, List-Unsubscribe, ...); Mailgun adds its own DKIM signature."""

    key = KEY
    channel: Channel = "email"

    def __init__(self, api_key: str, domain: str, base_url: str = US_BASE_URL, client: httpx.AsyncClient | None = None,
                 clock: Clock | None = None) -> None:
        if not api_key.strip():
            raise ProviderConfigError("no Mailgun API key: create a sending key (Sending > Domain settings > "
                                      "Sending API keys) and give it to Herald")
        if not domain.strip():
            raise ProviderConfigError("no Mailgun sending domain: give the domain as Mailgun shows it "
                                      "(e.g. mg.example.com)")
        if not base_url.startswith(("https://", "http://")):
            raise ProviderConfigError(f"Mailgun base URL {base_url!r} must start with https:// ({US_BASE_URL} or "
                                      f"{EU_BASE_URL})")
        self.domain = domain.strip()
        self._url = f"{base_url.rstrip('/')}/v3/{quote(self.domain, safe='')}/messages.mime"
        self._auth = httpx.BasicAuth("api", api_key.strip())
        self._owns_client = client is None
        self._client = client or default_client()
        self._clock = clock or SystemClock()

    async def send(self, message: OutboundMessage) -> SendResult:
        now = self._clock.now()
        mime = build_mime(message, date=now)
        fields = {"to": transport_address(message.to), f"v:{MESSAGE_ID_VARIABLE}": message.id}
        files = {"message": ("message.mime", mime, "message/rfc822")}
        try:
            response = await self._client.post(self._url, data=fields, files=files, auth=self._auth,
                                               headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            return transport_failure(message.id, exc, "Mailgun")
        return send_outcome(message.id, response, now)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def send_outcome(message_id: str, response: httpx.Response, now: datetime) -> SendResult:
    status = response.status_code
    said = _error_message(response)
    if 200 <= status < 300:
        return SendResult.accepted(message_id, _queued_id(response), detail=said)
    detail = error_detail("Mailgun", status, said)
    if status == 429:
        return SendResult.retry(message_id, FailureReason.THROTTLED, detail, provider_code=str(status),
                                retry_after=retry_after_seconds(response.headers.get("retry-after"), now))
    if status in (401, 402, 403, 404):
        # Our key, our account (402: plan/billing, 403: domain not allowed) or our domain/region
        # (404): retryable, so messages wait while the seller fixes the settings.
        return SendResult.retry(message_id, FailureReason.AUTH_FAILED, detail + _HINTS.get(status, ""),
                                provider_code=str(status))
    return other_error_outcome(message_id, response, now, detail, _reason_of_bad_request(said))


_HINTS = {
    401: " (check the API key)",
    402: " (check the Mailgun account's plan and billing)",
    403: " (the account may not send from this domain, or a sandbox domain to this recipient)",
    404: " (check the sending domain and the region: US api.mailgun.net or EU api.eu.mailgun.net)",
}


def _error_message(response: httpx.Response) -> str:
    data = json_object(response.content)
    if data is not None:
        return str(data.get("message") or "")
    return response.text.strip()[:300]


def _queued_id(response: httpx.Response) -> str | None:
    data = json_object(response.content)
    return bare_message_id(data.get("id")) if data is not None else None


def bare_message_id(value: object) -> str | None:
    """A Message-ID without its angle brackets: the send answer has them, events do not."""
    text = text_or_none(value)
    return (text.strip("<>").strip() or None) if text else None


_BAD_RECIPIENT = re.compile(r"\bto\b.*\b(?:not a valid|invalid)\b", re.IGNORECASE)


def _reason_of_bad_request(said: str) -> FailureReason:
    return FailureReason.INVALID_ADDRESS if _BAD_RECIPIENT.search(said) else FailureReason.CONTENT_REJECTED


# ---- webhooks ------------------------------------------------------------------------------------------

class MailgunEventParser:
    """Verifies a webhook's signature block, then reads its one event.

    `secrets` are HTTP webhook signing keys (current and, during a rotation, previous). A token
    already seen within the timestamp window is refused as a replay; the cache is bounded and per
    process (`replay_cache_size=0` turns it off). A request with a good signature but no
    `event-data` object raises ValueError."""

    key = KEY

    def __init__(self, tolerance: timedelta = DEFAULT_TOLERANCE, replay_cache_size: int = DEFAULT_REPLAY_CACHE) -> None:
        self.tolerance = tolerance
        self._replay_cache_size = replay_cache_size
        self._seen: OrderedDict[str, datetime] = OrderedDict()   # token -> when it stops mattering

    async def parse_callback(self, request: CallbackRequest, secrets: Sequence[str],
                             now: datetime) -> list[DeliveryEvent]:
        payload = _payload(request.body)
        timestamp, token, signature = _signature_block(payload)
        check_fresh(timestamp, now, self.tolerance, "Mailgun")
        verify_signature(timestamp, token, signature, secrets)
        self._refuse_replay(token, now)
        data = payload.get("event-data")
        if not isinstance(data, dict):
            raise ValueError("Mailgun webhook has no event-data object")
        event = event_from(data)
        return [event] if event is not None else []

    def _refuse_replay(self, token: str, now: datetime) -> None:
        if self._replay_cache_size <= 0:
            return
        while self._seen:
            oldest, until = next(iter(self._seen.items()))
            if until > now:
                break
            del self._seen[oldest]
        if token in self._seen:
            raise SignatureError("Mailgun webhook token was already used: a replayed request")
        self._seen[token] = now + 2 * self.tolerance
        while len(self._seen) > self._replay_cache_size:
            self._seen.popitem(last=False)


def _payload(body: bytes) -> Json:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise SignatureError("Mailgun webhook body is not JSON, so it carries no signature") from None
    if not isinstance(payload, dict):
        raise SignatureError("Mailgun webhook body is not a JSON object with a signature")
    return payload


def _signature_block(payload: Json) -> tuple[str, str, str]:
    block = payload.get("signature")
    fields = [block.get(name) for name in ("timestamp", "token", "signature")] if isinstance(block, dict) else []
    if len(fields) != 3 or not all(isinstance(f, str | int) and str(f) for f in fields):
        raise SignatureError("Mailgun webhook without a signature block (timestamp, token, signature)")
    timestamp, token, signature = (str(f) for f in fields)
    return timestamp, token, signature


def verify_signature(timestamp: str, token: str, signature: str, secrets: Sequence[str]) -> None:
    keys = [secret.strip() for secret in secrets if secret.strip()]
    if not keys:
        raise ProviderConfigError("no Mailgun webhook signing key configured: copy the HTTP webhook signing key "
                                  "from Sending > Webhooks")
    signed = (timestamp + token).encode()
    given = signature.strip().lower().encode()
    for key in keys:
        expected = hmac.new(key.encode(), signed, hashlib.sha256).hexdigest().encode()
        if hmac.compare_digest(expected, given):
            return
    raise SignatureError("Mailgun webhook signature does not match its timestamp and token for any configured "
                         "signing key")


def event_from(data: Mapping[str, Any]) -> DeliveryEvent | None:
    """One Mailgun event-data; None for events Herald has no kind for (stored, list events, ...)."""
    translate = _TRANSLATIONS.get(str(data.get("event", "")))
    return translate(data) if translate else None


def _event(kind: EventKind, data: Mapping[str, Any], **details: Any) -> DeliveryEvent:
    return DeliveryEvent(kind=kind, provider=KEY, occurred_at=unix_time(data.get("timestamp")),
                         message_id=text_or_none(_user_variables(data).get(MESSAGE_ID_VARIABLE)),
                         provider_message_id=bare_message_id(_dig(data, "message", "headers", "message-id")),
                         recipient=text_or_none(data.get("recipient")), raw=data, **details)


def _dig(data: Mapping[str, Any], *path: str) -> object:
    value: object = data
    for name in path:
        value = value.get(name) if isinstance(value, Mapping) else None
    return value


def _user_variables(data: Mapping[str, Any]) -> Mapping[str, Any]:
    variables = data.get("user-variables")
    return variables if isinstance(variables, Mapping) else {}   # `[]` when there are none


def _smtp_code(value: object) -> int | None:
    """delivery-status.code when it is an SMTP reply code; Mailgun's own codes (605 previously
    bounced, 607 previously complained) are not."""
    if isinstance(value, bool) or not isinstance(value, int | str) or not str(value).strip().isdigit():
        return None
    code = int(value)
    return code if 200 <= code < 600 else None


# Mailgun refused to send because the address is on a suppression list: "rejected", not a bounce.
_SUPPRESSIONS = {
    "suppress-bounce": FailureReason.INVALID_ADDRESS,
    "suppress-unsubscribe": FailureReason.UNSUBSCRIBED,
    "suppress-complaint": FailureReason.COMPLAINT,
}


def _failed(data: Mapping[str, Any]) -> DeliveryEvent:
    mailgun_reason = str(data.get("reason") or "")
    status = data.get("delivery-status")
    delivery: Mapping[str, Any] = status if isinstance(status, Mapping) else {}
    detail = _failure_text(delivery)
    mailgun_code = delivery.get("code")
    provider_code = mailgun_reason or (str(mailgun_code) if mailgun_code is not None else None)
    suppressed = _SUPPRESSIONS.get(mailgun_reason)
    if suppressed is not None:
        return _event("rejected", data, reason=suppressed, permanent=True, provider_code=provider_code, detail=detail)
    enhanced = text_or_none(delivery.get("enhanced-code"))
    reply_code = _smtp_code(mailgun_code)
    reason, _ = classify(enhanced, reply_code, detail)
    kind, permanent, reason = _failure_kind(data.get("severity"), mailgun_reason, reason)
    return _event(kind, data, reason=reason, permanent=permanent,
                  status=parse_status(enhanced or "") or parse_status(detail), reply_code=reply_code,
                  provider_code=provider_code, detail=detail)


def _failure_text(delivery: Mapping[str, Any]) -> str:
    """The receiver's words (message) and Mailgun's explanation (description), either may be null."""
    said = [str(delivery.get(name) or "").strip() for name in ("message", "description")]
    return " | ".join(dict.fromkeys(part for part in said if part))


def _failure_kind(severity: object, mailgun_reason: str,
                  reason: FailureReason) -> tuple[EventKind, bool, FailureReason]:
    """permanent -> bounced (the address failed for good); temporary -> deferred (Mailgun retries),
    except the final "old" failure: Mailgun gave up, final but not the address's fault."""
    vague = reason in (FailureReason.UNKNOWN, FailureReason.TRANSIENT)
    if mailgun_reason == "espblock" and vague:
        reason = FailureReason.BLOCKED
    if mailgun_reason == "old":
        return "bounced", False, FailureReason.EXPIRED if vague else reason
    if severity == "permanent":
        return "bounced", True, FailureReason.UNKNOWN if reason is FailureReason.TRANSIENT else reason
    return "deferred", False, FailureReason.TRANSIENT if reason is FailureReason.UNKNOWN else reason


def _delivered(data: Mapping[str, Any]) -> DeliveryEvent:
    message = _dig(data, "delivery-status", "message")
    return _event("delivered", data, reply_code=_smtp_code(_dig(data, "delivery-status", "code")),
                  detail=str(message or ""))


def _rejected(data: Mapping[str, Any]) -> DeliveryEvent:
    said = str(_dig(data, "reject", "reason") or _dig(data, "reject", "description") or "")
    return _event("rejected", data, reason=FailureReason.UNKNOWN, permanent=True, detail=said)


_TRANSLATIONS: dict[str, Callable[[Mapping[str, Any]], DeliveryEvent]] = {
    "accepted": lambda d: _event("sent", d),
    "delivered": _delivered,
    "failed": _failed,
    "rejected": _rejected,
    "complained": lambda d: _event("complained", d, reason=FailureReason.COMPLAINT),
    "opened": lambda d: _event("opened", d),
    "clicked": lambda d: _event("clicked", d, url=text_or_none(d.get("url"))),
    "unsubscribed": lambda d: _event("unsubscribed", d, reason=FailureReason.UNSUBSCRIBED),
}
