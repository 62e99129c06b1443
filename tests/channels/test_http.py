"""The helpers the HTTP email providers share (herald.channels.http): Retry-After as RFC 9110
writes it, Unix times, a signed webhook timestamp's freshness, the outcome of an error answer and
of a request that got no answer (against a real socket on 127.0.0.1; the read timeout is covered
end to end in test_ses.py)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from herald.channels import http
from herald.domain.delivery import FailureReason, SendResult, SignatureError
from tests.channels.httpserver import closed_port
from tests.channels.httpserver import serve as serve_posts

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
TEN_MINUTES = timedelta(minutes=10)


@pytest.mark.parametrize(("value", "seconds"), [
    ("7", 7.0),
    (" 2.5 ", 2.5),
    ("0", 0.0),
    ("-3", 0.0),                                                         # never a negative wait
    (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),   # an HTTP-date
    (format_datetime(NOW - timedelta(seconds=30), usegmt=True), 0.0),    # a date already past
    ("Mon, 06 May 2024 07:09:09", 60.0),                                 # no zone: read as UTC
    ("soon", None),
    ("inf", None),
    ("nan", None),
    ("", None),
    ("   ", None),
    (None, None),
])
def test_retry_after_is_delay_seconds_or_an_http_date(value: str | None, seconds: float | None) -> None:
    assert http.retry_after_seconds(value, NOW) == seconds


@pytest.mark.parametrize(("value", "when"), [
    (1714979289, NOW),
    (1714979289.5, NOW + timedelta(milliseconds=500)),
    ("1714979289", NOW),
    (True, None),
    (None, None),
    ("yesterday", None),
    (10**20, None),
    ([1714979289], None),
])
def test_unix_time(value: object, when: datetime | None) -> None:
    assert http.unix_time(value) == when


def test_a_timestamp_within_the_window_either_side_is_fresh() -> None:
    for offset in (0, 599, -599, 600, -600):
        http.check_fresh(str(int(NOW.timestamp()) + offset), NOW, TEN_MINUTES, "Acme")


@pytest.mark.parametrize(("timestamp", "message"), [
    (str(int(NOW.timestamp()) - 601), "Acme webhook timestamp .* outside the accepted window"),
    (str(int(NOW.timestamp()) + 601), "outside the accepted window"),
    ("1714979289.0", "is not Unix seconds"),
    ("-1714979289", "is not Unix seconds"),
    ("", "is not Unix seconds"),
    ("١٧١٤٩٧٩٢٨٩", "is not Unix seconds"),   # Arabic-Indic digits: isdigit() but not ASCII
])
def test_a_stale_or_unreadable_timestamp_is_refused(timestamp: str, message: str) -> None:
    with pytest.raises(SignatureError, match=message):
        http.check_fresh(timestamp, NOW, TEN_MINUTES, "Acme")


def test_small_readers() -> None:
    assert http.json_object(b'{"a": 1}') == {"a": 1}
    assert http.json_object(b"[1]") is None and http.json_object(b"<html>") is None and http.json_object(b"") is None
    assert http.text_or_none("  id  ") == "id"
    assert http.text_or_none("   ") is None and http.text_or_none(3) is None and http.text_or_none(None) is None


def test_error_detail_is_bounded() -> None:
    assert http.error_detail("Acme", 500, "") == "Acme HTTP 500"
    assert http.error_detail("Acme", 400, "bad to") == "Acme HTTP 400: bad to"
    assert len(http.error_detail("Acme", 400, "x" * 5000)) == http.DETAIL_LIMIT


def answer(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers or {}, content=b"")


@pytest.mark.parametrize(("response", "expected"), [
    (answer(500), SendResult.retry("m1", FailureReason.PROVIDER_DOWN, "d", provider_code="500")),
    (answer(503, {"Retry-After": "5"}),
     SendResult.retry("m1", FailureReason.PROVIDER_DOWN, "d", provider_code="503", retry_after=5.0)),
    (answer(502), SendResult.retry("m1", FailureReason.PROVIDER_DOWN, "d", provider_code="502", maybe_sent=True)),
    (answer(504), SendResult.retry("m1", FailureReason.PROVIDER_DOWN, "d", provider_code="504", maybe_sent=True)),
    (answer(413), SendResult.failed("m1", FailureReason.CONTENT_REJECTED, "d", provider_code="413")),
    (answer(400), SendResult.failed("m1", FailureReason.INVALID_ADDRESS, "d", provider_code="400")),
    (answer(409), SendResult.failed("m1", FailureReason.UNKNOWN, "d", provider_code="409")),
], ids=lambda value: str(value.status_code) if isinstance(value, httpx.Response) else "")
def test_other_error_answers(response: httpx.Response, expected: SendResult) -> None:
    assert http.other_error_outcome("m1", response, NOW, "d", FailureReason.INVALID_ADDRESS) == expected


def post_with_default_client(url: str) -> SendResult:
    async def go() -> SendResult:
        async with http.default_client() as client:
            try:
                await client.post(url, content=b"{}")
            except httpx.HTTPError as exc:
                return http.transport_failure("m1", exc, "Acme")
        raise AssertionError("the request was expected to get no answer")
    return asyncio.run(go())


def test_a_refused_connection_was_not_sent() -> None:
    result = post_with_default_client(f"http://127.0.0.1:{closed_port()}")
    assert (result.status, result.reason, result.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, False)
    assert result.detail.startswith("no answer from Acme (ConnectError")


def test_a_connection_dropped_after_the_whole_request_may_have_sent_it() -> None:
    with serve_posts(lambda _: None) as (url, seen):
        result = post_with_default_client(url)
    assert len(seen) >= 1
    assert (result.status, result.reason, result.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, True)

