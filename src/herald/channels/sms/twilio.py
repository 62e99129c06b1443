"""Twilio Programmable Messaging: the Messages REST API out, signed status callbacks and incoming
message webhooks in. Pure translation between `herald.domain.delivery` and Twilio's wire formats;
no database, no logging.

Sources (checked, not guessed):
  * Message resource, "Create a Message resource" (twilio.com/docs/messaging/api/message-resource;
    twilio-oai spec `CreateMessage`): `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`,
    form-encoded `To`, `From` and/or `MessagingServiceSid` (one is required; with both, the message
    belongs to the service and goes out from `From`), `Body` (at most 1600 characters),
    `StatusCallback` (our URL; Twilio POSTs the status changes queued, sent, delivered, undelivered,
    failed - and read for channels that have it - to it, never the initial status). HTTP Basic
    auth with AccountSid:AuthToken or an API key's SID:secret. 201 Created answers the Message
    resource as JSON (`sid` "SM...", `status` queued/accepted).
  * Errors ("Twilio API responses", twilio.com/docs/usage/twilios-response and the error
    dictionary twilio.com/docs/api/errors/<code>): JSON `{"code", "message", "more_info", "status"}`.
    Mapped by code (see `_CODES`): 21211 invalid To, 21614 not a mobile number, 21612 To not
    reachable via SMS, 21635 landline -> INVALID_ADDRESS; 21610 the recipient replied STOP ->
    UNSUBSCRIBED; 21408 no permission for the destination's region and 21608 unverified number on a
    trial account -> POLICY (our account's settings, not the number's fault: the number is not
    suppressed); 20003 authentication, 20404 unknown account, 21212/21606/21659/21660 a From that
    is not ours -> AUTH_FAILED, retried so the message waits for the settings to be fixed;
    20429/HTTP 429 -> THROTTLED (Retry-After honoured); 21602/21617 body missing/too long ->
    CONTENT_REJECTED; 5xx -> PROVIDER_DOWN.
  * Status callbacks ("Track the Message Status of Outbound Messages", "Outbound Message Status in
    Status Callbacks"): form-encoded MessageSid, MessageStatus (also SmsSid/SmsStatus), AccountSid,
    From, To, ErrorCode on undelivered/failed, RawDlrDoneDate (YYMMDDhhmm without a time zone, so
    kept in `raw` only; the callback carries no timestamp, occurred_at is None and feedback uses the
    time of arrival). Delivery error codes 30001-30034/30410/30450 are mapped in `_CODES` as well.
  * Incoming messages ("Receive and reply to SMS", the messaging webhook request parameters):
    MessageSid (SmsMessageSid), AccountSid, From, To, Body, NumMedia, MessagingServiceSid; SmsStatus
    "received". From/To may carry a channel prefix ("whatsapp:+1..."), removed here.
  * Signatures ("Webhooks security", twilio.com/docs/usage/webhooks/webhooks-security, and the
    official twilio-python RequestValidator with its test vectors): X-Twilio-Signature =
    base64(HMAC-SHA1(AuthToken, full URL + every POST parameter as name+value, sorted by name and,
    for a repeated name, by value)). The URL is the one Twilio requested, query string included;
    Twilio's own validator accepts it with the port removed or the default port added, and so does
    this one. A JSON body is signed through a `bodySHA256` query parameter (hex SHA-256 of the raw
    body) with no POST parameters. There is no timestamp: replays are harmless because statuses
    are applied once (G6) and incoming messages are deduplicated by MessageSid (G5).

Our message id travels in the StatusCallback URL as the query parameter `m`
(`status_callback_url` + `?m=<id>`): Twilio signs and echoes that URL, so a callback names its
message even before the send's answer (and its MessageSid) was recorded. Without
`status_callback_url` (the Messaging Service's own callback URL is used) the event carries only
provider_message_id = MessageSid.

Stored provider settings (kind "twilio"):
  config:  account_sid (AC...), from (a Twilio number, short code or alphanumeric sender id) and/or
           messaging_service_sid (MG...), status_callback_url (Herald's callback URL for this
           provider, public https), api_key_sid (SK..., to send with an API key instead of the
           Auth Token), base_url (default https://api.twilio.com; tests point it at 127.0.0.1)
  secrets: auth_token (sends unless an API key is set; always what Twilio signs webhooks with),
           api_key_secret (with api_key_sid), previous_auth_token (during a rotation: Twilio's
           secondary token). Callbacks verify against the keys the caller passes (webhook_key,
           previous_webhook_key) AND these auth tokens, so an Auth Token entered once is enough.
`status_callback_url`'s scheme and host also verify callbacks whose URL a reverse proxy rewrote
(Twilio signed the public URL; the app may see http://internal:8000/...).
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final
from urllib.parse import parse_qs, parse_qsl, urlsplit, urlunsplit

import httpx
import orjson

from herald.channels.config import http_url, only_known, optional, required
from herald.channels.http import (
    default_client,
    error_detail,
    json_object,
    other_error_outcome,
    retry_after_seconds,
    text_or_none,
    transport_failure,
)
from herald.channels.sms.common import message_id_in, with_message_id
from herald.domain.clock import Clock, SystemClock
from herald.domain.delivery import (
    CallbackRequest,
    Channel,
    DeliveryEvent,
    EventKind,
    FailureReason,
    InboundMessage,
    OutboundMessage,
    ProviderConfigError,
    SendResult,
    SignatureError,
    UnsupportedFeature,
)

KEY: Final = "twilio"
DEFAULT_BASE_URL: Final = "https://api.twilio.com"
SIGNATURE_HEADER: Final = "x-twilio-signature"
BODY_HASH_PARAM: Final = "bodySHA256"

R = FailureReason
# Twilio error code -> (reason, what it means). Codes of the REST API (21xxx, 20xxx) and of
# delivery (30xxx, in status callbacks' ErrorCode).
_CODES: Final[dict[int, tuple[FailureReason, str]]] = {
    20003: (R.AUTH_FAILED, "authentication failed: check the Account SID and Auth Token or API key"),
    20404: (R.AUTH_FAILED, "resource not found: check the Account SID"),
    20429: (R.THROTTLED, "too many requests"),
    21211: (R.INVALID_ADDRESS, "invalid 'To' phone number"),
    21212: (R.AUTH_FAILED, "invalid 'From' phone number: fix the sender"),
    21408: (R.POLICY, "permission to send to this region is not enabled (Messaging Geographic Permissions)"),
    21602: (R.CONTENT_REJECTED, "message body is required"),
    21606: (R.AUTH_FAILED, "the 'From' number is not a message-capable Twilio number for this destination"),
    21608: (R.POLICY, "trial account: the 'To' number is not verified"),
    21610: (R.UNSUBSCRIBED, "the recipient replied STOP to this sender"),
    21612: (R.INVALID_ADDRESS, "the 'To' number is not reachable via SMS from this sender"),
    21614: (R.INVALID_ADDRESS, "the 'To' number is not a valid mobile number"),
    21617: (R.CONTENT_REJECTED, "message body exceeds 1600 characters"),
    21635: (R.INVALID_ADDRESS, "the 'To' number is a landline"),
    21659: (R.AUTH_FAILED, "the 'From' is not a Twilio number or short code of this account"),
    21660: (R.AUTH_FAILED, "the 'From' number belongs to another account"),
    30001: (R.THROTTLED, "queue overflow"),
    30002: (R.AUTH_FAILED, "account suspended"),
    30003: (R.TRANSIENT, "unreachable destination handset"),
    30004: (R.BLOCKED, "message blocked (by the recipient or the carrier)"),
    30005: (R.INVALID_ADDRESS, "unknown destination handset"),
    30006: (R.INVALID_ADDRESS, "landline or unreachable carrier"),
    30007: (R.BLOCKED, "filtered by the carrier"),
    30008: (R.UNKNOWN, "unknown error"),
    30009: (R.TRANSIENT, "missing segment"),
    30010: (R.POLICY, "message price exceeds the max price"),
    30022: (R.THROTTLED, "US A2P 10DLC rate limit exceeded"),
    30023: (R.THROTTLED, "US A2P 10DLC daily message cap reached"),
    30032: (R.POLICY, "toll-free number not verified"),
    30034: (R.POLICY, "US A2P 10DLC: message from an unregistered number"),
    30410: (R.TRANSIENT, "provider timeout"),
    30450: (R.BLOCKED, "message delivery blocked (SMS pumping protection)"),
}
# Outcomes the send retries: the settings, the rate or the network, not this message or number.
_RETRIED: Final = frozenset({R.AUTH_FAILED, R.THROTTLED, R.PROVIDER_DOWN, R.TRANSIENT})


# ---- sending ---------------------------------------------------------------------------------------

class TwilioProvider:
    """Sends one message per `POST .../Messages.json`; our id travels in the StatusCallback URL."""

    key = KEY
    channel: Channel = "sms"

    def __init__(self, account_sid: str, *, auth_token: str | None = None, api_key_sid: str | None = None,
                 api_key_secret: str | None = None, sender: str | None = None,
                 messaging_service_sid: str | None = None, status_callback_url: str | None = None,
                 base_url: str = DEFAULT_BASE_URL, client: httpx.AsyncClient | None = None,
                 clock: Clock | None = None) -> None:
        if not sender and not messaging_service_sid:
            raise ProviderConfigError("twilio: set `from` (a Twilio number, short code or sender id) or "
                                      "`messaging_service_sid`: a message needs a sender")
        self._url = (http_url(base_url, "base_url", KEY).rstrip("/")
                     + f"/2010-04-01/Accounts/{account_sid}/Messages.json")
        self._headers = {"Authorization": _basic(account_sid, auth_token, api_key_sid, api_key_secret),
                         "Accept": "application/json"}
        self.sender = sender
        self.messaging_service_sid = messaging_service_sid
        self.status_callback_url = status_callback_url
        self._owns_client = client is None
        self._client = client or default_client()
        self._clock = clock or SystemClock()

    async def send(self, message: OutboundMessage) -> SendResult:
        form = message_form(message, self.sender, self.messaging_service_sid, self.status_callback_url)
        try:
            response = await self._client.post(self._url, data=form, headers=self._headers)
        except httpx.HTTPError as exc:
            return transport_failure(message.id, exc, "Twilio")
        return send_outcome(message.id, response, self._clock.now())

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def _basic(account_sid: str, auth_token: str | None, api_key_sid: str | None, api_key_secret: str | None) -> str:
    if api_key_sid or api_key_secret:
        if not (api_key_sid and api_key_secret):
            raise ProviderConfigError("twilio: an API key needs both api_key_sid (SK...) and the secret api_key_secret")
        user, password = api_key_sid, api_key_secret
    elif auth_token:
        user, password = account_sid, auth_token
    else:
        raise ProviderConfigError("twilio: the secret auth_token is required (or an API key: api_key_sid and "
                                  "api_key_secret)")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def message_form(message: OutboundMessage, sender: str | None, messaging_service_sid: str | None,
                 status_callback_url: str | None) -> dict[str, str]:
    """The form fields of one Create Message request. The message's own sender wins over `from`."""
    if message.channel != "sms" or message.sms is None:
        raise UnsupportedFeature(f"the Twilio provider sends SMS; message {message.id} is a {message.channel} "
                                 "message without SMS content")
    form = {"To": message.to, "Body": message.sms.text}
    chosen = message.sms.sender or sender
    if chosen:
        form["From"] = chosen
    if messaging_service_sid:
        form["MessagingServiceSid"] = messaging_service_sid
    if status_callback_url:
        form["StatusCallback"] = with_message_id(status_callback_url, message.id)
    return form


def send_outcome(message_id: str, response: httpx.Response, now: datetime) -> SendResult:
    status = response.status_code
    body = json_object(response.content) or {}
    if 200 <= status < 300:
        return SendResult.accepted(message_id, text_or_none(body.get("sid")), detail=str(body.get("status") or ""))
    code = body.get("code") if isinstance(body.get("code"), int) else None
    said = text_or_none(body.get("message")) or response.text.strip()[:300]
    detail = error_detail("Twilio", status, f"{code}: {said}" if code else said)
    known = _CODES.get(code) if code is not None else None
    if known is not None:
        reason = known[0]
        if reason in _RETRIED:
            return SendResult.retry(message_id, reason, detail, provider_code=str(code),
                                    retry_after=retry_after_seconds(response.headers.get("retry-after"), now))
        return SendResult.failed(message_id, reason, detail, provider_code=str(code))
    if status == 429:
        return SendResult.retry(message_id, R.THROTTLED, detail, provider_code=str(code or status),
                                retry_after=retry_after_seconds(response.headers.get("retry-after"), now))
    if status in (401, 403):
        return SendResult.retry(message_id, R.AUTH_FAILED, detail, provider_code=str(code or status))
    outcome = other_error_outcome(message_id, response, now, detail, R.UNKNOWN)
    return _with_code(outcome, code)


def _with_code(outcome: SendResult, code: int | None) -> SendResult:
    """The outcome with Twilio's own error code instead of the HTTP status, when Twilio gave one."""
    return outcome if code is None else dataclasses.replace(outcome, provider_code=str(code))


# ---- webhooks ---------------------------------------------------------------------------------------

Params = dict[str, str]


class TwilioWebhookParser:
    """Verifies X-Twilio-Signature, then reads a status callback (`parse_callback`) or an incoming
    message (`parse_inbound`). A verified body that is not the documented shape raises ValueError."""

    key = KEY

    def __init__(self, auth_tokens: Sequence[str] = (), public_url: str | None = None) -> None:
        self.auth_tokens = tuple(t for t in auth_tokens if t)
        self.public_url = public_url

    async def parse_callback(self, request: CallbackRequest, secrets: Sequence[str],
                             now: datetime) -> list[DeliveryEvent]:
        params = self.verify(request, secrets)
        event = status_event(params, message_id_in(request.url))
        return [event] if event is not None else []

    async def parse_inbound(self, request: CallbackRequest, secrets: Sequence[str],
                            now: datetime) -> list[InboundMessage]:
        params = self.verify(request, secrets)
        message = inbound_message(params, now)
        return [message] if message is not None else []

    def verify(self, request: CallbackRequest, secrets: Sequence[str]) -> Params:
        """The request's parameters, once its signature matched one of the keys."""
        tokens = list(dict.fromkeys([*(s for s in secrets if s), *self.auth_tokens]))
        if not tokens:
            raise ProviderConfigError("twilio: no Auth Token to verify webhooks with: set the secret auth_token")
        given = _signature_of(request)
        signed, params = signed_params(request)
        for url in candidate_urls(request.url, self.public_url):
            for token in tokens:
                if hmac.compare_digest(signature(token, url, signed).encode(), given.encode()):
                    return params
        raise SignatureError("X-Twilio-Signature does not match the URL and parameters for any configured Auth Token")


def _signature_of(request: CallbackRequest) -> str:
    given = request.headers.get(SIGNATURE_HEADER, "").strip()
    if not given:
        raise SignatureError("not a signed Twilio request: X-Twilio-Signature header missing")
    try:
        digest = base64.b64decode(given, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("X-Twilio-Signature is not base64") from None
    if len(digest) != 20:   # SHA-1 digest size
        raise SignatureError("X-Twilio-Signature is not an HMAC-SHA1 digest")
    return given


def signature(token: str, url: str, params: Sequence[tuple[str, str]]) -> str:
    """Twilio's signature: base64 HMAC-SHA1 of the URL followed by name+value of each parameter,
    sorted by name then value."""
    data = url + "".join(name + value for name, value in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode("ascii")


def signed_params(request: CallbackRequest) -> tuple[list[tuple[str, str]], Params]:
    """(the parameters the signature covers, the parameters to read). A body signed through
    `bodySHA256` is checked against that hash and contributes no signed parameters."""
    query = parse_qs(urlsplit(request.url).query)
    body_hash = query.get(BODY_HASH_PARAM)
    if body_hash:
        if not hmac.compare_digest(hashlib.sha256(request.body).hexdigest(), body_hash[0].lower()):
            raise SignatureError("the body does not match the bodySHA256 parameter Twilio signed")
        return [], _body_params(request)
    pairs = _form_pairs(request.body)
    return pairs, _first_values(pairs)


def _form_pairs(body: bytes) -> list[tuple[str, str]]:
    try:
        return parse_qsl(body.decode("utf-8"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise SignatureError("the body is not UTF-8 form data, so it is not what Twilio signed") from None


def _body_params(request: CallbackRequest) -> Params:
    if "json" in request.headers.get("content-type", ""):
        record = json_object(request.body)
        if record is None:
            raise ValueError("Twilio webhook body is not a JSON object")
        return {str(k): v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in record.items()
                if v is not None}
    return _first_values(_form_pairs(request.body))


def _first_values(pairs: Sequence[tuple[str, str]]) -> Params:
    params: Params = {}
    for name, value in pairs:
        params.setdefault(name, value)
    return params


def candidate_urls(url: str, public_url: str | None) -> list[str]:
    """The URLs Twilio may have signed for this request: as received, and with the scheme and host
    of the configured public URL (behind a TLS-terminating proxy); each without its port and with
    the scheme's default port (what Twilio's own validator accepts)."""
    urls = [url]
    if public_url:
        public, seen = urlsplit(public_url), urlsplit(url)
        urls.append(urlunsplit(seen._replace(scheme=public.scheme, netloc=public.netloc)))
    variants: list[str] = []
    for each in urls:
        variants.extend(_port_variants(each))
    return list(dict.fromkeys(variants))


def _port_variants(url: str) -> list[str]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return [url]
    if port is not None:
        return [urlunsplit(parts._replace(netloc=parts.netloc.rpartition(":")[0])), url]
    default = 443 if parts.scheme == "https" else 80
    return [url, urlunsplit(parts._replace(netloc=f"{parts.netloc}:{default}"))]


# Twilio MessageStatus -> the event Herald records; other statuses (queued, accepted, scheduled,
# sending, receiving, received, partially_delivered) record nothing.
_KINDS: Final[dict[str, EventKind]] = {
    "sent": "sent",
    "delivered": "delivered",
    "read": "read",
    "undelivered": "bounced",   # the carrier reported it was not delivered
    "failed": "rejected",       # Twilio could not send it at all
    "canceled": "rejected",     # a scheduled message was canceled: it will never go
}


def status_event(params: Params, message_id: str | None) -> DeliveryEvent | None:
    """One status callback as an event; None for a status Herald does not record."""
    status = (params.get("MessageStatus") or params.get("SmsStatus") or "").strip().lower()
    sid = text_or_none(params.get("MessageSid") or params.get("SmsSid"))
    if not status or sid is None:
        raise ValueError("not a Twilio message status callback: MessageStatus or MessageSid missing")
    kind = _KINDS.get(status)
    if kind is None:
        return None
    base: dict[str, Any] = {"kind": kind, "provider": KEY, "occurred_at": None, "message_id": message_id,
                            "provider_message_id": sid, "recipient": _address(params.get("To")), "raw": params}
    if kind not in ("bounced", "rejected"):
        return DeliveryEvent(**base)
    code_text = text_or_none(params.get("ErrorCode"))
    code = int(code_text) if code_text and code_text.isdigit() else None
    reason, what = _CODES.get(code, (R.UNKNOWN, "")) if code is not None else (R.UNKNOWN, "")
    said = text_or_none(params.get("ErrorMessage"))
    detail = "; ".join(part for part in (f"Twilio {status}", f"error {code_text}" if code_text else "", what,
                                         said or "") if part)
    # permanent: the number itself is bad (feedback suppresses it); anything else is final for this
    # message but leaves the number usable (the convention of the email parsers).
    permanent = reason is R.INVALID_ADDRESS if kind == "bounced" else reason not in _RETRIED
    return DeliveryEvent(**base, reason=reason, permanent=permanent, provider_code=code_text, detail=detail)


def inbound_message(params: Params, now: datetime) -> InboundMessage | None:
    """An incoming-message webhook as an InboundMessage; None when the request is a status
    callback of an outbound message posted to the incoming URL."""
    if (params.get("MessageStatus") or params.get("SmsStatus") or "received").strip().lower() != "received":
        return None
    sender = text_or_none(params.get("From"))
    if sender is None:
        raise ValueError("not a Twilio incoming message: From missing")
    channel: Channel = "whatsapp" if sender.lower().startswith("whatsapp:") else "sms"
    return InboundMessage(channel=channel, provider=KEY, sender=_address(sender) or sender,
                          recipient=_address(params.get("To")), text=params.get("Body", ""),
                          provider_message_id=text_or_none(params.get("MessageSid") or params.get("SmsMessageSid")
                                                           or params.get("SmsSid")),
                          received_at=now, raw=params)


def _address(value: str | None) -> str | None:
    """A Twilio address without its channel prefix ("whatsapp:+1..." -> "+1...")."""
    text = text_or_none(value)
    if text is None:
        return None
    prefix, colon, rest = text.partition(":")
    return rest.strip() if colon and prefix.isalpha() else text


# ---- factories ------------------------------------------------------------------------------------------

CONFIG_KEYS: Final = ("account_sid", "from", "messaging_service_sid", "status_callback_url", "api_key_sid", "base_url")


def make_provider(config: Mapping[str, Any], secrets: Mapping[str, str]) -> TwilioProvider:
    only_known(config, CONFIG_KEYS, KEY)
    account_sid = required(config, "account_sid", KEY)
    if not account_sid.startswith("AC"):
        raise ProviderConfigError(f"twilio: account_sid {account_sid[:8]!r}... is not an Account SID (AC...)")
    service = optional(config, "messaging_service_sid", KEY)
    if service and not service.startswith("MG"):
        raise ProviderConfigError("twilio: messaging_service_sid must be a Messaging Service SID (MG...)")
    callback = optional(config, "status_callback_url", KEY)
    return TwilioProvider(account_sid, auth_token=optional(secrets, "auth_token", KEY),
                          api_key_sid=optional(config, "api_key_sid", KEY),
                          api_key_secret=optional(secrets, "api_key_secret", KEY),
                          sender=optional(config, "from", KEY), messaging_service_sid=service,
                          status_callback_url=http_url(callback, "status_callback_url", KEY) if callback else None,
                          base_url=optional(config, "base_url", KEY) or DEFAULT_BASE_URL)


def make_parser(config: Mapping[str, Any], secrets: Mapping[str, str]) -> TwilioWebhookParser:
    only_known(config, CONFIG_KEYS, KEY)
    callback = optional(config, "status_callback_url", KEY)
    tokens = [t for t in (optional(secrets, "auth_token", KEY), optional(secrets, "previous_auth_token", KEY)) if t]
    return TwilioWebhookParser(tokens, http_url(callback, "status_callback_url", KEY) if callback else None)
