"""A generic HTTP SMS gateway, described per workspace by its settings instead of code: where and
how to send (URL, method, JSON or form body, the field names, authentication, which statuses mean
accepted and where the gateway's message id is in its answer) and how to read its status callbacks
and incoming messages (the field names, the status words, and how they are verified). Pure
translation; no database, no logging.

Sources: RFC 6901 (JSON Pointer, for `message_id_path` and for nested callback fields), RFC 2104 /
FIPS 198-1 (HMAC-SHA256 of the raw body), RFC 7617 (Basic) and RFC 6750 (Bearer) authentication,
RFC 9110 (status codes, Retry-After). The default status words are the SMPP delivery receipt
states (SMPP 3.4 Appendix B: DELIVRD, EXPIRED, DELETED, UNDELIV, ACCEPTD, UNKNOWN, REJECTD, ENROUTE)
plus the lower-case words HTTP gateways commonly use.

Our message id travels in `reference_field` of the request (default "reference"); gateways echo
such a client reference in their delivery reports (`callback_reference_field`). A gateway that takes
a per-message status URL instead gets `status_callback_url?m=<id>` in `callback_url_field`, and
the `m` query parameter of the callback names the message. Without either, events carry only the
gateway's id (from `message_id_path`).

Stored provider settings (kind "http_gateway"):
  config (sending):
    url                 the send endpoint (required)
    method              POST (default) | PUT | GET (GET sends the fields as query parameters)
    format              json (default) | form
    to_field / from_field / text_field / reference_field
                        field names (defaults to, from, text, reference); reference_field "" sends
                        no reference; the sender field is left out when there is no sender
    from                the default sender (an SmsContent.sender wins)
    static_fields       an object of constant fields added to every request ({"type": "sms"})
    callback_url_field, status_callback_url
                        optional: the field that takes a per-message status URL, and Herald's URL
    auth                none (default) | basic | bearer | header:<Header-Name>
    username            the Basic user name
    success_status      accepted statuses: codes and ranges, comma separated (default "200-299")
    message_id_path     JSON Pointer of the gateway's message id in its answer ("/messages/0/id")
    timeout_seconds     default 30
  config (callbacks and incoming messages):
    callback_signature_header    the header holding HMAC-SHA256(key, raw body), hex or base64, an
                                 optional "sha256=" prefix allowed
    callback_token_param         for gateways that cannot sign: the query parameter of the callback
                                 URL (set up at the gateway) that must equal the key
                                 (one of the two is required: an unverified callback is refused)
    callback_format              json (default: an object or an array of objects) | form
    callback_reference_field     default: reference_field
    callback_id_field / callback_status_field / callback_error_field / callback_recipient_field
                                 defaults id, status, error_code, to; a name or a JSON Pointer
    callback_statuses            {gateway word: sent|delivered|deferred|bounced|rejected|expired|ignore},
                                 added to (and overriding) the defaults; matched case-insensitively
    callback_error_reasons       {gateway error code: a FailureReason value}; "invalid_address"
                                 makes the bounce permanent (the number is suppressed)
    inbound_from_field / inbound_to_field / inbound_text_field / inbound_id_field
                                 defaults from, to, text, id
  secrets: password (basic) | token (bearer, header:<name>); webhook_key (and previous_webhook_key
           during a rotation) is the callbacks' shared key, passed in by the caller.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Literal, cast
from urllib.parse import parse_qs, parse_qsl, urlsplit

import httpx
import orjson

from herald.channels.config import http_url, only_known, optional, required
from herald.channels.http import (
    error_detail,
    other_error_outcome,
    retry_after_seconds,
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

KEY: Final = "http_gateway"
Record = Mapping[str, Any]


# ---- settings -----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class GatewayRequest:
    """How one message becomes one HTTP request."""

    url: str
    method: Literal["POST", "PUT", "GET"] = "POST"
    format: Literal["json", "form"] = "json"
    to_field: str = "to"
    from_field: str = "from"
    text_field: str = "text"
    reference_field: str | None = "reference"
    sender: str | None = None
    static_fields: Mapping[str, Any] = field(default_factory=dict)
    callback_url_field: str | None = None
    status_callback_url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)     # authentication
    success: tuple[tuple[int, int], ...] = ((200, 299),)
    message_id_path: str | None = None
    timeout_seconds: float = 30.0


SEND_KEYS: Final = ("url", "method", "format", "to_field", "from_field", "text_field", "reference_field", "from",
                    "static_fields", "callback_url_field", "status_callback_url", "auth", "username",
                    "success_status", "message_id_path", "timeout_seconds")
CALLBACK_KEYS: Final = ("callback_signature_header", "callback_token_param", "callback_format",
                        "callback_reference_field", "callback_id_field", "callback_status_field",
                        "callback_error_field", "callback_recipient_field", "callback_statuses",
                        "callback_error_reasons", "inbound_from_field", "inbound_to_field", "inbound_text_field",
                        "inbound_id_field")


def request_settings(config: Mapping[str, Any], secrets: Mapping[str, str]) -> GatewayRequest:
    """The sending settings, checked; ProviderConfigError names what to fix."""
    only_known(config, (*SEND_KEYS, *CALLBACK_KEYS), KEY)
    method = (optional(config, "method", KEY) or "POST").upper()
    if method not in ("POST", "PUT", "GET"):
        raise ProviderConfigError(f"{KEY}: method must be POST, PUT or GET, not {method!r}")
    body_format = optional(config, "format", KEY) or "json"
    if body_format not in ("json", "form"):
        raise ProviderConfigError(f"{KEY}: format must be json or form, not {body_format!r}")
    static = config.get("static_fields") or {}
    if not isinstance(static, Mapping):
        raise ProviderConfigError(f"{KEY}: static_fields must be an object of constant fields")
    callback_field = optional(config, "callback_url_field", KEY)
    callback_url = optional(config, "status_callback_url", KEY)
    if bool(callback_field) != bool(callback_url):
        raise ProviderConfigError(f"{KEY}: callback_url_field and status_callback_url go together")
    pointer = optional(config, "message_id_path", KEY)
    if pointer is not None:
        json_pointer(pointer)   # checked now, not at the first send
    return GatewayRequest(
        url=http_url(required(config, "url", KEY), "url", KEY), method=cast(Literal["POST", "PUT", "GET"], method),
        format=cast(Literal["json", "form"], body_format),
        to_field=optional(config, "to_field", KEY) or "to", from_field=optional(config, "from_field", KEY) or "from",
        text_field=optional(config, "text_field", KEY) or "text",
        reference_field=optional(config, "reference_field", KEY) if "reference_field" in config else "reference",
        sender=optional(config, "from", KEY), static_fields=dict(static), callback_url_field=callback_field,
        status_callback_url=http_url(callback_url, "status_callback_url", KEY) if callback_url else None,
        headers=auth_headers(optional(config, "auth", KEY) or "none", config, secrets),
        success=status_ranges(str(config.get("success_status") or "200-299")), message_id_path=pointer,
        timeout_seconds=_positive(config.get("timeout_seconds", 30.0), "timeout_seconds"))


def auth_headers(auth: str, config: Mapping[str, Any], secrets: Mapping[str, str]) -> dict[str, str]:
    """none | basic (username + secret password) | bearer (secret token) | header:<name> (secret token)."""
    if auth == "none":
        return {}
    if auth == "basic":
        user = required(config, "username", KEY)
        password = required(secrets, "password", KEY, "secret")
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")}
    if auth == "bearer":
        return {"Authorization": f"Bearer {required(secrets, 'token', KEY, 'secret')}"}
    name = auth.partition(":")[2].strip() if auth.startswith("header:") else ""
    if not name or not name.isascii() or not all(c.isalnum() or c in "-_" for c in name):
        raise ProviderConfigError(f"{KEY}: auth must be none, basic, bearer or header:<Header-Name>, not {auth!r}")
    return {name: required(secrets, "token", KEY, "secret")}


def status_ranges(text: str) -> tuple[tuple[int, int], ...]:
    """ "200-299", "200,202", "200-204, 207" as inclusive ranges."""
    ranges: list[tuple[int, int]] = []
    for item in text.split(","):
        low, dash, high = item.strip().partition("-")
        try:
            first, last = int(low), int(high) if dash else int(low)
        except ValueError:
            raise ProviderConfigError(f"{KEY}: success_status {text!r} is not like 200-299 or 200,202") from None
        if not 100 <= first <= last <= 599:
            raise ProviderConfigError(f"{KEY}: success_status {item.strip()!r} is not an HTTP status range")
        ranges.append((first, last))
    return tuple(ranges)


def _positive(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ProviderConfigError(f"{KEY}: {name} must be a positive number of seconds")
    return float(value)


# ---- sending ----------------------------------------------------------------------------------------------

class HttpGatewayProvider:
    """One HTTP request per message, shaped by `GatewayRequest`."""

    key = KEY
    channel: Channel = "sms"

    def __init__(self, settings: GatewayRequest, client: httpx.AsyncClient | None = None,
                 clock: Clock | None = None) -> None:
        self.settings = settings
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_seconds, connect=min(10.0, settings.timeout_seconds)),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))
        self._clock = clock or SystemClock()

    async def send(self, message: OutboundMessage) -> SendResult:
        request = self._client.build_request(self.settings.method, self.settings.url,
                                             headers={"Accept": "application/json", **self.settings.headers},
                                             **request_body(self.settings, message))
        try:
            response = await self._client.send(request)
        except httpx.HTTPError as exc:
            return transport_failure(message.id, exc, "the SMS gateway")
        return send_outcome(self.settings, message.id, response, self._clock.now())

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()


def request_fields(settings: GatewayRequest, message: OutboundMessage) -> dict[str, Any]:
    if message.channel != "sms" or message.sms is None:
        raise UnsupportedFeature(f"the HTTP SMS gateway sends SMS; message {message.id} is a {message.channel} "
                                 "message without SMS content")
    fields: dict[str, Any] = {**settings.static_fields, settings.to_field: message.to,
                              settings.text_field: message.sms.text}
    sender = message.sms.sender or settings.sender
    if sender:
        fields[settings.from_field] = sender
    if settings.reference_field:
        fields[settings.reference_field] = message.id
    if settings.callback_url_field and settings.status_callback_url:
        fields[settings.callback_url_field] = with_message_id(settings.status_callback_url, message.id)
    return fields


def request_body(settings: GatewayRequest, message: OutboundMessage) -> dict[str, Any]:
    """httpx.build_request keywords: query parameters for GET, else a JSON or form body (each sets
    its Content-Type)."""
    fields = request_fields(settings, message)
    if settings.method == "GET":   # after the URL's own query parameters, which httpx would drop
        return {"params": [*httpx.URL(settings.url).params.multi_items(), *((k, _text(v)) for k, v in fields.items())]}
    if settings.format == "form":
        return {"data": {k: _text(v) for k, v in fields.items()}}
    return {"json": fields}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def send_outcome(settings: GatewayRequest, message_id: str, response: httpx.Response, now: datetime) -> SendResult:
    status = response.status_code
    if any(low <= status <= high for low, high in settings.success):
        return SendResult.accepted(message_id, gateway_message_id(settings.message_id_path, response.content))
    detail = error_detail("SMS gateway", status, response.text.strip()[:300])
    if status == 429:
        return SendResult.retry(message_id, FailureReason.THROTTLED, detail, provider_code=str(status),
                                retry_after=retry_after_seconds(response.headers.get("retry-after"), now))
    if status in (401, 403, 407):
        return SendResult.retry(message_id, FailureReason.AUTH_FAILED, detail, provider_code=str(status))
    if status == 408:   # the gateway gave up reading the request: nothing was sent
        return SendResult.retry(message_id, FailureReason.PROVIDER_DOWN, detail, provider_code=str(status))
    # A generic gateway's 4xx says nothing reliable about the number, so it is not INVALID_ADDRESS.
    return other_error_outcome(message_id, response, now, detail, FailureReason.UNKNOWN)


def gateway_message_id(pointer: str | None, content: bytes) -> str | None:
    """The gateway's id at `pointer` in a JSON answer; None without a pointer, JSON or value there."""
    if pointer is None:
        return None
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    value = resolve(document, json_pointer(pointer))
    if isinstance(value, bool) or not isinstance(value, str | int):
        return None
    return str(value).strip() or None


# ---- JSON Pointer (RFC 6901) ------------------------------------------------------------------------------

_MISSING: Final = object()


def json_pointer(pointer: str) -> tuple[str, ...]:
    """The reference tokens of a JSON Pointer ("" is the whole document); ProviderConfigError if
    it does not start with "/" or has a "~" not followed by 0 or 1."""
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise ProviderConfigError(f"{KEY}: {pointer!r} is not a JSON Pointer (RFC 6901): it must start with /")
    tokens = pointer[1:].split("/")
    for token in tokens:
        if "~" in token.replace("~0", "").replace("~1", ""):
            raise ProviderConfigError(f"{KEY}: JSON Pointer {pointer!r} has a ~ not followed by 0 or 1")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in tokens)


def resolve(document: Any, tokens: Sequence[str]) -> Any:
    """The value the tokens point at, or _MISSING."""
    current = document
    for name in tokens:
        if isinstance(current, dict):
            current = current.get(name, _MISSING)
        elif isinstance(current, list) and name.isdigit() and (name == "0" or not name.startswith("0")):
            index = int(name)
            current = current[index] if index < len(current) else _MISSING
        else:
            return _MISSING
        if current is _MISSING:
            return _MISSING
    return current


# ---- callbacks and incoming messages -------------------------------------------------------------------------

Outcome = Literal["sent", "delivered", "deferred", "bounced", "rejected", "expired", "ignore"]
DEFAULT_STATUSES: Final[dict[str, Outcome]] = {
    "delivrd": "delivered", "delivered": "delivered", "delivery_success": "delivered",
    "acceptd": "sent", "accepted": "sent", "enroute": "sent", "sent": "sent", "submitted": "sent",
    "buffered": "deferred", "deferred": "deferred",
    "undeliv": "bounced", "undelivered": "bounced", "failed": "bounced", "delivery_failed": "bounced",
    "deleted": "bounced",
    "rejectd": "rejected", "rejected": "rejected",
    "expired": "expired",
    "unknown": "ignore", "queued": "ignore", "scheduled": "ignore",
}
_OUTCOMES: Final = frozenset({"sent", "delivered", "deferred", "bounced", "rejected", "expired", "ignore"})


@dataclass(frozen=True, slots=True)
class GatewayCallbacks:
    """How the gateway's callbacks are verified and read."""

    signature_header: str | None = None       # lower-cased
    token_param: str | None = None
    format: Literal["json", "form"] = "json"
    reference_field: str | None = "reference"
    id_field: str = "id"
    status_field: str = "status"
    error_field: str = "error_code"
    recipient_field: str = "to"
    statuses: Mapping[str, Outcome] = field(default_factory=lambda: dict(DEFAULT_STATUSES))
    error_reasons: Mapping[str, FailureReason] = field(default_factory=dict)
    inbound_from_field: str = "from"
    inbound_to_field: str = "to"
    inbound_text_field: str = "text"
    inbound_id_field: str = "id"


def callback_settings(config: Mapping[str, Any]) -> GatewayCallbacks:
    only_known(config, (*SEND_KEYS, *CALLBACK_KEYS), KEY)
    header = optional(config, "callback_signature_header", KEY)
    token_param = optional(config, "callback_token_param", KEY)
    if not header and not token_param:
        raise ProviderConfigError(f"{KEY}: callbacks must be verifiable: set callback_signature_header (the header "
                                  "with the HMAC-SHA256 of the body) or callback_token_param (a query parameter of "
                                  "the callback URL holding the webhook key)")
    callback_format = optional(config, "callback_format", KEY) or "json"
    if callback_format not in ("json", "form"):
        raise ProviderConfigError(f"{KEY}: callback_format must be json or form, not {callback_format!r}")
    names = {name: optional(config, name, KEY) for name in CALLBACK_KEYS if name.endswith("_field")}
    for name in names.values():
        if name and name.startswith("/"):
            json_pointer(name)
    return GatewayCallbacks(
        signature_header=header.lower() if header else None, token_param=token_param,
        format=cast(Literal["json", "form"], callback_format), reference_field=_callback_reference_field(config),
        id_field=names["callback_id_field"] or "id",
        status_field=names["callback_status_field"] or "status",
        error_field=names["callback_error_field"] or "error_code",
        recipient_field=names["callback_recipient_field"] or "to",
        statuses={**DEFAULT_STATUSES, **_statuses(config.get("callback_statuses") or {})},
        error_reasons=_error_reasons(config.get("callback_error_reasons") or {}),
        inbound_from_field=names["inbound_from_field"] or "from", inbound_to_field=names["inbound_to_field"] or "to",
        inbound_text_field=names["inbound_text_field"] or "text", inbound_id_field=names["inbound_id_field"] or "id")


def _callback_reference_field(config: Mapping[str, Any]) -> str | None:
    """callback_reference_field when set ("" for none), else the request's reference_field."""
    if "callback_reference_field" in config:
        return optional(config, "callback_reference_field", KEY)
    if "reference_field" in config:
        return optional(config, "reference_field", KEY)
    return "reference"


def _statuses(value: object) -> dict[str, Outcome]:
    if not isinstance(value, Mapping) or not all(isinstance(v, str) and v in _OUTCOMES for v in value.values()):
        raise ProviderConfigError(f"{KEY}: callback_statuses maps the gateway's status words to one of "
                                  f"{', '.join(sorted(_OUTCOMES))}")
    return {str(word).strip().lower(): outcome for word, outcome in value.items()}


def _error_reasons(value: object) -> dict[str, FailureReason]:
    known = {reason.value for reason in FailureReason}
    if not isinstance(value, Mapping) or not all(isinstance(v, str) and v in known for v in value.values()):
        raise ProviderConfigError(f"{KEY}: callback_error_reasons maps error codes to one of "
                                  f"{', '.join(sorted(known))}")
    return {str(code).strip(): FailureReason(reason) for code, reason in value.items()}


class HttpGatewayWebhookParser:
    """Verifies a callback (HMAC-SHA256 of the raw body in the configured header, or the key in
    the configured query parameter) against any of the keys, then reads its records."""

    key = KEY

    def __init__(self, settings: GatewayCallbacks) -> None:
        self.settings = settings

    async def parse_callback(self, request: CallbackRequest, secrets: Sequence[str],
                             now: datetime) -> list[DeliveryEvent]:
        self.verify(request, secrets)
        by_url = message_id_in(request.url)
        events = (status_event(self.settings, record, by_url) for record in self.records(request))
        return [event for event in events if event is not None]

    async def parse_inbound(self, request: CallbackRequest, secrets: Sequence[str],
                            now: datetime) -> list[InboundMessage]:
        self.verify(request, secrets)
        return [inbound_message(self.settings, record, now) for record in self.records(request)]

    def verify(self, request: CallbackRequest, secrets: Sequence[str]) -> None:
        keys = [s for s in secrets if s]
        if not keys:
            raise ProviderConfigError(f"{KEY}: no webhook key to verify the gateway's callbacks: set the secret "
                                      "webhook_key")
        if self.settings.signature_header:
            _check_hmac(request, self.settings.signature_header, keys)
        if self.settings.token_param:
            given = parse_qs(urlsplit(request.url).query).get(self.settings.token_param, [""])[0]
            if not given:
                raise SignatureError(f"the callback URL has no {self.settings.token_param} parameter")
            if not any(hmac.compare_digest(given.encode(), key.encode()) for key in keys):
                raise SignatureError(f"the callback URL's {self.settings.token_param} is not the webhook key")

    def records(self, request: CallbackRequest) -> list[Record]:
        """The callback's records: a JSON object, a JSON array of objects, or one form."""
        if self.settings.format == "form":
            try:
                return [dict(parse_qsl(request.body.decode("utf-8"), keep_blank_values=True, errors="strict"))]
            except (UnicodeDecodeError, ValueError):
                raise ValueError("the gateway's callback is not UTF-8 form data") from None
        try:
            document = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            raise ValueError("the gateway's callback body is not JSON") from None
        items = document if isinstance(document, list) else [document]
        if not all(isinstance(item, dict) for item in items):
            raise ValueError("the gateway's callback is neither a JSON object nor an array of objects")
        return items


def _check_hmac(request: CallbackRequest, header: str, keys: Sequence[str]) -> None:
    given = request.headers.get(header, "").strip()
    if given.lower().startswith("sha256="):
        given = given[len("sha256="):]
    if not given:
        raise SignatureError(f"the callback has no {header} signature header")
    digest = _digest_of(given)
    if digest is None:
        raise SignatureError(f"the {header} header is not a hex or base64 SHA-256 digest")
    for key in keys:
        if hmac.compare_digest(hmac.new(key.encode(), request.body, hashlib.sha256).digest(), digest):
            return
    raise SignatureError(f"the {header} signature does not match the body for any webhook key")


def _digest_of(text: str) -> bytes | None:
    """A 32-byte digest written in hex or base64."""
    try:
        digest = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        return None
    return digest if len(digest) == 32 else None


def _value(record: Record, name: str) -> Any:
    """A field by name, or by JSON Pointer when the name starts with "/"; _MISSING when absent."""
    return resolve(record, json_pointer(name)) if name.startswith("/") else record.get(name, _MISSING)


def field_value(record: Record, name: str | None) -> str | None:
    """A scalar field as text without surrounding blanks; None when absent, empty or not a scalar."""
    if not name:
        return None
    value = _value(record, name)
    if value is _MISSING or value is None or isinstance(value, dict | list):
        return None
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text.strip() or None


_KIND_OF: Final[dict[str, EventKind]] = {"sent": "sent", "delivered": "delivered", "deferred": "deferred",
                                         "bounced": "bounced", "rejected": "rejected", "expired": "bounced"}


def status_event(settings: GatewayCallbacks, record: Record, message_id: str | None) -> DeliveryEvent | None:
    """One delivery report as an event; None for a status word mapped to `ignore`. An unknown word
    is an error (configure it in callback_statuses) rather than a silently lost status."""
    word = field_value(record, settings.status_field)
    if word is None:
        raise ValueError(f"the gateway's callback has no {settings.status_field} field")
    outcome = settings.statuses.get(word.lower())
    if outcome is None:
        raise ValueError(f"the gateway's status {word[:40]!r} is not in callback_statuses")
    if outcome == "ignore":
        return None
    base: dict[str, Any] = {
        "kind": _KIND_OF[outcome], "provider": KEY, "occurred_at": None,
        "message_id": field_value(record, settings.reference_field) or message_id,
        "provider_message_id": field_value(record, settings.id_field),
        "recipient": field_value(record, settings.recipient_field), "raw": dict(record)}
    if outcome in ("sent", "delivered"):
        return DeliveryEvent(**base)
    code = field_value(record, settings.error_field)
    reason = _reason(outcome, code, settings.error_reasons)
    # permanent for a bounce: the number itself is bad (feedback suppresses it); a rejection is
    # final; a deferral is not.
    permanent = {"deferred": False, "rejected": True}.get(outcome, reason is FailureReason.INVALID_ADDRESS)
    return DeliveryEvent(**base, reason=reason, permanent=permanent, provider_code=code,
                         detail=f"SMS gateway status {word}" + (f", error {code}" if code else ""))


def _reason(outcome: Outcome, code: str | None, reasons: Mapping[str, FailureReason]) -> FailureReason:
    if code is not None and code in reasons:
        return reasons[code]
    if outcome == "expired":
        return FailureReason.EXPIRED
    return FailureReason.TRANSIENT if outcome == "deferred" else FailureReason.UNKNOWN


def inbound_message(settings: GatewayCallbacks, record: Record, now: datetime) -> InboundMessage:
    sender = field_value(record, settings.inbound_from_field)
    if sender is None:
        raise ValueError(f"the gateway's incoming message has no {settings.inbound_from_field} field")
    text = _value(record, settings.inbound_text_field)
    return InboundMessage(channel="sms", provider=KEY, sender=sender,
                          recipient=field_value(record, settings.inbound_to_field),
                          text=text if isinstance(text, str) else "",
                          provider_message_id=field_value(record, settings.inbound_id_field), received_at=now,
                          raw=dict(record))


# ---- factories ------------------------------------------------------------------------------------------------

def make_provider(config: Mapping[str, Any], secrets: Mapping[str, str]) -> HttpGatewayProvider:
    return HttpGatewayProvider(request_settings(config, secrets))


def make_parser(config: Mapping[str, Any], _secrets: Mapping[str, str]) -> HttpGatewayWebhookParser:
    return HttpGatewayWebhookParser(callback_settings(config))

