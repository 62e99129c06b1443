"""What every channel provider (herald.channels.<channel>.<provider>) speaks, whatever its wire
format: the message handed to it, the normalised outcome of a send, the normalised event parsed
from its callbacks, and one failure taxonomy. Pure types; no IO.

The contract of a provider (see `Provider`):
  * `send(message)` returns a `SendResult`. It never raises for a refusal the provider
    expressed (that is an outcome), only for a bug. Transport errors that may have delivered the
    message (a connection dropped after DATA, a timeout after the request was written) are
    `retry` outcomes with `maybe_sent=True`: our id (`message.id`, the SMTP Message-ID or the
    provider's metadata) lets feedback reconcile a duplicate (G4).
  * `await parse_callback(request, secrets, now)` verifies the provider's signature on the raw body first
    (raises `SignatureError`, so nothing is stored), then returns the `DeliveryEvent`s it says.
  * Adapters translate, never police: no consent, rate limits or retries inside a provider.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Protocol, runtime_checkable

Channel = Literal["email", "sms", "whatsapp", "push", "inbox"]
Purpose = Literal["marketing", "transactional"]


class FailureReason(StrEnum):
    """Why a message did not (or will not) reach its recipient; one taxonomy for all channels.
    The provider's own code travels beside it (`provider_code`)."""

    INVALID_ADDRESS = "invalid_address"    # syntax, user unknown (5.1.1), unroutable number
    MAILBOX_FULL = "mailbox_full"          # 4.2.2 / 5.2.2 quota
    HOST_UNKNOWN = "host_unknown"          # no MX/A for the domain (5.1.2, 5.4.4)
    BLOCKED = "blocked"                    # reputation, blocklist, spam filter (5.7.1 ...)
    COMPLAINT = "complaint"                # the recipient reported the message (ARF, FBL)
    UNSUBSCRIBED = "unsubscribed"          # the recipient opted out at the provider
    POLICY = "policy"                      # DMARC/auth/size/content policy of the receiver
    CONTENT_REJECTED = "content_rejected"  # the provider refused the content itself
    THROTTLED = "throttled"                # rate limited: try later (429, 4.7.x, 421)
    PROVIDER_DOWN = "provider_down"        # 5xx from an HTTP provider, connection refused
    AUTH_FAILED = "auth_failed"            # our credentials were refused (fix the settings)
    EXPIRED = "expired"                    # gave up after retrying for too long
    TRANSIENT = "transient"                # any other temporary failure
    UNKNOWN = "unknown"                    # a permanent failure we could not classify


class SignatureError(Exception):
    """A callback not signed by the provider: missing, malformed or wrong signature."""


class CallbackUnavailable(Exception):
    """A callback cannot be verified or acted on right now (e.g. the signing certificate could not
    be fetched): answer 5xx so the provider retries; it is not a forgery."""


class ProviderConfigError(Exception):
    """The provider's settings are unusable; the message says what to fix."""


class UnsupportedFeature(Exception):
    """The message asks for something this provider cannot do (raised, never silently dropped)."""


@dataclass(frozen=True, slots=True)
class Attachment:
    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class EmailContent:
    """A rendered email. `headers` are extra headers (List-Unsubscribe, ...) in order."""

    from_address: str          # bare address: shop@example.com (may be internationalised)
    from_name: str | None
    subject: str
    html: str | None
    text: str
    reply_to: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    attachments: tuple[Attachment, ...] = ()


@dataclass(frozen=True, slots=True)
class SmsContent:
    """A rendered SMS. `sender`: an E.164 number, a short code or an alphanumeric sender id; None
    lets the provider choose (e.g. a Twilio Messaging Service). Segments are counted by
    domain/sms.py, never here."""

    text: str
    sender: str | None = None


@dataclass(frozen=True, slots=True)
class WhatsAppContent:
    """A WhatsApp message: an approved template (name, language, body parameters in order) or,
    inside the 24-hour window, a session message (text, or media by URL with a caption)."""

    template_name: str | None = None
    template_language: str | None = None
    template_parameters: tuple[str, ...] = ()
    text: str | None = None
    media_type: Literal["image", "document", "video", "audio"] | None = None
    media_url: str | None = None
    caption: str | None = None

    @property
    def is_template(self) -> bool:
        return self.template_name is not None


@dataclass(frozen=True, slots=True)
class PushContent:
    """A push notification. The target is OutboundMessage.to (an FCM/APNs device token or a Web
    Push endpoint URL) and, for Web Push, the subscription's keys in `keys` (p256dh, auth)."""

    title: str
    body: str
    url: str | None = None
    icon: str | None = None
    data: Mapping[str, str] = field(default_factory=dict)
    keys: Mapping[str, str] = field(default_factory=dict)
    ttl_seconds: int = 86400


@dataclass(frozen=True, slots=True)
class DkimKey:
    """The key an email is DKIM-signed with (d=domain, s=selector), from the sending domain."""

    domain: str
    selector: str
    private_key_pem: bytes
    generated_by_herald: bool = False   # a key Herald made itself may skip OpenSSL's slow RSA checks


@dataclass(frozen=True, slots=True)
class OutboundMessage:
    """One message to one recipient, ready for a provider.

    `id` is ours (messages.id): the SMTP Message-ID's left part and the reference every
    provider echoes back in its callbacks, so a callback finds its message."""

    id: str
    workspace_id: str
    channel: Channel
    purpose: Purpose
    to: str                    # email address, E.164 phone, device token, contact id
    email: EmailContent | None = None
    sms: SmsContent | None = None
    whatsapp: WhatsAppContent | None = None
    push: PushContent | None = None
    sending_domain: str | None = None   # email: the domain of Message-ID and the DKIM d=
    metadata: Mapping[str, str] = field(default_factory=dict)  # "return_path": the envelope sender
    dkim: DkimKey | None = None         # email: sign with this key (SMTP; ESPs sign themselves)


SendStatus = Literal["accepted", "retry", "failed"]


@dataclass(frozen=True, slots=True)
class SendResult:
    status: SendStatus
    message_id: str                          # ours
    provider_message_id: str | None = None   # the provider's, when it told us
    reason: FailureReason | None = None      # set for retry and failed
    provider_code: str | None = None         # e.g. "550 5.1.1", "21211", "131026"
    detail: str = ""                         # the provider's words, for the send log
    retry_after: float | None = None         # seconds, when the provider said (Retry-After)
    maybe_sent: bool = False                 # retry after an ambiguous transport failure

    @classmethod
    def accepted(cls, message_id: str, provider_message_id: str | None = None, detail: str = "") -> SendResult:
        return cls("accepted", message_id, provider_message_id, detail=detail)

    @classmethod
    def retry(cls, message_id: str, reason: FailureReason, detail: str, *, provider_code: str | None = None,
              retry_after: float | None = None, maybe_sent: bool = False) -> SendResult:
        return cls("retry", message_id, None, reason, provider_code, detail, retry_after, maybe_sent)

    @classmethod
    def failed(cls, message_id: str, reason: FailureReason, detail: str, *,
               provider_code: str | None = None) -> SendResult:
        return cls("failed", message_id, None, reason, provider_code, detail)


EventKind = Literal[
    "sent",          # the provider handed it on (e.g. SES Send, Twilio sent)
    "delivered",     # the receiving system accepted it
    "deferred",      # temporary failure, the provider retries
    "bounced",       # permanent or final failure (reason says why)
    "rejected",      # the provider refused to send it at all
    "complained",    # marked as spam by the recipient
    "opened",
    "clicked",
    "unsubscribed",
    "read",          # WhatsApp/push read receipt
]


@dataclass(frozen=True, slots=True)
class DeliveryEvent:
    """One normalised thing a provider (or a DSN/ARF report) told us about one recipient."""

    kind: EventKind
    provider: str                            # provider key, or "dsn" / "arf" for inbound mail
    occurred_at: datetime | None             # when the provider says it happened (UTC)
    message_id: str | None = None            # ours, when the callback carries it
    provider_message_id: str | None = None
    recipient: str | None = None
    reason: FailureReason | None = None
    permanent: bool | None = None            # for bounced/deferred
    status: str | None = None                # enhanced status code, e.g. "5.1.1"
    reply_code: int | None = None            # SMTP reply code, e.g. 550
    provider_code: str | None = None
    detail: str = ""                         # diagnostic text
    url: str | None = None                   # for clicked
    raw: Mapping[str, Any] = field(default_factory=dict)  # the provider's own record, kept


@dataclass(frozen=True, slots=True)
class InboundMessage:
    """A message a contact sent us (an SMS, a WhatsApp message), parsed from a provider's
    verified webhook. Feeds SMS keywords (STOP/HELP/START) and the WhatsApp 24-hour window."""

    channel: Channel
    provider: str
    sender: str                   # E.164
    recipient: str | None         # our number / phone number id
    text: str
    provider_message_id: str | None
    received_at: datetime | None
    raw: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CallbackRequest:
    """A provider's HTTP callback as received: verified on `body` before anything is parsed."""

    method: str
    url: str                      # the full URL the provider called (Twilio/SNS sign it)
    headers: Mapping[str, str]    # lower-cased names
    body: bytes


class Provider(Protocol):
    @property
    def key(self) -> str: ...          # "smtp", "ses", "sendgrid", "mailgun", ...

    @property
    def channel(self) -> Channel: ...

    async def send(self, message: OutboundMessage) -> SendResult: ...

    async def aclose(self) -> None: ...


@runtime_checkable
class EventSource(Protocol):
    """A provider whose delivery receipts and incoming messages arrive over its own connection (an
    SMPP bind) instead of an HTTP callback: `events()` yields them in arrival order until `aclose()`
    ends it. One consumer per provider object (worker/smpp_receipts.py)."""

    def events(self) -> AsyncIterator[DeliveryEvent | InboundMessage]: ...

    async def aclose(self) -> None: ...


class CallbackParser(Protocol):
    """The part of a provider that reads its status callbacks (webhooks)."""

    @property
    def key(self) -> str: ...

    async def parse_callback(self, request: CallbackRequest, secrets: Sequence[str],
                             now: datetime) -> list[DeliveryEvent]: ...


@dataclass(frozen=True, slots=True)
class DnsRecord:
    name: str
    type: str
    value: str
    strings: tuple[str, ...]   # the TXT value split into <= 255-byte strings
    purpose: str               # "spf" | "dkim" | "dmarc"


@dataclass(frozen=True, slots=True)
class MechanismCheck:
    ok: bool
    found: str | None
    problem: str
    fix: str


@dataclass(frozen=True, slots=True)
class ProviderTemplate:
    """One language version of a message template as the provider (Meta) knows it, in the
    provider's words lower-cased: `category` (marketing | utility | authentication) and `status`
    (approved | pending | rejected | paused | disabled | in_appeal | ...; None when a status
    webhook implies none, e.g. "flagged")."""

    name: str
    language: str
    category: str | None
    status: str | None
    id: str | None = None
    rejected_reason: str | None = None


class ProviderRequestError(Exception):
    """A provider's management API (e.g. WhatsApp templates) refused the request or did not
    answer; `reason` says what to do (PROVIDER_DOWN/THROTTLED: later; AUTH_FAILED: fix the account)."""

    def __init__(self, detail: str, reason: FailureReason) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


class ChannelAdapters(Protocol):
    """What services need from herald.channels, without naming a concrete adapter
    (bootstrap passes the implementation in channels/registry.py)."""

    def provider_kinds(self, channel: Channel) -> Sequence[str]: ...

    def make_provider(self, kind: str, config: Mapping[str, Any], secrets: Mapping[str, str]) -> Provider: ...

    def callback_parser(self, kind: str, config: Mapping[str, Any],
                        secrets: Mapping[str, str]) -> CallbackParser: ...

    def generate_dkim_key(self, algorithm: str) -> tuple[bytes, str]: ...

    def dns_records(self, domain: str, selector: str, dkim_txt: str, spf_include: str | None,
                    dmarc_rua: str | None) -> list[DnsRecord]: ...

    async def check_domain(self, domain: str, selector: str, dkim_txt: str,
                           spf_include: str | None) -> Mapping[str, MechanismCheck]: ...

    def parse_report(self, raw: bytes) -> list[DeliveryEvent]: ...

    async def list_templates(self, provider: Provider) -> list[ProviderTemplate]:
        """Every message template of the provider's account (UnsupportedFeature for a provider
        without templates, ProviderRequestError when the provider refuses or does not answer)."""
        ...

    async def submit_template(self, provider: Provider, name: str, language: str, category: str,
                              components: Sequence[Mapping[str, Any]]) -> ProviderTemplate:
        """Submit a template for the provider's review; the answer (usually status "pending")."""
        ...

    async def template_updates(self, parser: CallbackParser, request: CallbackRequest, secrets: Sequence[str],
                               now: datetime) -> list[ProviderTemplate]:
        """The template status changes a verified callback carries ([] for a provider that sends none)."""
        ...
