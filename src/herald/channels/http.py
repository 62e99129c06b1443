"""What the HTTP providers of every channel (email/sendgrid, mailgun, ses; sms/twilio, http_gateway;
whatsapp/cloud; push/webpush, fcm, apns) share: their pooled client, the outcome of a request that
got no answer or an ordinary error answer, Retry-After, Unix times and the freshness of a signed
webhook timestamp. Pure helpers; no database, no logging.

Sources: RFC 9110 section 10.2.3 (Retry-After: delay-seconds or an HTTP-date); the providers'
own quirks stay in their modules.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from herald.domain.delivery import FailureReason, SendResult, SignatureError

DETAIL_LIMIT = 1000                          # characters of a provider's answer kept in SendResult.detail
DEFAULT_TOLERANCE = timedelta(minutes=10)    # how far a signed webhook timestamp may be from now

Json = dict[str, Any]


# ---- sending ---------------------------------------------------------------------------------------

def default_client() -> httpx.AsyncClient:
    """One pooled client per provider: a send is one short request, so keep connections warm and
    bound the wait for each phase (a free connection from the pool included)."""
    return httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0, pool=10.0),
                             limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))


# Raised before the request can have reached the provider's application: nothing was sent.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.WriteError, httpx.WriteTimeout,
            httpx.LocalProtocolError, httpx.UnsupportedProtocol, httpx.ProxyError)


def transport_failure(message_id: str, exc: httpx.HTTPError, provider: str) -> SendResult:
    """A request that got no HTTP answer. Once the whole request was written (a read timeout, a
    connection reset while waiting) the provider may have queued the message: `maybe_sent`, so
    feedback reconciles a duplicate by our id."""
    detail = f"no answer from {provider} ({type(exc).__name__}: {exc})"[:DETAIL_LIMIT]
    return SendResult.retry(message_id, FailureReason.PROVIDER_DOWN, detail, maybe_sent=not isinstance(exc, NOT_SENT))


def error_detail(provider: str, status: int, said: str) -> str:
    """"<Provider> HTTP <status>: <what the answer said>", bounded."""
    return f"{provider} HTTP {status}: {said}"[:DETAIL_LIMIT] if said else f"{provider} HTTP {status}"


def other_error_outcome(message_id: str, response: httpx.Response, now: datetime, detail: str,
                        bad_request: FailureReason) -> SendResult:
    """An error answer the provider did not handle itself (throttling and credentials are its own):
    5xx is retried after Retry-After, 413 fails the content, 400 fails for `bad_request`, any other
    status fails as unknown. A gateway error (502/504) means a proxy lost its upstream, which may
    have queued the mail: `maybe_sent`."""
    status = response.status_code
    code = str(status)
    if status >= 500:
        return SendResult.retry(message_id, FailureReason.PROVIDER_DOWN, detail, provider_code=code,
                                retry_after=retry_after_seconds(response.headers.get("retry-after"), now),
                                maybe_sent=status in (502, 504))
    if status == 413:
        return SendResult.failed(message_id, FailureReason.CONTENT_REJECTED, detail, provider_code=code)
    if status == 400:
        return SendResult.failed(message_id, bad_request, detail, provider_code=code)
    return SendResult.failed(message_id, FailureReason.UNKNOWN, detail, provider_code=code)


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """RFC 9110 Retry-After: delay-seconds or an HTTP-date; None when absent or unreadable."""
    text = (value or "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = ((when if when.tzinfo else when.replace(tzinfo=UTC)) - now).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


# ---- reading answers and webhooks ---------------------------------------------------------------------

def json_object(data: bytes) -> Json | None:
    """`data` as a JSON object; None when it is not JSON or not an object."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def text_or_none(value: object) -> str | None:
    """A JSON string without surrounding blanks; None for an empty one or any other type."""
    return (value.strip() or None) if isinstance(value, str) else None


def unix_time(value: object) -> datetime | None:
    """A Unix timestamp (int, float or digit string) as an aware UTC datetime."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return datetime.fromtimestamp(float(value), UTC)
    except (ValueError, OverflowError, OSError):
        return None


def check_fresh(timestamp: str, now: datetime, tolerance: timedelta, provider: str) -> None:
    """A signed timestamp (Unix seconds) within `tolerance` of now, either side (clock skew);
    else SignatureError (a replay, or a clock out of sync)."""
    digits = timestamp.strip()
    when = unix_time(digits) if digits.isascii() and digits.isdigit() else None
    if when is None:
        raise SignatureError(f"{provider} webhook timestamp {timestamp[:40]!r} is not Unix seconds")
    if abs(now - when) > tolerance:
        raise SignatureError(f"{provider} webhook timestamp {when.isoformat()} is outside the accepted window "
                             f"of {tolerance} around now: a replay, or a clock out of sync")
