"""SendGrid (Twilio SendGrid) v3: Mail Send out, the signed Event Webhook in. Pure translation
between `herald.domain.delivery` and SendGrid's wire formats; no database, no logging.

Sources (checked, not guessed):
  * Mail Send: `POST /v3/mail/send`, `Authorization: Bearer <API key>`, JSON body with
    personalizations[{to, custom_args}], from {email, name}, reply_to, subject, content, headers,
    attachments, tracking_settings (sendgrid/docs "v3 Mail Send" reference). Quirks kept here:
      - content: "If you choose to include the text/plain or text/html mime types, they must be the
        first indices of the content array in the order text/plain, text/html";
      - headers: "Must not be any of the following reserved headers: x-sg-id, x-sg-eid, received,
        dkim-signature, Content-Type, Content-Transfer-Encoding, To, From, Subject, Reply-To, CC,
        BCC", and non-ASCII values must arrive encoded (we use RFC 2047 encoded-words);
      - custom_args values are strings and come back on every event as top-level keys.
    202 Accepted carries the message id in the `X-Message-Id` response header.
  * Errors: 400 `{"errors": [{"field", "message", "help"}]}`; 401 unauthenticated; 403 (sender
    identity not verified, or "too many bad requests, temporary block"); 413 payload too large;
    429 with `X-RateLimit-Limit/-Remaining/-Reset` where Reset is a Unix time ("Rate Limits" page
    of the v3 API reference); 5xx server errors.
  * Event Webhook reference (sendgrid/docs tracking-events/event.md): a JSON array of events;
    processed, dropped, delivered, deferred, bounce (type "bounce" = permanent, "blocked" =
    receiver refused it temporarily, SendGrid does not retry), open, click, spamreport,
    unsubscribe, group_unsubscribe, group_resubscribe. Drop reasons documented: Invalid SMTPAPI
    header, Spam Content, Unsubscribed Address, Bounced Address, Spam Reporting Address, Invalid,
    Recipient List over Package Quota. `sg_message_id` is the X-Message-Id plus a
    ".filter..."/".recvd-..." suffix naming the SendGrid machine; asynchronous bounces have none.
    `bounce_classification` (Bounces API "Classification" enum) is read when present.
  * Signed Event Webhook ("Getting Started with the Event Webhook Security Features" and the
    official sendgrid-python `EventWebhook` helper): ECDSA P-256 over SHA-256 of
    `timestamp + raw body`; the base64 DER signature is in X-Twilio-Email-Event-Webhook-Signature,
    the timestamp (Unix seconds, as sent) in X-Twilio-Email-Event-Webhook-Timestamp; the
    verification key SendGrid shows is the base64 body of a PEM "PUBLIC KEY" (DER
    SubjectPublicKeyInfo).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from email.header import Header
from typing import Any

import httpx
import idna
import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from herald.channels.email.classify import classify, parse_status
from herald.channels.email.mime import idna_domain
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
    EmailContent,
    EventKind,
    FailureReason,
    OutboundMessage,
    ProviderConfigError,
    SendResult,
    SignatureError,
    UnsupportedFeature,
)

KEY = "sendgrid"
DEFAULT_BASE_URL = "https://api.sendgrid.com"
MESSAGE_ID_ARG = "herald_message_id"   # our id, in custom_args; echoed as a top-level event key
SIGNATURE_HEADER = "x-twilio-email-event-webhook-signature"
TIMESTAMP_HEADER = "x-twilio-email-event-webhook-timestamp"
RESERVED_HEADERS = frozenset({
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type", "content-transfer-encoding",
    "to", "from", "subject", "reply-to", "cc", "bcc",
})
# Herald tracks clicks and opens itself (signed links, its own pixel) and writes its own
# List-Unsubscribe headers, so SendGrid must not rewrite links, add a pixel or append its
# unsubscribe footer (Mail Send `tracking_settings`; twilio/sendgrid-oai spec/yaml/tsg_mail_v3.yaml:
# click_tracking {enable, enable_text}, open_tracking {enable}, subscription_tracking {enable}).
TRACKING_OFF: dict[str, dict[str, bool]] = {
    "click_tracking": {"enable": False, "enable_text": False},
    "open_tracking": {"enable": False},
    "subscription_tracking": {"enable": False},
}

Json = dict[str, Any]


# ---- sending ---------------------------------------------------------------------------------------

class SendGridProvider:
    """Sends one message per `POST /v3/mail/send`. Our id travels in custom_args, so every event
    of the message names it."""

    key = KEY
    channel: Channel = "email"

    def __init__(self, api_key: str, base_url: str = DEFAULT_BASE_URL, client: httpx.AsyncClient | None = None,
                 clock: Clock | None = None) -> None:
        if not api_key.strip():
            raise ProviderConfigError("no SendGrid API key: create one with the Mail Send permission "
                                      "(Settings > API Keys) and give it to Herald")
        if not base_url.startswith(("https://", "http://")):
            raise ProviderConfigError(f"SendGrid base URL {base_url!r} must start with https://")
        self._url = base_url.rstrip("/") + "/v3/mail/send"
        self._headers = {"Authorization": f"Bearer {api_key.strip()}", "Content-Type": "application/json",
                         "Accept": "application/json"}
        self._owns_client = client is None
        self._client = client or default_client()
        self._clock = clock or SystemClock()

    async def send(self, message: OutboundMessage) -> SendResult:
        body = mail_send_body(message)
        try:
            response = await self._client.post(self._url, content=body, headers=self._headers)
        except httpx.HTTPError as exc:
            return transport_failure(message.id, exc, "SendGrid")
        return send_outcome(message.id, response, self._clock.now())

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def mail_send_body(message: OutboundMessage) -> bytes:
    """The v3 Mail Send JSON for one recipient."""
    email = _email_of(message)
    personalization: Json = {"to": [{"email": idna_address(message.to)}], "custom_args": {MESSAGE_ID_ARG: message.id}}
    body: Json = {"personalizations": [personalization], "from": _address(email.from_address, email.from_name),
                  "subject": email.subject, "content": _content(email), "tracking_settings": TRACKING_OFF}
    if email.reply_to:
        body["reply_to"] = _address(email.reply_to, None)
    headers = _extra_headers(email.headers)
    if headers:
        body["headers"] = headers
    if email.attachments:
        body["attachments"] = [{"content": base64.b64encode(a.data).decode("ascii"), "type": a.content_type,
                                "filename": a.filename, "disposition": "attachment"} for a in email.attachments]
    return orjson.dumps(body)


def _email_of(message: OutboundMessage) -> EmailContent:
    if message.channel != "email" or message.email is None:
        raise UnsupportedFeature(f"SendGrid sends email; message {message.id} is a {message.channel} message "
                                 "without email content")
    return message.email


def idna_address(address: str) -> str:
    """The domain of an internationalised address in its ASCII (IDNA 2008) form, as build_mime
    writes it; the local part as is (SendGrid judges it)."""
    local, at, domain = address.rpartition("@")
    if not at or domain.isascii():
        return address
    try:
        return f"{local}@{idna_domain(domain)}"
    except idna.IDNAError:
        return address   # let the provider say what is wrong with it


def _address(address: str, name: str | None) -> Json:
    return {"email": idna_address(address), "name": name} if name else {"email": idna_address(address)}


def _content(email: EmailContent) -> list[Json]:
    # Order is SendGrid's rule: text/plain first, then text/html. Empty values are refused ("Min 1").
    parts = [{"type": "text/plain", "value": email.text}] if email.text else []
    if email.html:
        parts.append({"type": "text/html", "value": email.html})
    return parts


def _extra_headers(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers:
        if name.lower() in RESERVED_HEADERS:
            raise UnsupportedFeature(f"SendGrid does not accept the header {name!r} in `headers` (reserved)")
        if "\r" in value or "\n" in value:
            raise ValueError(f"header {name} contains a line break")
        if any(existing.lower() == name.lower() for existing in out):
            raise UnsupportedFeature(f"SendGrid's `headers` object cannot carry {name!r} twice")
        out[name] = value if value.isascii() else Header(value, "utf-8").encode()
    return out


def send_outcome(message_id: str, response: httpx.Response, now: datetime) -> SendResult:
    status = response.status_code
    if 200 <= status < 300:
        return SendResult.accepted(message_id, text_or_none(response.headers.get("x-message-id")))
    errors = _errors_of(response)
    detail = error_detail("SendGrid", status, _said(errors, response))
    if status == 429:
        return SendResult.retry(message_id, FailureReason.THROTTLED, detail, provider_code=str(status),
                                retry_after=_rate_limit_wait(response.headers, now))
    if status in (401, 403):
        # Our credentials or sender identity: retryable, so the message waits while the seller
        # fixes the settings instead of being lost.
        return SendResult.retry(message_id, FailureReason.AUTH_FAILED, detail, provider_code=str(status))
    return other_error_outcome(message_id, response, now, detail, _reason_of_bad_request(errors))


def _errors_of(response: httpx.Response) -> list[Json]:
    errors = (json_object(response.content) or {}).get("errors")
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def _said(errors: list[Json], response: httpx.Response) -> str:
    said = "; ".join(f"{e['field']}: {e.get('message')}" if e.get("field") else str(e.get("message"))
                     for e in errors)
    return said or response.text.strip()[:300]


_RECIPIENT_FIELD = re.compile(r"^personalizations\.\d+\.(?:to|cc|bcc)\b")


def _reason_of_bad_request(errors: list[Json]) -> FailureReason:
    """A 400 about the recipient's address is that address's fault; any other is our content."""
    for error in errors:
        if _RECIPIENT_FIELD.match(str(error.get("field") or "")):
            return FailureReason.INVALID_ADDRESS
    return FailureReason.CONTENT_REJECTED


def _rate_limit_wait(headers: httpx.Headers, now: datetime) -> float | None:
    """Retry-After when given, else until X-RateLimit-Reset (a Unix time)."""
    wait = retry_after_seconds(headers.get("retry-after"), now)
    if wait is not None:
        return wait
    reset = unix_time(headers.get("x-ratelimit-reset", "").strip() or None)
    return max(0.0, (reset - now).total_seconds()) if reset is not None else None


# ---- the Event Webhook -------------------------------------------------------------------------------

class SendGridEventParser:
    """Verifies the Signed Event Webhook, then reads its JSON array of events.

    `secrets` are verification keys (the base64 public key SendGrid shows, or that key as PEM);
    during a rotation give both. A body whose signature verified but that is not the documented
    JSON raises ValueError (SendGrid retries; nothing is stored)."""

    key = KEY

    def __init__(self, tolerance: timedelta = DEFAULT_TOLERANCE) -> None:
        self.tolerance = tolerance
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}

    async def parse_callback(self, request: CallbackRequest, secrets: Sequence[str],
                             now: datetime) -> list[DeliveryEvent]:
        self.verify(request, secrets, now)
        return events_from_body(request.body)

    def verify(self, request: CallbackRequest, secrets: Sequence[str], now: datetime) -> None:
        signature_b64 = request.headers.get(SIGNATURE_HEADER, "")
        timestamp = request.headers.get(TIMESTAMP_HEADER, "")
        if not signature_b64 or not timestamp:
            raise SignatureError("not a signed SendGrid Event Webhook request: X-Twilio-Email-Event-Webhook-Signature "
                                 "or -Timestamp header missing (turn on Signed Event Webhook Requests)")
        check_fresh(timestamp, now, self.tolerance, "SendGrid")
        try:
            signature = base64.b64decode(signature_b64, validate=True)
        except (binascii.Error, ValueError):
            raise SignatureError("SendGrid webhook signature is not base64") from None
        signed = timestamp.encode() + request.body
        for key in self._public_keys(secrets):
            try:
                key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
                return
            except InvalidSignature:
                continue
        raise SignatureError("SendGrid webhook signature does not match the body and timestamp for any configured "
                             "verification key")

    def _public_keys(self, secrets: Sequence[str]) -> list[ec.EllipticCurvePublicKey]:
        keys = [self._public_key(secret) for secret in secrets if secret.strip()]
        if not keys:
            raise ProviderConfigError("no SendGrid Event Webhook verification key configured: copy the public key "
                                      "from Settings > Mail Settings > Signed Event Webhook Requests")
        return keys

    def _public_key(self, secret: str) -> ec.EllipticCurvePublicKey:
        cached = self._keys.get(secret)
        if cached is not None:
            return cached
        key = load_verification_key(secret)
        if len(self._keys) >= 16:   # a handful of keys in practice; never let junk grow it
            self._keys.clear()
        self._keys[secret] = key
        return key


def load_verification_key(secret: str) -> ec.EllipticCurvePublicKey:
    text = secret.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = load_pem_public_key(text.encode())
        else:
            key = load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError):
        raise ProviderConfigError("the SendGrid verification key is not a base64 public key: copy it again from "
                                  "Signed Event Webhook Requests") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ProviderConfigError("the SendGrid verification key is not an ECDSA P-256 public key")
    return key


def events_from_body(body: bytes) -> list[DeliveryEvent]:
    try:
        records = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ValueError("SendGrid Event Webhook body is not JSON") from None
    if not isinstance(records, list):
        raise ValueError("SendGrid Event Webhook body is not a JSON array of events")
    events = (event_from(record) for record in records if isinstance(record, dict))
    return [event for event in events if event is not None]


def event_from(record: Mapping[str, Any]) -> DeliveryEvent | None:
    """One SendGrid event; None for the ones Herald has no kind for (group_resubscribe, account
    events, anything new)."""
    translate = _TRANSLATIONS.get(str(record.get("event", "")))
    return translate(record) if translate else None


def _event(kind: EventKind, record: Mapping[str, Any], **details: Any) -> DeliveryEvent:
    return DeliveryEvent(kind=kind, provider=KEY, occurred_at=unix_time(record.get("timestamp")),
                         message_id=text_or_none(record.get(MESSAGE_ID_ARG)),
                         provider_message_id=sendgrid_message_id(record.get("sg_message_id")),
                         recipient=text_or_none(record.get("email")), raw=record, **details)


_MACHINE_SUFFIX = re.compile(r"\.(?:filter|recvd)")


def sendgrid_message_id(value: object) -> str | None:
    """sg_message_id without the ".filter0001..."/".recvd-..." part: the X-Message-Id of the send."""
    text = text_or_none(value)
    return _MACHINE_SUFFIX.split(text, maxsplit=1)[0] if text else None


_REPLY_CODE = re.compile(r"^\s*([245]\d\d)(?!\d)")


def reply_code_in(text: str | None) -> int | None:
    """The SMTP reply code a receiver's answer starts with ("550 5.1.1 ...")."""
    match = _REPLY_CODE.match(text or "")
    return int(match[1]) if match else None


def _delivered(record: Mapping[str, Any]) -> DeliveryEvent:
    response = str(record.get("response") or "")
    return _event("delivered", record, reply_code=reply_code_in(response), detail=response)


def _deferred(record: Mapping[str, Any]) -> DeliveryEvent:
    response = str(record.get("response") or "")
    reply_code = reply_code_in(response)
    reason, _ = classify(None, reply_code, response)
    return _event("deferred", record, reason=FailureReason.TRANSIENT if reason is FailureReason.UNKNOWN else reason,
                  permanent=False, status=parse_status(response), reply_code=reply_code,
                  provider_code=text_or_none(str(record.get("attempt") or "")), detail=response)


# The Bounces API "Classification" enum, used when the receiver's text names no reason itself.
_CLASSIFICATIONS: dict[str, FailureReason] = {
    "invalid address": FailureReason.INVALID_ADDRESS,
    "mailbox unavailable": FailureReason.INVALID_ADDRESS,
    "reputation": FailureReason.BLOCKED,
    "content": FailureReason.POLICY,
    "frequency or volume too high": FailureReason.THROTTLED,
}


def _bounce(record: Mapping[str, Any]) -> DeliveryEvent:
    """type "bounce": the receiver refused the address for good; type "blocked": it refused this
    message (reputation, content, rate) and SendGrid gave up on it: final, but not the address's
    fault, so not permanent."""
    text = str(record.get("reason") or "")
    status = text_or_none(record.get("status"))
    reply_code = reply_code_in(text)
    blocked = record.get("type") == "blocked"
    reason, _ = classify(status, reply_code, text)
    classification = text_or_none(record.get("bounce_classification"))
    if reason in (FailureReason.UNKNOWN, FailureReason.TRANSIENT):
        hinted = _CLASSIFICATIONS.get((classification or "").lower())
        reason = hinted or (FailureReason.BLOCKED if blocked else FailureReason.UNKNOWN)
    return _event("bounced", record, reason=reason, permanent=not blocked,
                  status=parse_status(status or "") or parse_status(text), reply_code=reply_code,
                  provider_code=classification or text_or_none(record.get("type")) or "bounce", detail=text)


# Documented drop reasons (lower case), most specific first: "Invalid SMTPAPI header" before "Invalid".
_DROP_REASONS: tuple[tuple[str, FailureReason], ...] = (
    ("bounced address", FailureReason.INVALID_ADDRESS),
    ("unsubscribed address", FailureReason.UNSUBSCRIBED),
    ("spam reporting address", FailureReason.COMPLAINT),
    ("invalid smtpapi header", FailureReason.CONTENT_REJECTED),
    ("spam content", FailureReason.CONTENT_REJECTED),
    ("recipient list over package quota", FailureReason.THROTTLED),
    ("expired", FailureReason.EXPIRED),
    ("invalid", FailureReason.INVALID_ADDRESS),
)


def drop_reason(text: str) -> FailureReason:
    lowered = text.strip().lower()
    for prefix, reason in _DROP_REASONS:
        if lowered.startswith(prefix):
            return reason
    return FailureReason.UNKNOWN


def _dropped(record: Mapping[str, Any]) -> DeliveryEvent:
    text = str(record.get("reason") or "")
    reason = drop_reason(text)
    return _event("rejected", record, reason=reason, permanent=reason is not FailureReason.THROTTLED,
                  provider_code=text_or_none(text), detail=text)


def _unsubscribed(record: Mapping[str, Any]) -> DeliveryEvent:
    group = record.get("asm_group_id")
    return _event("unsubscribed", record, reason=FailureReason.UNSUBSCRIBED,
                  provider_code=f"asm_group_id:{group}" if group is not None else None)


_TRANSLATIONS: dict[str, Callable[[Mapping[str, Any]], DeliveryEvent]] = {
    "processed": lambda r: _event("sent", r),
    "delivered": _delivered,
    "deferred": _deferred,
    "bounce": _bounce,
    "dropped": _dropped,
    "spamreport": lambda r: _event("complained", r, reason=FailureReason.COMPLAINT),
    "open": lambda r: _event("opened", r),
    "click": lambda r: _event("clicked", r, url=text_or_none(r.get("url"))),
    "unsubscribe": _unsubscribed,
    "group_unsubscribe": _unsubscribed,
}
