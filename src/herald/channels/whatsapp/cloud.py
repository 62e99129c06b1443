"""WhatsApp Business Cloud API (Meta Graph API): messages out, signed webhooks in (statuses,
inbound messages, template status updates), and message templates submitted and listed. Pure
translation between `herald.domain.delivery` and Meta's wire formats; no database, no logging.

Stored provider settings (`providers.config` / sealed `providers.secrets`), kind "whatsapp_cloud":
  config:  phone_number_id (required: the business number's Graph id), waba_id (the WhatsApp
           Business Account id; required for templates), api_version (default "v21.0"),
           base_url (default https://graph.facebook.com)
  secrets: access_token (required: a system user token with whatsapp_business_messaging and
           whatsapp_business_management), app_secret (verifies webhooks; previous_app_secret
           during a rotation), verify_token (the webhook subscription handshake;
           previous_verify_token during a rotation)

Our message id travels as `biz_opaque_callback_data` (an arbitrary string of up to 512 bytes that
Cloud API does not process and returns in the statuses of the messages webhook), so every status
of a message names it; the provider's id (the `wamid.` in messages[0].id) is the fallback.

Sources (checked, not guessed):
  * Send: `POST /{version}/{phone_number_id}/messages`, `Authorization: Bearer <token>`, JSON
    {messaging_product: "whatsapp", recipient_type: "individual", to, type, <type object>,
    biz_opaque_callback_data}; template {name, language {code}, components [{type: "body",
    parameters [{type: "text", text}]}]}; text {body}; image/video/document/audio {link, caption}
    (audio takes no caption; document also takes filename). The answer is {messaging_product,
    contacts [{input, wa_id}], messages [{id, message_status}]} (developers.facebook.com
    documentation/business-messaging/whatsapp "Send messages" and "Template messages"; the
    whatsapp-api-js ClientMessageRequest type for biz_opaque_callback_data).
  * Errors: Graph's {"error": {message, type, code, error_data {messaging_product, details},
    error_subcode (gone in v16+), fbtrace_id}}; "build your app's error handling around code
    values and details" ("Error codes", developers.facebook.com/documentation/business-messaging/
    whatsapp/support/error-codes). The codes and what Herald makes of them are in `_CODES`.
  * Webhooks: X-Hub-Signature-256 = "sha256=" + hex HMAC-SHA256(app secret, raw body); the
    subscription handshake is a GET with hub.mode=subscribe, hub.verify_token, hub.challenge to
    echo (Graph API "Webhooks: Getting started"). Payloads: {object: "whatsapp_business_account",
    entry [{id, changes [{field, value}]}]}; field "messages" carries value.statuses (sent,
    delivered, read, failed with errors [{code, title, message, error_data {details}}]; "Status
    messages webhook reference") and value.messages (text, button, interactive button_reply /
    list_reply, image, video, document, audio, sticker, reaction, location, ...; "messages webhook
    reference"); field "message_template_status_update" carries {event, message_template_id,
    message_template_name, message_template_language, reason, message_template_category}
    ("message_template_status_update webhook reference"). Sample payloads: david-lev/pywa
    tests/data/updates.
  * Templates: `POST /{version}/{waba_id}/message_templates` {name, language, category
    (MARKETING | UTILITY | AUTHENTICATION), components, parameter_format} answers {id, status,
    category}; `GET` the same path with fields/limit/after lists them as {data [...], paging
    {cursors {before, after}, next}} ("Template management"; Graph API cursor pagination: no
    `next`, no more pages). We page by the `after` cursor against our own base URL and never
    follow the absolute `next` URL, so the access token only ever goes to the configured host.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from posixpath import basename
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson

from herald.channels.config import need, only_known
from herald.channels.http import (
    DETAIL_LIMIT,
    default_client,
    error_detail,
    json_object,
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
    InboundMessage,
    OutboundMessage,
    ProviderConfigError,
    SendResult,
    SignatureError,
    UnsupportedFeature,
    WhatsAppContent,
)
from herald.domain.errors import InvalidInput

KEY = "whatsapp_cloud"
DEFAULT_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v21.0"
SIGNATURE_HEADER = "x-hub-signature-256"
TEMPLATE_FIELDS = "id,name,language,category,status,rejected_reason"
TEMPLATE_CATEGORIES = frozenset({"MARKETING", "UTILITY", "AUTHENTICATION"})
TEMPLATE_PAGE_SIZE = 100
MAX_TEMPLATE_PAGES = 1000            # 100 000 templates; Meta allows a WABA far fewer
CALLBACK_DATA_LIMIT = 512            # bytes of biz_opaque_callback_data Meta keeps
CONFIG_KEYS = frozenset({"phone_number_id", "waba_id", "api_version", "base_url"})

Json = dict[str, Any]

_VERSION = re.compile(r"^v\d{1,3}\.\d{1,3}$")
_GRAPH_ID = re.compile(r"^\d{1,40}$")
_TEMPLATE_NAME = re.compile(r"^[a-z0-9_]{1,512}$")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(?:[_-][A-Za-z0-9]{2,4})?$")


# ---- what Meta's error codes mean to Herald -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ErrorMeaning:
    reason: FailureReason
    retry: bool   # a send worth trying again later (ours or Meta's side will recover)


_AUTH = ErrorMeaning(FailureReason.AUTH_FAILED, True)        # the seller must fix the account or token
_THROTTLED = ErrorMeaning(FailureReason.THROTTLED, True)
_DOWN = ErrorMeaning(FailureReason.PROVIDER_DOWN, True)
_ADDRESS = ErrorMeaning(FailureReason.INVALID_ADDRESS, False)
_CONTENT = ErrorMeaning(FailureReason.CONTENT_REJECTED, False)

# Cloud API error codes ("Error codes" page). Titles in the comments are Meta's.
_CODES: dict[int, ErrorMeaning] = {
    0: _AUTH,           # AuthException
    3: _AUTH,           # API Method: capability or permissions issue
    10: _AUTH,          # Permission denied
    190: _AUTH,         # Access token has expired
    33: _AUTH,          # Parameter value is not valid: the business phone number was deleted
    368: _AUTH,         # Temporarily blocked for policies violations (the whole account)
    131005: _AUTH,      # Access denied
    131031: _AUTH,      # Account has been locked
    131042: _AUTH,      # Business eligibility payment issue
    4: _THROTTLED,      # API Too Many Calls
    80007: _THROTTLED,  # Rate limit issues (WABA)
    130429: _THROTTLED,  # Rate limit hit: Cloud API throughput reached
    131048: _THROTTLED,  # Spam rate limit hit
    131056: _THROTTLED,  # (Business Account, Consumer Account) pair rate limit hit
    1: _DOWN,           # API Unknown
    2: _DOWN,           # API Service: downtime or overload
    131000: _DOWN,      # Something went wrong
    131016: _DOWN,      # Service unavailable / overloaded
    131057: _DOWN,      # Account in maintenance mode
    133004: _DOWN,      # Server temporarily unavailable
    131026: _ADDRESS,   # Message undeliverable: not a WhatsApp user, old client, blocked the business
    131030: _ADDRESS,   # Recipient phone number not in allowed list (test numbers)
    131021: _ADDRESS,   # Recipient cannot be sender
    131047: ErrorMeaning(FailureReason.POLICY, False),        # Re-engagement: > 24 h since the user's last message
    130497: ErrorMeaning(FailureReason.POLICY, False),        # Business restricted from messaging this country
    131050: ErrorMeaning(FailureReason.UNSUBSCRIBED, False),  # The user stopped marketing messages from us
    131049: ErrorMeaning(FailureReason.BLOCKED, False),       # Meta chose not to deliver (marketing limit)
    130472: ErrorMeaning(FailureReason.BLOCKED, False),       # User's number is part of an experiment
    131043: ErrorMeaning(FailureReason.EXPIRED, False),       # Message expired
    100: _CONTENT,      # Invalid parameter
    131008: _CONTENT,   # Required parameter is missing
    131009: _CONTENT,   # Parameter value is not valid
    131051: _CONTENT,   # Unsupported message type
    131052: _CONTENT,   # Media download error
    131053: _CONTENT,   # Media upload error
}


def error_meaning(code: int | None, http_status: int | None = None) -> ErrorMeaning:
    """What an error code means; 132xxx are template errors (count/format mismatch, missing,
    paused, disabled...). An unknown code falls back on the HTTP status."""
    if code is not None:
        if code in _CODES:
            return _CODES[code]
        if 200 <= code <= 299:       # API Permission
            return _AUTH
        if 132000 <= code <= 132999:
            return _CONTENT
    if http_status is not None:
        if http_status == 429:
            return _THROTTLED
        if http_status in (401, 403):
            return _AUTH
        if http_status >= 500:
            return _DOWN
    return ErrorMeaning(FailureReason.UNKNOWN, False)


@dataclass(frozen=True, slots=True)
class GraphErrorBody:
    """Graph's {"error": {...}}, read leniently."""

    code: int | None
    subcode: int | None
    message: str
    details: str
    fbtrace_id: str | None

    @classmethod
    def of(cls, data: bytes | Mapping[str, Any] | None) -> GraphErrorBody | None:
        body = json_object(data) if isinstance(data, bytes) else data
        error = (body or {}).get("error")
        if not isinstance(error, dict):
            return None
        error_data = error.get("error_data")
        details = error_data.get("details") if isinstance(error_data, dict) else None
        return cls(_int_or_none(error.get("code")), _int_or_none(error.get("error_subcode")),
                   text_or_none(error.get("message")) or "", text_or_none(details) or "",
                   text_or_none(error.get("fbtrace_id")))

    def said(self) -> str:
        parts = [self.message or (f"(#{self.code})" if self.code is not None else "")]
        if self.details and self.details not in self.message:
            parts.append(self.details)
        if self.subcode is not None:
            parts.append(f"subcode {self.subcode}")
        if self.fbtrace_id:
            parts.append(f"fbtrace_id {self.fbtrace_id}")
        return "; ".join(p for p in parts if p)


def _int_or_none(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


class GraphApiError(Exception):
    """A template call Meta refused or did not answer; `reason` says what to do about it."""

    def __init__(self, detail: str, reason: FailureReason, *, http_status: int | None = None,
                 code: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason
        self.http_status = http_status
        self.code = code


# ---- templates ----------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class WhatsAppTemplate:
    """One language version of a message template as Meta knows it. `category` and `status` are
    Meta's enums lower-cased (marketing | utility | authentication; approved | pending | rejected |
    paused | disabled | in_appeal | ...), the form the `templates` table stores."""

    id: str | None
    name: str
    language: str
    category: str | None
    status: str | None
    rejected_reason: str | None = None


@dataclass(frozen=True, slots=True)
class TemplateStatusUpdate:
    """A message_template_status_update webhook: `event` is Meta's word lower-cased (approved,
    rejected, paused, disabled, flagged, reinstated, archived, ...); `approval_status` is the
    status the template has after it, when the event implies one (None for flagged, locked...)."""

    waba_id: str | None
    template_id: str | None
    name: str
    language: str
    event: str
    approval_status: str | None
    reason: str | None
    category: str | None
    occurred_at: datetime | None
    raw: Mapping[str, Any] = field(default_factory=dict)


# Template events that leave the template in a status (REINSTATED: a paused template is approved again).
_EVENT_STATUS = {
    "approved": "approved", "rejected": "rejected", "pending": "pending", "paused": "paused",
    "disabled": "disabled", "in_appeal": "in_appeal", "pending_deletion": "pending_deletion",
    "deleted": "deleted", "reinstated": "approved", "archived": "archived", "limit_exceeded": "limit_exceeded",
}


# ---- sending ---------------------------------------------------------------------------------------

class WhatsAppCloudProvider:
    """Sends one message per `POST /{version}/{phone_number_id}/messages`; submits and lists the
    WABA's message templates."""

    key = KEY
    channel: Channel = "whatsapp"

    def __init__(self, phone_number_id: str, access_token: str, *, waba_id: str | None = None,
                 api_version: str = DEFAULT_API_VERSION, base_url: str = DEFAULT_BASE_URL,
                 client: httpx.AsyncClient | None = None, clock: Clock | None = None) -> None:
        if not access_token.strip():
            raise ProviderConfigError("no WhatsApp access token: create a system user token with the "
                                      "whatsapp_business_messaging permission (Business Settings > System users)")
        _check_graph_id(phone_number_id, "phone_number_id")
        if waba_id is not None:
            _check_graph_id(waba_id, "waba_id")
        if not _VERSION.match(api_version):
            raise ProviderConfigError(f"WhatsApp api_version {api_version!r} must look like v21.0")
        if not base_url.startswith(("https://", "http://")):
            raise ProviderConfigError(f"WhatsApp base_url {base_url!r} must start with https://")
        self.phone_number_id = phone_number_id
        self.waba_id = waba_id
        self._root = f"{base_url.rstrip('/')}/{api_version}"
        self._headers = {"Authorization": f"Bearer {access_token.strip()}", "Accept": "application/json"}
        self._owns_client = client is None
        self._client = client or default_client()
        self._clock = clock or SystemClock()

    async def send(self, message: OutboundMessage) -> SendResult:
        body = orjson.dumps(message_body(message))
        url = f"{self._root}/{self.phone_number_id}/messages"
        try:
            response = await self._client.post(url, content=body,
                                               headers={**self._headers, "Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            return transport_failure(message.id, exc, "WhatsApp")
        return send_outcome(message.id, response, self._clock.now())

    async def submit_template(self, name: str, language: str, category: str,
                              components: Sequence[Mapping[str, Any]], *,
                              parameter_format: str | None = None) -> WhatsAppTemplate:
        """Submits a template for Meta's review; the answer says whether it is PENDING (the usual)
        or already APPROVED/REJECTED. `components` are Meta's (HEADER, BODY, FOOTER, BUTTONS with
        their examples). Raises InvalidInput for arguments Meta would refuse, GraphApiError when
        Meta refuses or does not answer."""
        body = template_submission(name, language, category, components, parameter_format)
        answer = await self._graph("POST", self._templates_url(), content=orjson.dumps(body))
        return WhatsAppTemplate(id=text_or_none(str(answer.get("id") or "")), name=body["name"],
                                language=body["language"],
                                category=_lower(answer.get("category")) or body["category"].lower(),
                                status=_lower(answer.get("status")))

    async def list_templates(self) -> list[WhatsAppTemplate]:
        """Every template of the WABA, one entry per language version, following the `after`
        cursor until Meta names no next page."""
        templates: list[WhatsAppTemplate] = []
        after: str | None = None
        for _page in range(MAX_TEMPLATE_PAGES):
            params = {"fields": TEMPLATE_FIELDS, "limit": str(TEMPLATE_PAGE_SIZE)}
            if after:
                params["after"] = after
            answer = await self._graph("GET", self._templates_url(), params=params)
            templates.extend(_templates_in(answer))
            cursor = _next_cursor(answer)
            if cursor is None or cursor == after:
                return templates
            after = cursor
        raise GraphApiError(f"WhatsApp template list did not end after {MAX_TEMPLATE_PAGES} pages",
                            FailureReason.UNKNOWN)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def _templates_url(self) -> str:
        if not self.waba_id:
            raise ProviderConfigError("whatsapp_cloud: waba_id (the WhatsApp Business Account id, WhatsApp Manager > "
                                      "Account tools) is required to submit or list templates")
        return f"{self._root}/{self.waba_id}/message_templates"

    async def _graph(self, method: str, url: str, *, content: bytes | None = None,
                     params: Mapping[str, str] | None = None) -> Json:
        headers = {**self._headers, **({"Content-Type": "application/json"} if content is not None else {})}
        try:
            response = await self._client.request(method, url, content=content, params=params, headers=headers)
        except httpx.HTTPError as exc:
            raise GraphApiError(f"no answer from WhatsApp ({type(exc).__name__}: {exc})"[:DETAIL_LIMIT],
                                FailureReason.PROVIDER_DOWN) from exc
        if not 200 <= response.status_code < 300:
            error = GraphErrorBody.of(response.content)
            code = error.code if error else None
            said = error.said() if error else response.text.strip()[:300]
            raise GraphApiError(error_detail("WhatsApp", response.status_code, said),
                                error_meaning(code, response.status_code).reason,
                                http_status=response.status_code, code=code)
        answer = json_object(response.content)
        if answer is None:
            raise GraphApiError(f"WhatsApp answered HTTP {response.status_code} without a JSON object",
                                FailureReason.UNKNOWN, http_status=response.status_code)
        return answer


def _check_graph_id(value: str, name: str) -> None:
    if not _GRAPH_ID.match(value or ""):
        raise ProviderConfigError(f"WhatsApp {name} {value!r} must be the numeric id Meta shows "
                                  "(WhatsApp Manager > API setup)")


def message_body(message: OutboundMessage) -> Json:
    """The Cloud API JSON for one message; our id in biz_opaque_callback_data."""
    content = _whatsapp_of(message)
    if len(message.id.encode()) > CALLBACK_DATA_LIMIT:
        raise ValueError(f"message id {message.id[:40]}... is longer than biz_opaque_callback_data's 512 bytes")
    body: Json = {"messaging_product": "whatsapp", "recipient_type": "individual", "to": wa_recipient(message.to),
                  "biz_opaque_callback_data": message.id}
    kind, payload = _typed_content(content)
    body["type"] = kind
    body[kind] = payload
    return body


def _whatsapp_of(message: OutboundMessage) -> WhatsAppContent:
    if message.channel != "whatsapp" or message.whatsapp is None:
        raise UnsupportedFeature(f"the WhatsApp Cloud API sends WhatsApp messages; message {message.id} is a "
                                 f"{message.channel} message without WhatsApp content")
    return message.whatsapp


def wa_recipient(to: str) -> str:
    """An E.164 number as Cloud API's `to` (the digits, as WhatsApp ids are written)."""
    return to.strip().removeprefix("+")


def _typed_content(content: WhatsAppContent) -> tuple[str, Json]:
    kinds = [content.is_template, content.text is not None, content.media_type is not None]
    if sum(kinds) != 1:
        raise ValueError("WhatsApp content must be exactly one of: a template, a text, a media message")
    if content.is_template:
        return "template", _template_object(content)
    if content.text is not None:
        if not content.text.strip():
            raise ValueError("a WhatsApp text message needs a non-empty text")
        return "text", {"body": content.text}
    return _media_object(content)


def _template_object(content: WhatsAppContent) -> Json:
    if not content.template_language:
        raise ValueError(f"WhatsApp template {content.template_name!r} needs its language code (e.g. en_US)")
    template: Json = {"name": content.template_name,
                      "language": {"code": meta_language(content.template_language)}}
    if content.template_parameters:
        template["components"] = [{"type": "body", "parameters": [
            {"type": "text", "text": value} for value in content.template_parameters]}]
    return template


def _media_object(content: WhatsAppContent) -> tuple[str, Json]:
    kind = content.media_type
    assert kind is not None
    if not content.media_url:
        raise ValueError(f"a WhatsApp {kind} message needs the media's URL")
    media: Json = {"link": content.media_url}
    if content.caption:
        if kind == "audio":
            raise UnsupportedFeature("WhatsApp audio messages carry no caption")
        media["caption"] = content.caption
    if kind == "document":
        name = basename(urlsplit(content.media_url).path)
        if "." in name:    # the client picks the file icon from the extension
            media["filename"] = name
    return kind, media


def meta_language(code: str) -> str:
    """A language tag as Meta writes template languages: pt-BR -> pt_BR, en -> en."""
    return code.strip().replace("-", "_")


def send_outcome(message_id: str, response: httpx.Response, now: datetime) -> SendResult:
    status = response.status_code
    if 200 <= status < 300:
        return _accepted(message_id, response)
    error = GraphErrorBody.of(response.content)
    code = error.code if error else None
    detail = error_detail("WhatsApp", status, error.said() if error else response.text.strip()[:300])
    provider_code = str(code) if code is not None else str(status)
    meaning = error_meaning(code, status)
    if meaning.retry:
        return SendResult.retry(message_id, meaning.reason, detail, provider_code=provider_code,
                                retry_after=retry_after_seconds(response.headers.get("retry-after"), now),
                                maybe_sent=status in (502, 504))
    return SendResult.failed(message_id, meaning.reason, detail, provider_code=provider_code)


def _accepted(message_id: str, response: httpx.Response) -> SendResult:
    messages = (json_object(response.content) or {}).get("messages")
    first = messages[0] if isinstance(messages, list) and messages and isinstance(messages[0], dict) else {}
    state = text_or_none(first.get("message_status"))
    return SendResult.accepted(message_id, text_or_none(first.get("id")), detail=state or "")


def template_submission(name: str, language: str, category: str, components: Sequence[Mapping[str, Any]],
                        parameter_format: str | None = None) -> Json:
    """The create-template JSON, after the checks Meta would otherwise fail the request for."""
    if not _TEMPLATE_NAME.match(name):
        raise InvalidInput.on("name", "use 1-512 lower-case letters, digits and underscores (Meta's rule)")
    if not _LANGUAGE.match(language.strip()):
        raise InvalidInput.on("language", "use a language code WhatsApp supports, e.g. en_US, pt_BR or es")
    if category.upper() not in TEMPLATE_CATEGORIES:
        raise InvalidInput.on("category", "must be MARKETING, UTILITY or AUTHENTICATION")
    if not components or not all(isinstance(c, Mapping) and c.get("type") for c in components):
        raise InvalidInput.on("components", "give at least a BODY component; every component needs its type")
    body: Json = {"name": name, "language": meta_language(language), "category": category.upper(),
                  "components": [dict(c) for c in components]}
    if parameter_format is not None:
        if parameter_format.upper() not in ("POSITIONAL", "NAMED"):
            raise InvalidInput.on("parameter_format", "must be POSITIONAL or NAMED")
        body["parameter_format"] = parameter_format.upper()
    return body


def _templates_in(answer: Mapping[str, Any]) -> Iterator[WhatsAppTemplate]:
    data = answer.get("data")
    if not isinstance(data, list):
        raise GraphApiError("WhatsApp template list answer has no `data` array", FailureReason.UNKNOWN)
    for item in data:
        if isinstance(item, dict) and text_or_none(item.get("name")) and text_or_none(item.get("language")):
            yield WhatsAppTemplate(id=text_or_none(str(item.get("id") or "")), name=item["name"].strip(),
                                   language=item["language"].strip(), category=_lower(item.get("category")),
                                   status=_lower(item.get("status")),
                                   rejected_reason=_reason_or_none(item.get("rejected_reason")))


def _next_cursor(answer: Mapping[str, Any]) -> str | None:
    """The `after` cursor when Meta says there is a next page (Graph: no `next`, last page)."""
    paging = answer.get("paging")
    if not isinstance(paging, dict) or not paging.get("next"):
        return None
    cursors = paging.get("cursors")
    return text_or_none(cursors.get("after")) if isinstance(cursors, dict) else None


def _lower(value: object) -> str | None:
    text = text_or_none(value)
    return text.lower() if text else None


def _reason_or_none(value: object) -> str | None:
    """Meta writes "NONE" when there is no reason."""
    text = text_or_none(value)
    return None if text is None or text.upper() == "NONE" else text


# ---- webhooks ----------------------------------------------------------------------------------------

def verify_subscription(query: Mapping[str, str], verify_tokens: Sequence[str]) -> str | None:
    """The webhook subscription handshake (GET ?hub.mode=subscribe&hub.verify_token=...&
    hub.challenge=...): the challenge to echo with 200 when the token is one of ours, else None
    (answer 403). Blank configured tokens never match."""
    if query.get("hub.mode") != "subscribe":
        return None
    token = (query.get("hub.verify_token") or "").encode()
    challenge = query.get("hub.challenge") or ""
    if not challenge or len(challenge) > 512 or not (challenge.isascii() and challenge.isprintable()):
        return None
    matches = [hmac.compare_digest(token, known.encode()) for known in verify_tokens if known]
    return challenge if any(matches) else None


def verify_signature(request: CallbackRequest, app_secrets: Sequence[str]) -> None:
    """X-Hub-Signature-256 must be "sha256=" + the hex HMAC-SHA256 of the raw body under one of
    the app secrets; else SignatureError."""
    keys = [secret for secret in app_secrets if secret]
    if not keys:
        raise ProviderConfigError("no WhatsApp app secret configured to verify webhooks: copy it from the App "
                                  "Dashboard (App settings > Basic > App secret)")
    header = request.headers.get(SIGNATURE_HEADER, "").strip()
    if not header:
        raise SignatureError("not a signed WhatsApp webhook: X-Hub-Signature-256 header missing")
    algorithm, _, given = header.partition("=")
    if algorithm.lower() != "sha256" or not re.fullmatch(r"[0-9a-fA-F]{64}", given):
        raise SignatureError("X-Hub-Signature-256 is not sha256=<64 hex digits>")
    given_digest = bytes.fromhex(given)
    for key in keys:
        if hmac.compare_digest(hmac.new(key.encode(), request.body, hashlib.sha256).digest(), given_digest):
            return
    raise SignatureError("X-Hub-Signature-256 does not match the body for any configured app secret")


class WhatsAppCloudParser:
    """Verifies and reads the WABA webhooks sent to one callback URL: statuses (`parse_callback`),
    inbound messages (`parse_inbound`), template status updates (`parse_template_updates`) and the
    subscription handshake (`verify_subscription`).

    `secrets` given to the parse methods are app secrets (the current and, during a rotation, the
    previous); the app secrets and verify tokens given here are accepted too. A body whose
    signature verified but that is not a JSON object raises ValueError (nothing is stored).

    One Meta app may send the webhooks of every number of the WABA to one URL: nothing is
    filtered by phone number id here (statuses find their message by our id; an inbound message
    names our number in `recipient`). Account-level `value.errors` name no message and are not
    events."""

    key = KEY

    def __init__(self, app_secrets: Sequence[str] = (), verify_tokens: Sequence[str] = ()) -> None:
        self.app_secrets = tuple(s for s in app_secrets if s)
        self.verify_tokens = tuple(t for t in verify_tokens if t)

    def verify_subscription(self, query: Mapping[str, str], verify_tokens: Sequence[str] = ()) -> str | None:
        return verify_subscription(query, [*verify_tokens, *self.verify_tokens])

    async def parse_callback(self, request: CallbackRequest, secrets: Sequence[str],
                             now: datetime) -> list[DeliveryEvent]:
        body = self._verified(request, secrets)
        return [event for value in _changed_values(body, "messages")
                for status in _records(value, "statuses") for event in events_of_status(status)]

    async def parse_inbound(self, request: CallbackRequest, secrets: Sequence[str],
                            now: datetime) -> list[InboundMessage]:
        body = self._verified(request, secrets)
        inbound = (inbound_message(record, _phone_number_id(value))
                   for value in _changed_values(body, "messages") for record in _records(value, "messages"))
        return [message for message in inbound if message is not None]

    async def parse_template_updates(self, request: CallbackRequest, secrets: Sequence[str],
                                     now: datetime) -> list[TemplateStatusUpdate]:
        body = self._verified(request, secrets)
        changes = _entry_values(body, "message_template_status_update")
        updates = (template_update(entry, value) for entry, value in changes)
        return [update for update in updates if update is not None]

    def _verified(self, request: CallbackRequest, secrets: Sequence[str]) -> Json:
        verify_signature(request, [*secrets, *self.app_secrets])
        body = json_object(request.body)
        if body is None:
            raise ValueError("WhatsApp webhook body is not a JSON object")
        return body


def _entry_values(body: Mapping[str, Any], wanted: str) -> Iterator[tuple[Json, Json]]:
    """(entry, change value) for each change of the field `wanted` in a WABA webhook."""
    if body.get("object") != "whatsapp_business_account":
        return
    for entry in _records(body, "entry"):
        for change in _records(entry, "changes"):
            value = change.get("value")
            if change.get("field") == wanted and isinstance(value, dict):
                yield entry, value


def _changed_values(body: Mapping[str, Any], wanted: str) -> Iterator[Json]:
    return (value for _entry, value in _entry_values(body, wanted))


def _records(container: Mapping[str, Any], name: str) -> list[Json]:
    items = container.get(name)
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _phone_number_id(value: Mapping[str, Any]) -> str | None:
    metadata = value.get("metadata")
    return text_or_none(metadata.get("phone_number_id")) if isinstance(metadata, dict) else None


def _e164(wa_id: object) -> str | None:
    digits = text_or_none(wa_id)
    return f"+{digits}" if digits and digits.isdigit() else None


# ---- statuses -----------------------------------------------------------------------------------------

_STATUS_KINDS: dict[str, EventKind] = {"sent": "sent", "delivered": "delivered", "read": "read"}


def events_of_status(status: Mapping[str, Any]) -> list[DeliveryEvent]:
    """One status record as events. A "failed" message is final (Meta does not retry it): the
    recipient's own refusals (not on WhatsApp, opted out of marketing) are bounces; anything else
    Meta would not carry is a rejection. An opt-out from marketing is also an unsubscribe."""
    state = text_or_none(status.get("status"))
    if state in _STATUS_KINDS:
        return [_status_event(_STATUS_KINDS[state], status)]
    if state != "failed":
        return []       # deleted, warning, played...: nothing Herald tracks
    errors = _records(status, "errors")
    first = errors[0] if errors else {}
    code = _int_or_none(first.get("code"))
    reason = error_meaning(code).reason
    kind: EventKind = "bounced" if reason in (FailureReason.INVALID_ADDRESS, FailureReason.UNSUBSCRIBED) else "rejected"
    failed = _status_event(kind, status, reason=reason, permanent=True,
                           provider_code=str(code) if code is not None else None, detail=_error_text(first))
    if reason is FailureReason.UNSUBSCRIBED:
        return [failed, _status_event("unsubscribed", status, reason=reason, provider_code=failed.provider_code)]
    return [failed]


def _status_event(kind: EventKind, status: Mapping[str, Any], **details: Any) -> DeliveryEvent:
    return DeliveryEvent(kind=kind, provider=KEY, occurred_at=unix_time(status.get("timestamp")),
                         message_id=text_or_none(status.get("biz_opaque_callback_data")),
                         provider_message_id=text_or_none(status.get("id")),
                         recipient=_e164(status.get("recipient_id")), raw=status, **details)


def _error_text(error: Mapping[str, Any]) -> str:
    error_data = error.get("error_data")
    parts = [text_or_none(error.get("title")), text_or_none(error.get("message")),
             text_or_none(error_data.get("details")) if isinstance(error_data, dict) else None]
    unique = list(dict.fromkeys(p for p in parts if p))
    return "; ".join(unique)[:DETAIL_LIMIT]


# ---- inbound messages -------------------------------------------------------------------------------------

def inbound_message(record: Mapping[str, Any], phone_number_id: str | None) -> InboundMessage | None:
    """A message a WhatsApp user sent to our number; None for system notices (a user changed
    number) and for senders known only by a business-scoped user id (no phone number)."""
    sender = _e164(record.get("from"))
    kind = text_or_none(record.get("type"))
    if sender is None or kind == "system":
        return None
    return InboundMessage(channel="whatsapp", provider=KEY, sender=sender, recipient=phone_number_id,
                          text=inbound_text(record), provider_message_id=text_or_none(record.get("id")),
                          received_at=unix_time(record.get("timestamp")), raw=record)


def inbound_text(record: Mapping[str, Any]) -> str:
    """What the user said: the text, the button or list row they chose, a media caption, a
    reaction's emoji; "" for what has no words (a sticker, a voice note, a location pin)."""
    kind = text_or_none(record.get("type")) or ""
    part = record.get(kind)
    if not isinstance(part, dict):
        return ""
    if kind == "text":
        return text_or_none(part.get("body")) or ""
    if kind == "button":          # a template's quick-reply button
        return text_or_none(part.get("text")) or text_or_none(part.get("payload")) or ""
    if kind == "interactive":
        return _interactive_text(part)
    if kind == "reaction":
        return text_or_none(part.get("emoji")) or ""
    if kind == "location":
        return text_or_none(part.get("name")) or text_or_none(part.get("address")) or ""
    return text_or_none(part.get("caption")) or ""


def _interactive_text(interactive: Mapping[str, Any]) -> str:
    """button_reply / list_reply carry {id, title}; a Flow's nfm_reply carries a body."""
    reply = interactive.get(str(interactive.get("type") or ""))
    if not isinstance(reply, dict):
        return ""
    return text_or_none(reply.get("title")) or text_or_none(reply.get("body")) or text_or_none(reply.get("id")) or ""


# ---- template status updates ----------------------------------------------------------------------------

def template_update(entry: Mapping[str, Any], value: Mapping[str, Any]) -> TemplateStatusUpdate | None:
    name = text_or_none(value.get("message_template_name"))
    event = _lower(value.get("event"))
    if name is None or event is None:
        return None
    template_id = value.get("message_template_id")
    return TemplateStatusUpdate(
        waba_id=text_or_none(str(entry.get("id") or "")), template_id=text_or_none(str(template_id or "")),
        name=name, language=text_or_none(value.get("message_template_language")) or "", event=event,
        approval_status=_EVENT_STATUS.get(event), reason=_reason_or_none(value.get("reason")),
        category=_lower(value.get("message_template_category")), occurred_at=unix_time(entry.get("time")),
        raw=value)


# ---- factories the registry wires in ------------------------------------------------------------------------

def make_provider(config: Mapping[str, Any], secrets: Mapping[str, str]) -> WhatsAppCloudProvider:
    only_known(config, CONFIG_KEYS, KEY)
    options: dict[str, Any] = {name: str(config[name]) for name in ("api_version", "base_url") if config.get(name)}
    waba_id = config.get("waba_id")
    return WhatsAppCloudProvider(str(need(config, "phone_number_id", KEY)), str(need(secrets, "access_token", KEY)),
                                 waba_id=str(waba_id) if waba_id else None, **options)


def make_parser(config: Mapping[str, Any], secrets: Mapping[str, str]) -> WhatsAppCloudParser:
    only_known(config, CONFIG_KEYS, KEY)
    app_secrets = [secrets.get(name, "") for name in ("app_secret", "previous_app_secret")]
    if not any(app_secrets):
        raise ProviderConfigError("whatsapp_cloud: app_secret is required to verify webhooks (App Dashboard > "
                                  "App settings > Basic > App secret)")
    verify_tokens = [secrets.get(name, "") for name in ("verify_token", "previous_verify_token")]
    return WhatsAppCloudParser(app_secrets, verify_tokens)
