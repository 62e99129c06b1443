"""Amazon SES (API v2) out, SES events delivered by Amazon SNS over HTTPS in. Pure translation
between `herald.domain.delivery` and AWS's wire formats; no database, no logging.

Sources (checked, not guessed):
  * SendEmail (SES API v2 reference; botocore's sesv2 2019-09-27 service model):
    `POST /v2/email/outbound-emails`, rest-json, SigV4 with signing name "ses" on the endpoint
    `email.<region>.amazonaws.com`. Body: FromEmailAddress, Destination.ToAddresses,
    Content.Raw.Data (base64 of the MIME message when calling HTTPS directly), EmailTags
    [{Name, Value}] (ASCII letters, digits, "_" and "-" only, at most 256 characters each),
    ConfigurationSetName. 200 answers {"MessageId": ...}.
    Modelled errors: TooManyRequestsException (429), LimitExceededException,
    AccountSuspendedException, SendingPausedException, MessageRejected,
    MailFromDomainNotVerifiedException, BadRequestException (400), NotFoundException (404).
    The error code is in the `x-amzn-ErrorType` header ("Code:http://..."), else the body's
    `__type`/`code`; the message in the body's `message`/`Message` (botocore RestJSONParser).
    Sending-quota errors ("Maximum sending rate exceeded", "Daily message quota exceeded") arrive
    as throttling errors (SES developer guide, "Errors related to the sending quotas").
    SES does not support SMTPUTF8: a destination's local part must be 7-bit ASCII, a non-ASCII
    domain Punycode (the Destination shape's documentation). DKIM is SES's (Easy DKIM).
  * SNS over HTTPS (SNS developer guide, "HTTP/HTTPS notification JSON format" and "Verifying the
    signatures of Amazon SNS messages"): a JSON envelope {Type, MessageId, TopicArn, Subject?,
    Message, Timestamp, SignatureVersion, Signature, SigningCertURL, SubscribeURL?, Token?}.
    The signed string is "Name\\nValue\\n" for, in byte order, Message, MessageId, Subject (if
    present), Timestamp, TopicArn, Type (Notification), or Message, MessageId, SubscribeURL,
    Timestamp, Token, TopicArn, Type (SubscriptionConfirmation, UnsubscribeConfirmation).
    SignatureVersion 1 is SHA1withRSA, 2 is SHA256withRSA (PKCS#1 v1.5), base64.
    The certificate is trusted because it is fetched over verified HTTPS from an SNS host
    (sns.<region>.amazonaws.com[.cn]), as the AWS SDK validators do; never from anywhere else.
  * SES events (SES developer guide, "Contents of event data that Amazon SES publishes to Amazon
    SNS" and "Amazon SNS notification contents"): event publishing through a configuration set
    sends `eventType` (Bounce, Complaint, Delivery, Send, Reject, Open, Click, Rendering Failure,
    DeliveryDelay, Subscription) with our EmailTags in `mail.tags`; identity feedback
    notifications send `notificationType` (Bounce, Complaint, Delivery) and no tags, so our id is
    then read from the original Message-ID header (`<id@domain>`, mime.py) when SES includes the
    headers. Fixtures and their sources: tests/channels/email/payloads/ses/README.md.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from herald.channels.email.aws import sign_v4
from herald.channels.email.classify import classify, parse_status
from herald.channels.email.mime import build_mime, transport_address
from herald.channels.http import DETAIL_LIMIT, default_client, json_object, retry_after_seconds, transport_failure
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
    UnsupportedFeature,
)

__all__ = [
    "CertificateUnavailable", "SesEventParser", "SesProvider", "SubscriptionNotConfirmed", "events_from_ses",
    "send_outcome", "sns_string_to_sign",
]

KEY = "ses"
SEND_PATH = "/v2/email/outbound-emails"
SIGNING_SERVICE = "ses"              # sesv2 metadata: endpointPrefix "email", signingName "ses"
MESSAGE_ID_TAG = "herald_message_id"

Json = dict[str, Any]
R = FailureReason

_REGION = re.compile(r"[a-z]{2}(?:-[a-z]+)+-\d{1,2}")
_TAG_VALUE = re.compile(r"[A-Za-z0-9_-]{1,256}")


# ---- sending ---------------------------------------------------------------------------------------

class SesProvider:
    """SES v2 SendEmail with the raw MIME of mime.build_mime; our id travels as the
    `herald_message_id` message tag and as the Message-ID's left part."""

    key = KEY
    channel: Channel = "email"

    def __init__(self, region: str, access_key_id: str, secret_access_key: str,
                 configuration_set: str | None = None, endpoint_url: str | None = None, *,
                 session_token: str | None = None, client: httpx.AsyncClient | None = None,
                 clock: Clock | None = None) -> None:
        if not _REGION.fullmatch(region or ""):
            raise ProviderConfigError(f"SES region {region!r} is not an AWS region name such as eu-west-1")
        if not access_key_id or not secret_access_key:
            raise ProviderConfigError("SES needs an access key id and its secret access key (an IAM user or role "
                                      "allowed ses:SendEmail and ses:SendRawEmail)")
        endpoint = (endpoint_url or f"https://email.{region}.amazonaws.com").rstrip("/")
        if not endpoint.startswith(("https://", "http://")):
            raise ProviderConfigError(f"SES endpoint {endpoint_url!r} must be an https:// URL")
        self.region = region
        self.url = endpoint + SEND_PATH
        self.configuration_set = configuration_set or None
        self._access_key_id = access_key_id
        self._secret_access_key = secret_access_key
        self._session_token = session_token or None
        self._owns_client = client is None
        self._client = client or default_client()
        self._clock = clock or SystemClock()

    async def send(self, message: OutboundMessage) -> SendResult:
        try:
            recipient = ses_address(message.to)
        except ValueError as exc:
            return SendResult.failed(message.id, R.INVALID_ADDRESS, f"SES cannot send to this address: {exc}")
        now = self._clock.now()
        body = self.request_body(message, recipient, now)
        try:
            response = await self._client.post(self.url, content=body, headers=self._headers(body, now))
        except httpx.RequestError as exc:
            return transport_failure(message.id, exc, "SES")
        return send_outcome(message.id, response, self._clock.now())

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def request_body(self, message: OutboundMessage, recipient: str, now: datetime) -> bytes:
        """The SendEmail JSON. Raises for a bug (no email content, an id SES cannot tag, a From
        address SES cannot carry), never for something SES would refuse."""
        if message.email is None:
            raise ValueError("an email message needs its EmailContent")
        if not _TAG_VALUE.fullmatch(message.id):
            raise ValueError("SES message tags take ASCII letters, digits, '_' and '-' only; the message id has others")
        try:
            sender = ses_address(message.email.from_address)
        except ValueError as exc:
            raise UnsupportedFeature(f"SES cannot send from this address: {exc}") from None
        request: Json = {
            "FromEmailAddress": sender,
            "Destination": {"ToAddresses": [recipient]},
            "Content": {"Raw": {"Data": base64.b64encode(build_mime(message, date=now)).decode("ascii")}},
            "EmailTags": [{"Name": MESSAGE_ID_TAG, "Value": message.id}],
        }
        if self.configuration_set:
            request["ConfigurationSetName"] = self.configuration_set
        return orjson.dumps(request)

    def _headers(self, body: bytes, now: datetime) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        headers |= sign_v4("POST", self.url, headers, body, access_key=self._access_key_id,
                           secret_key=self._secret_access_key, region=self.region, service=SIGNING_SERVICE,
                           now=now, session_token=self._session_token)
        return headers


def ses_address(address: str) -> str:
    """The address as SES takes it: no SMTPUTF8, so an ASCII local part and a Punycode domain."""
    local = address.rpartition("@")[0]
    if not local.isascii():
        raise ValueError("SES does not support SMTPUTF8: the part before the @ must be ASCII")
    return transport_address(address)


# Error codes by what they mean for the message. The credential codes come from SigV4 and IAM
# (any AWS rest-json service), the rest from the SendEmail model.
_THROTTLING = frozenset({"TooManyRequestsException", "LimitExceededException", "ThrottlingException", "Throttling",
                         "ThrottledException", "RequestThrottled", "RequestLimitExceeded", "SlowDown"})
_CREDENTIALS = frozenset({"UnrecognizedClientException", "InvalidSignatureException", "SignatureDoesNotMatch",
                          "IncompleteSignature", "IncompleteSignatureException", "MissingAuthenticationToken",
                          "MissingAuthenticationTokenException", "InvalidClientTokenId", "ExpiredToken",
                          "ExpiredTokenException", "AccessDenied", "AccessDeniedException", "NotAuthorized",
                          "RequestExpired"})
# The seller's SES account or settings must change before anything can be sent. A retry, not a
# failure: the message is kept while the settings are fixed (as for a refused SMTP AUTH).
_SETTINGS = {
    "SendingPausedException": "sending is paused for this SES account or configuration set",
    "MailFromDomainNotVerifiedException": "the custom MAIL FROM domain is not verified in SES",
    "NotFoundException": "a resource named in the settings (the configuration set?) does not exist in this region",
}
_ADDRESS_PROBLEM = re.compile(r"address|domain contains|local part|missing final '@|@domain", re.IGNORECASE)
_NOT_VERIFIED = re.compile(r"not verified|failed the check", re.IGNORECASE)


def send_outcome(message_id: str, response: httpx.Response, now: datetime) -> SendResult:
    """A SendEmail answer as a SendResult."""
    status = response.status_code
    if 200 <= status < 300:
        return _accepted(message_id, response)
    code, text = error_of(response)
    provider_code = code or f"HTTP {status}"
    detail = f"SES answered {status}{f' {code}' if code else ''}: {text or response.reason_phrase}"[:DETAIL_LIMIT]
    wait = retry_after(response.headers, now)
    if code in _THROTTLING or status == 429:
        return SendResult.retry(message_id, R.THROTTLED, detail, provider_code=provider_code, retry_after=wait)
    if code == "AccountSuspendedException":
        return SendResult.failed(message_id, R.AUTH_FAILED, detail, provider_code=provider_code)
    if code in _SETTINGS or code in _CREDENTIALS or status in (401, 403) or (
            code == "MessageRejected" and _NOT_VERIFIED.search(text)):
        hint = _SETTINGS.get(code or "", "SES refused our credentials or an identity is not verified")
        return SendResult.retry(message_id, R.AUTH_FAILED, f"{detail} ({hint})"[:DETAIL_LIMIT],
                                provider_code=provider_code, retry_after=wait)
    if status >= 500:
        # 503 is refused at the front door; after a 500/502/504 SES may have queued the message.
        return SendResult.retry(message_id, R.PROVIDER_DOWN, detail, provider_code=provider_code,
                                retry_after=wait, maybe_sent=status != 503)
    if code == "MessageRejected" or status == 413:
        return SendResult.failed(message_id, R.CONTENT_REJECTED, detail, provider_code=provider_code)
    if 400 <= status < 500:
        reason = R.INVALID_ADDRESS if _ADDRESS_PROBLEM.search(text) else R.UNKNOWN
        return SendResult.failed(message_id, reason, detail, provider_code=provider_code)
    return SendResult.retry(message_id, R.TRANSIENT, detail, provider_code=provider_code, retry_after=wait)


def _accepted(message_id: str, response: httpx.Response) -> SendResult:
    data = json_object(response.content)
    ses_id = data.get("MessageId") if data else None
    if isinstance(ses_id, str) and ses_id:
        return SendResult.accepted(message_id, ses_id)
    return SendResult.accepted(message_id, None, detail="SES accepted the message without a MessageId")


def error_of(response: httpx.Response) -> tuple[str | None, str]:
    """(the AWS error code, its message) of an error answer; the code without namespace or URI."""
    data = json_object(response.content) or {}
    code = response.headers.get("x-amzn-errortype") or data.get("__type") or data.get("code") or data.get("Code")
    message = data.get("message") or data.get("Message")
    if not isinstance(message, str):
        message = "" if data else response.text[:300]
    if not isinstance(code, str) or not code:
        return None, message.strip()
    return code.split(":", 1)[0].rsplit("#", 1)[-1].strip() or None, message.strip()


def retry_after(headers: httpx.Headers, now: datetime) -> float | None:
    """Seconds to wait: `x-amz-retry-after` (milliseconds, as botocore reads it), else RFC 9110
    Retry-After (delay-seconds or an HTTP-date); None when absent or unreadable."""
    millis = headers.get("x-amz-retry-after", "").strip()
    if millis.isdigit():
        return int(millis) / 1000.0
    return retry_after_seconds(headers.get("retry-after"), now)


# ---- SNS: verifying the envelope --------------------------------------------------------------------

class CertificateUnavailable(Exception):
    """The SNS signing certificate could not be fetched. Temporary: answer 5xx so SNS retries
    (SNS does not retry a 4xx), do not treat the callback as forged."""


class SubscriptionNotConfirmed(Exception):
    """SNS did not accept the SubscribeURL visit (or the URL is not an SNS one)."""


CertificateFetcher = Callable[[str], Awaitable[bytes]]

DEFAULT_CERT_HOST = re.compile(r"sns\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?")
_SIGNED_KEYS = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"),
}
_OPTIONAL_KEYS = frozenset({"Subject"})
_HASHES: dict[str, Callable[[], hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
_CERT_LIMIT = 64 * 1024
_CACHE_SIZE = 32


def sns_string_to_sign(envelope: Mapping[str, Any]) -> bytes:
    """The bytes SNS signs for this message (see the module docstring)."""
    keys = _SIGNED_KEYS.get(str(envelope.get("Type")))
    if keys is None:
        raise SignatureError(f"not an SNS message type: {str(envelope.get('Type'))[:40]!r}")
    lines: list[str] = []
    for key in keys:
        value = envelope.get(key)
        if value is None and key in _OPTIONAL_KEYS:
            continue
        if not isinstance(value, str):
            raise SignatureError(f"SNS message without a text {key}")
        lines.append(f"{key}\n{value}\n")
    return "".join(lines).encode("utf-8")


class SesEventParser:
    """SES events arriving as SNS HTTPS notifications: the SNS signature is verified first, with
    the certificate fetched only from `https://<SNS host>/....pem`.

    SNS has no shared secret (AWS signs with its own key), so `secrets` is not used: the topics
    are `topic_arns` (any topic when empty). `region` narrows the certificate host to
    sns.<region>.amazonaws.com (plus the regions of `topic_arns`: SNS signs from the topic's region);
    `cert_host_pattern` replaces that rule (tests point it at a local HTTPS server)."""

    key = KEY

    def __init__(self, *, topic_arns: Collection[str] | str | None = None, region: str | None = None,
                 cert_host_pattern: re.Pattern[str] | str | None = None,
                 fetch_certificate: CertificateFetcher | None = None, client: httpx.AsyncClient | None = None,
                 max_age: timedelta | None = None, clock: Clock | None = None) -> None:
        self.topic_arns = frozenset(_topics(topic_arns))
        self.cert_host_pattern = _cert_host_pattern(cert_host_pattern, region, self.topic_arns)
        self.max_age = max_age
        self._owns_client = client is None
        self._client = client or default_client()
        self._fetch = fetch_certificate or self._fetch_certificate
        self._clock = clock or SystemClock()
        self._certificates: OrderedDict[str, x509.Certificate] = OrderedDict()

    async def parse_callback(self, request: CallbackRequest, secrets: Sequence[str],
                             now: datetime) -> list[DeliveryEvent]:
        envelope = await self.verify(request, now)
        if envelope["Type"] != "Notification":
            return []   # SubscriptionConfirmation: the caller confirms it with confirm_subscription()
        record = json_object(envelope["Message"].encode("utf-8"))
        return events_from_ses(record) if record is not None else []

    @staticmethod
    def is_subscription_confirmation(request: CallbackRequest) -> bool:
        """Whether SNS asks us to confirm a subscription (read before verification; verify follows)."""
        if request.headers.get("x-amz-sns-message-type") == "SubscriptionConfirmation":
            return True
        envelope = json_object(request.body)
        return envelope is not None and envelope.get("Type") == "SubscriptionConfirmation"

    async def confirm_subscription(self, request: CallbackRequest, now: datetime | None = None) -> None:
        """Verify a SubscriptionConfirmation, then GET its SubscribeURL (an SNS host only)."""
        envelope = await self.verify(request, now or self._clock.now())
        if envelope["Type"] != "SubscriptionConfirmation":
            raise SubscriptionNotConfirmed(f"an SNS {envelope['Type']} is not a subscription confirmation")
        try:
            url = self._sns_url(envelope["SubscribeURL"], "SubscribeURL")
        except SignatureError as exc:
            raise SubscriptionNotConfirmed(str(exc)) from None
        try:
            response = await self._client.get(url)
        except httpx.RequestError as exc:
            raise SubscriptionNotConfirmed(f"could not reach SNS to confirm ({type(exc).__name__})") from None
        if not 200 <= response.status_code < 300:
            raise SubscriptionNotConfirmed(f"SNS answered {response.status_code} to the subscription confirmation")

    async def verify(self, request: CallbackRequest, now: datetime) -> Json:
        """The envelope, once its signature, topic, certificate and age check out; else SignatureError."""
        envelope = json_object(request.body)
        if envelope is None:
            raise SignatureError("an SNS message is a JSON object")
        canonical = sns_string_to_sign(envelope)
        header_type = request.headers.get("x-amz-sns-message-type")
        if header_type is not None and header_type != envelope["Type"]:
            raise SignatureError("the x-amz-sns-message-type header contradicts the message Type")
        self._check_topic(envelope["TopicArn"])
        algorithm = _HASHES.get(str(envelope.get("SignatureVersion")))
        if algorithm is None:
            raise SignatureError(f"unknown SNS SignatureVersion {str(envelope.get('SignatureVersion'))[:10]!r}")
        signature = _signature_bytes(envelope.get("Signature"))
        certificate = await self._certificate(self._sns_url(envelope.get("SigningCertURL"), "SigningCertURL",
                                                            pem=True))
        _verify_rsa(certificate, now, signature, canonical, algorithm())
        self._check_age(envelope["Timestamp"], now)
        return envelope

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    def _check_topic(self, topic_arn: str) -> None:
        if self.topic_arns and topic_arn not in self.topic_arns:
            raise SignatureError("the SNS message comes from a topic not configured for this provider")

    def _sns_url(self, value: object, field: str, *, pem: bool = False) -> str:
        """`value` when it is https:// on a host matching cert_host_pattern (with no user info)."""
        if not isinstance(value, str):
            raise SignatureError(f"SNS message without a {field}")
        try:
            parts = urlsplit(value)
        except ValueError:
            raise SignatureError(f"the {field} is not a URL") from None
        if parts.scheme != "https" or "@" in parts.netloc or not self.cert_host_pattern.fullmatch(parts.netloc):
            raise SignatureError(f"the {field} is not an https URL on an SNS host: {parts.netloc[:80]!r}")
        if pem and not parts.path.endswith(".pem"):
            raise SignatureError(f"the {field} does not name a .pem certificate")
        return value

    async def _certificate(self, url: str) -> x509.Certificate:
        cached = self._certificates.get(url)
        if cached is not None:
            self._certificates.move_to_end(url)
            return cached
        pem = await self._fetch(url)
        try:
            certificate = x509.load_pem_x509_certificate(pem)
        except ValueError:
            raise SignatureError("the SigningCertURL does not serve a PEM certificate") from None
        self._certificates[url] = certificate
        if len(self._certificates) > _CACHE_SIZE:
            self._certificates.popitem(last=False)
        return certificate

    async def _fetch_certificate(self, url: str) -> bytes:
        try:
            response = await self._client.get(url)
        except httpx.RequestError as exc:
            raise CertificateUnavailable(f"could not fetch the SNS signing certificate ({type(exc).__name__})") \
                from None
        if response.status_code != 200:
            raise CertificateUnavailable(f"SNS answered {response.status_code} for its signing certificate")
        if len(response.content) > _CERT_LIMIT:
            raise SignatureError("the SNS signing certificate is implausibly large")
        return response.content

    def _check_age(self, timestamp: str, now: datetime) -> None:
        if self.max_age is None:
            return
        sent = iso_time(timestamp)
        if sent is None or now - sent > self.max_age:
            raise SignatureError(f"the SNS message is older than {self.max_age} (a replay?)")


def _topics(value: Collection[str] | str | None) -> list[str]:
    """Topic ARNs from a list, or from one text separated by commas or spaces (a settings form)."""
    items = re.split(r"[\s,]+", value) if isinstance(value, str) else list(value or ())
    return [item.strip() for item in items if item and item.strip()]


def _cert_host_pattern(pattern: re.Pattern[str] | str | None, region: str | None,
                       topic_arns: Collection[str]) -> re.Pattern[str]:
    if pattern is not None:
        return re.compile(pattern) if isinstance(pattern, str) else pattern
    regions = {arn.split(":")[3] for arn in topic_arns if arn.count(":") >= 5} | ({region} if region else set())
    regions = {name for name in regions if _REGION.fullmatch(name)}
    if not regions:
        return DEFAULT_CERT_HOST
    return re.compile(rf"sns\.(?:{'|'.join(sorted(map(re.escape, regions)))})\.amazonaws\.com(?:\.cn)?")


def _signature_bytes(value: object) -> bytes:
    if not isinstance(value, str) or not value:
        raise SignatureError("SNS message without a Signature")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("the SNS Signature is not base64") from None


def _verify_rsa(certificate: x509.Certificate, now: datetime, signature: bytes, data: bytes,
                algorithm: hashes.HashAlgorithm) -> None:
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise SignatureError("the SNS signing certificate is not valid now")
    public_key = certificate.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise SignatureError("the SNS signing certificate does not hold an RSA key")
    try:
        public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
    except InvalidSignature:
        raise SignatureError("the SNS signature does not match the message") from None


# ---- SES events -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class _Mail:
    """What every event of one SES record shares."""

    message_id: str | None
    provider_message_id: str | None
    destination: tuple[str, ...]
    sent_at: datetime | None
    raw: Mapping[str, Any]

    def event(self, kind: EventKind, occurred_at: datetime | None, recipient: str | None,
              **details: Any) -> DeliveryEvent:
        return DeliveryEvent(kind=kind, provider=KEY, occurred_at=occurred_at or self.sent_at,
                             message_id=self.message_id, provider_message_id=self.provider_message_id,
                             recipient=recipient, raw=self.raw, **details)

    def sole_recipient(self) -> str | None:
        return self.destination[0] if len(self.destination) == 1 else None


def events_from_ses(record: Mapping[str, Any]) -> list[DeliveryEvent]:
    """The DeliveryEvents of one SES event record (either form); [] for a type we do not use."""
    event_type = _text(record.get("eventType")) or _text(record.get("notificationType"))
    handler = _HANDLERS.get(event_type or "")
    if event_type is None or handler is None:
        return []
    mail = _obj(record.get("mail"))
    details = _obj(record.get(_DETAIL_KEYS.get(event_type, event_type[:1].lower() + event_type[1:])))
    return handler(_mail_of(mail, record), details)


def _mail_of(mail: Mapping[str, Any], record: Mapping[str, Any]) -> _Mail:
    destination = tuple(address for address in _list(mail.get("destination")) if isinstance(address, str))
    return _Mail(message_id=herald_message_id(mail), provider_message_id=_text(mail.get("messageId")),
                 destination=destination, sent_at=iso_time(mail.get("timestamp")), raw=record)


def herald_message_id(mail: Mapping[str, Any]) -> str | None:
    """Our id: the `herald_message_id` tag (event publishing), else the left part of the original
    Message-ID header (identity notifications carry no tags)."""
    tagged = _list(_obj(mail.get("tags")).get(MESSAGE_ID_TAG))
    if tagged and isinstance(tagged[0], str) and tagged[0]:
        return tagged[0]
    header = _text(_obj(mail.get("commonHeaders")).get("messageId")) or _header(mail, "message-id")
    match = _MESSAGE_ID.fullmatch(header.strip()) if header else None
    return match[1] if match else None


def _header(mail: Mapping[str, Any], name: str) -> str | None:
    for item in _list(mail.get("headers")):
        if isinstance(item, dict) and str(item.get("name", "")).lower() == name:
            return _text(item.get("value"))
    return None


_MESSAGE_ID = re.compile(r"<?([A-Za-z0-9_.-]{1,200})@[^@<>\s]+>?")
_REPLY_CODE = re.compile(r"(?<![\d.])([245]\d\d)(?![\d.])")


def _bounce(mail: _Mail, bounce: Mapping[str, Any]) -> list[DeliveryEvent]:
    bounce_type, subtype = _text(bounce.get("bounceType")), _text(bounce.get("bounceSubType"))
    occurred_at = iso_time(bounce.get("timestamp"))
    code = "/".join(part for part in (bounce_type, subtype) if part) or None
    recipients = [_obj(item) for item in _list(bounce.get("bouncedRecipients"))] or [{}]
    events = []
    for recipient in recipients:
        status, diagnostic = _text(recipient.get("status")), _text(recipient.get("diagnosticCode")) or ""
        reply_code = reply_code_in(diagnostic)
        reason, permanent = bounce_reason(bounce_type, subtype, status, reply_code, diagnostic)
        events.append(mail.event("bounced", occurred_at, _text(recipient.get("emailAddress")), reason=reason,
                                 permanent=permanent, status=parse_status(status or diagnostic),
                                 reply_code=reply_code, provider_code=code, detail=diagnostic[:DETAIL_LIMIT]))
    return events


# bounceSubType -> reason, where the subtype says more than the DSN (SES developer guide, "Bounce types").
_BOUNCE_SUBTYPES = {
    "NoEmail": R.INVALID_ADDRESS,            # the address does not exist
    "Suppressed": R.INVALID_ADDRESS,         # SES global suppression: a history of bouncing as invalid
    "UnsubscribedRecipient": R.UNSUBSCRIBED,  # SES list management: the contact opted out
    "MailboxFull": R.MAILBOX_FULL,
    "MessageTooLarge": R.POLICY,             # the receiver's size limit
    "ContentRejected": R.POLICY,             # the receiver's content filter
    "AttachmentRejected": R.POLICY,
}


def bounce_reason(bounce_type: str | None, subtype: str | None, status: str | None, reply_code: int | None,
                  diagnostic: str) -> tuple[FailureReason, bool]:
    """(reason, permanent): the DSN classified, the subtype preferred when more precise, the
    bounceType deciding permanence (SES only publishes transient bounces it stopped retrying)."""
    classified, permanent = classify(status, reply_code, diagnostic)
    reason = _BOUNCE_SUBTYPES.get(subtype or "", classified)
    if subtype == "NoEmail" and classified == R.HOST_UNKNOWN:
        reason = classified   # "no such domain" is the more precise "no such address"
    if bounce_type == "Permanent":
        permanent = True
    elif bounce_type == "Transient":
        permanent = False
    return reason, permanent


def _complaint(mail: _Mail, complaint: Mapping[str, Any]) -> list[DeliveryEvent]:
    feedback_type = _text(complaint.get("complaintFeedbackType"))
    if feedback_type == "not-spam":
        return []   # ARF "not-spam" corrects an earlier report: not a complaint
    occurred_at = iso_time(complaint.get("timestamp"))
    code = feedback_type or _text(complaint.get("complaintSubType"))
    detail = " ".join(part for part in (feedback_type, _text(complaint.get("complaintSubType"))) if part)
    recipients = [_text(_obj(item).get("emailAddress")) for item in _list(complaint.get("complainedRecipients"))]
    return [mail.event("complained", occurred_at, recipient, reason=R.COMPLAINT, provider_code=code, detail=detail)
            for recipient in recipients or [mail.sole_recipient()]]


def _delivery(mail: _Mail, delivery: Mapping[str, Any]) -> list[DeliveryEvent]:
    response = _text(delivery.get("smtpResponse")) or ""
    recipients: list[str | None] = [item for item in _list(delivery.get("recipients")) if isinstance(item, str)]
    return [mail.event("delivered", iso_time(delivery.get("timestamp")), recipient, status=parse_status(response),
                       reply_code=reply_code_in(response), detail=response[:DETAIL_LIMIT])
            for recipient in recipients or [mail.sole_recipient()]]


def _send(mail: _Mail, _: Mapping[str, Any]) -> list[DeliveryEvent]:
    return [mail.event("sent", mail.sent_at, recipient) for recipient in mail.destination or (None,)]


def _reject(mail: _Mail, reject: Mapping[str, Any]) -> list[DeliveryEvent]:
    # The only documented reason is "Bad content": SES found a virus and stopped.
    reason_text = _text(reject.get("reason")) or ""
    return [mail.event("rejected", mail.sent_at, recipient, reason=R.CONTENT_REJECTED, permanent=True,
                       provider_code="Reject", detail=reason_text)
            for recipient in mail.destination or (None,)]


def _rendering_failure(mail: _Mail, failure: Mapping[str, Any]) -> list[DeliveryEvent]:
    detail = _text(failure.get("errorMessage")) or ""
    return [mail.event("rejected", mail.sent_at, recipient, reason=R.CONTENT_REJECTED, permanent=True,
                       provider_code="RenderingFailure", detail=detail[:DETAIL_LIMIT])
            for recipient in mail.destination or (None,)]


def _open(mail: _Mail, opened: Mapping[str, Any]) -> list[DeliveryEvent]:
    return [mail.event("opened", iso_time(opened.get("timestamp")), mail.sole_recipient())]


def _click(mail: _Mail, click: Mapping[str, Any]) -> list[DeliveryEvent]:
    return [mail.event("clicked", iso_time(click.get("timestamp")), mail.sole_recipient(),
                       url=_text(click.get("link")))]


# delayType -> reason (SES developer guide, "DeliveryDelay object"): SES's own reading of the delay;
# General and Undetermined are read from the DSN.
_DELAY_TYPES = {
    "MailboxFull": R.MAILBOX_FULL,
    "SpamDetected": R.BLOCKED,                   # the receiver saw much unsolicited mail from the account
    "IPFailure": R.BLOCKED,                      # the sending IP is blocked or throttled by the receiver
    "RecipientServerError": R.TRANSIENT,         # a temporary problem of the receiving server
    "TransientCommunicationFailure": R.TRANSIENT,  # the SMTP conversation failed for now
    "InternalFailure": R.TRANSIENT,              # inside SES
    "BYOIPHostNameLookupUnavailable": R.TRANSIENT,
    "SendingDeferral": R.TRANSIENT,              # SES deferred it internally
}


def _delivery_delay(mail: _Mail, delay: Mapping[str, Any]) -> list[DeliveryEvent]:
    delay_type = _text(delay.get("delayType"))
    occurred_at = iso_time(delay.get("timestamp"))
    events = []
    for recipient in [_obj(item) for item in _list(delay.get("delayedRecipients"))] or [{}]:
        status, diagnostic = _text(recipient.get("status")), _text(recipient.get("diagnosticCode")) or ""
        reply_code = reply_code_in(diagnostic)
        classified, _ = classify(status, reply_code, diagnostic)
        events.append(mail.event("deferred", occurred_at, _text(recipient.get("emailAddress")) or mail.sole_recipient(),
                                 reason=_DELAY_TYPES.get(delay_type or "", classified), permanent=False,
                                 status=parse_status(status or diagnostic), reply_code=reply_code,
                                 provider_code=delay_type, detail=diagnostic[:DETAIL_LIMIT]))
    return events


def _subscription(mail: _Mail, subscription: Mapping[str, Any]) -> list[DeliveryEvent]:
    """An unsubscribe through SES list management: from everything, or newly from a topic."""
    new, old = _obj(subscription.get("newTopicPreferences")), _obj(subscription.get("oldTopicPreferences"))
    left_topics = sorted(_opted_out(new) - _opted_out(old))
    if new.get("unsubscribeAll") is not True and not left_topics:
        return []
    detail = "unsubscribed from all topics" if new.get("unsubscribeAll") is True \
        else f"unsubscribed from topic(s) {', '.join(left_topics)}"
    return [mail.event("unsubscribed", iso_time(subscription.get("timestamp")), mail.sole_recipient(),
                       reason=R.UNSUBSCRIBED, provider_code=_text(subscription.get("source")), detail=detail)]


def _opted_out(preferences: Mapping[str, Any]) -> set[str]:
    return {str(_obj(item).get("topicName")) for item in _list(preferences.get("topicSubscriptionStatus"))
            if _obj(item).get("subscriptionStatus") == "OptOut"}


Handler = Callable[[_Mail, Mapping[str, Any]], list[DeliveryEvent]]
_HANDLERS: dict[str, Handler] = {
    "Bounce": _bounce, "Complaint": _complaint, "Delivery": _delivery, "Send": _send, "Reject": _reject,
    "Open": _open, "Click": _click, "Rendering Failure": _rendering_failure, "DeliveryDelay": _delivery_delay,
    "Subscription": _subscription,
}
# The record key holding each type's details, where it is not the type name with a small initial.
_DETAIL_KEYS = {"Rendering Failure": "failure"}


# ---- small readers ------------------------------------------------------------------------------------

def iso_time(value: object) -> datetime | None:
    """An ISO 8601 timestamp ("2017-08-05T00:41:02.669Z") as an aware UTC datetime."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)


def reply_code_in(text: str) -> int | None:
    """The SMTP reply code in a diagnostic ("smtp; 550 5.1.1 user unknown" -> 550)."""
    match = _REPLY_CODE.search(text[:200])
    return int(match[1]) if match else None


def _obj(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
