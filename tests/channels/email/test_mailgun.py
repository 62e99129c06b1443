"""Mailgun against a local HTTP server on 127.0.0.1 that speaks the documented sending API
(`POST /v3/<domain>/messages.mime`, multipart/form-data with `to`, `message` as a file and `v:`
variables, HTTP Basic `api:<key>`, `{"id", "message"}` answers, `{"message"}` errors), and webhooks
signed here with a real HMAC-SHA256 signing key around Mailgun's documented sample events
(payloads/mailgun/)."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from email.policy import default
from email.utils import format_datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from herald.channels.email.mailgun import EU_BASE_URL, MailgunEventParser, MailgunProvider
from herald.channels.email.mime import build_mime
from herald.domain.delivery import (
    CallbackRequest,
    DeliveryEvent,
    EmailContent,
    FailureReason,
    OutboundMessage,
    ProviderConfigError,
    SendResult,
    SignatureError,
)
from tests.channels.email.httpserver import Posted, json_reply, serve_posts
from tests.stores.localserver import Reply

PAYLOADS = Path(__file__).parent / "payloads" / "mailgun"
NOW = datetime(2026, 2, 12, 18, 0, 0, tzinfo=UTC)
API_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"   # the placeholder key of Mailgun's docs
SIGNING_KEY = "a-throwaway-webhook-signing-key"
T = TypeVar("T")


def run(use: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(use())  # type: ignore[arg-type]


class FixedClock:
    def now(self) -> datetime:
        return NOW


@dataclass(frozen=True)
class FormField:
    filename: str | None
    content_type: str | None
    data: bytes


def form_fields(posted: Posted) -> dict[str, FormField]:
    """multipart/form-data (RFC 7578) split by hand, so a part's bytes come back exactly."""
    boundary = re.search(r'boundary="?([^";]+)"?', posted.headers["content-type"])
    assert posted.headers["content-type"].startswith("multipart/form-data") and boundary
    fields: dict[str, FormField] = {}
    for part in posted.body.split(b"--" + boundary[1].encode())[1:-1]:
        head, _, data = part.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        headers = dict(line.split(": ", 1) for line in head.decode().split("\r\n"))
        disposition = headers["Content-Disposition"]
        name = re.search(r'\bname="([^"]*)"', disposition)
        filename = re.search(r'\bfilename="([^"]*)"', disposition)
        assert name
        fields[name[1]] = FormField(filename[1] if filename else None, headers.get("Content-Type"),
                                    data.removesuffix(b"\r\n"))
    return fields


MESSAGE = OutboundMessage(
    id="01HXMSG0000000000000000002", workspace_id="ws_1", channel="email", purpose="marketing",
    to="anna@example.org", sending_domain="mg.example.com",
    email=EmailContent(from_address="shop@mg.example.com", from_name="Example Shop", subject="Your order",
                       html="<p>Hi</p>", text="Hi",
                       headers=(("List-Unsubscribe", "<https://h.example/u/abc>"),
                                ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"))))


def send(base_url: str, message: OutboundMessage = MESSAGE) -> SendResult:
    async def go() -> SendResult:
        provider = MailgunProvider(API_KEY, "mg.example.com", base_url=base_url, clock=FixedClock())
        try:
            return await provider.send(message)
        finally:
            await provider.aclose()
    return run(go)


QUEUED = {"message": "Queued. Thank you.", "id": "<20111114174239.25659.5817@mg.example.com>"}


# ---- sending --------------------------------------------------------------------------------------

def test_the_mime_message_is_posted_as_a_file_with_our_id_as_a_variable() -> None:
    with serve_posts(lambda _: json_reply(200, QUEUED)) as (url, seen):
        result = send(url)
    assert result == SendResult.accepted(MESSAGE.id, "20111114174239.25659.5817@mg.example.com",
                                         detail="Queued. Thank you.")
    [request] = seen
    assert request.path == "/v3/mg.example.com/messages.mime"
    assert request.headers["authorization"] == "Basic " + base64.b64encode(f"api:{API_KEY}".encode()).decode()
    fields = form_fields(request)
    assert set(fields) == {"to", "v:herald_message_id", "message"}
    assert fields["to"].data == b"anna@example.org" and fields["to"].filename is None
    assert fields["v:herald_message_id"].data == MESSAGE.id.encode()
    assert fields["message"].filename == "message.mime"
    sent = message_from_bytes(fields["message"].data, policy=default)   # build_mime's bytes, as a file
    assert fields["message"].data.count(b"\n") == fields["message"].data.count(b"\r\n")
    assert sent["Message-ID"] == f"<{MESSAGE.id}@mg.example.com>"
    assert (sent["To"], sent["Subject"], sent["List-Unsubscribe-Post"]) == (
        "anna@example.org", "Your order", "List-Unsubscribe=One-Click")
    assert sent["Date"] == format_datetime(NOW)
    assert [part.get_content() for part in sent.iter_parts()] == ["Hi", "<p>Hi</p>"]
    assert len(fields["message"].data) == len(build_mime(MESSAGE, date=NOW))   # same message, other boundary


def test_the_eu_region_is_a_base_url() -> None:
    assert EU_BASE_URL == "https://api.eu.mailgun.net"
    with pytest.raises(ProviderConfigError, match="sending domain"):
        MailgunProvider(API_KEY, " ")
    with pytest.raises(ProviderConfigError, match="API key"):
        MailgunProvider("", "mg.example.com")


def test_a_400_about_the_recipient_fails_the_address_and_others_the_content() -> None:
    with serve_posts(lambda _: json_reply(400, {"message": "to parameter is not a valid address. please check "
                                                           "documentation"})) as (url, _):
        bad_address = send(url)
    with serve_posts(lambda _: json_reply(400, {"message": "Need at least one of 'text' or 'html' parameters "
                                                           "specified"})) as (url, _):
        bad_content = send(url)
    assert (bad_address.status, bad_address.reason, bad_address.provider_code) == (
        "failed", FailureReason.INVALID_ADDRESS, "400")
    assert bad_address.detail == "Mailgun HTTP 400: to parameter is not a valid address. please check documentation"
    assert (bad_content.status, bad_content.reason) == ("failed", FailureReason.CONTENT_REJECTED)


@pytest.mark.parametrize(("status", "body", "hint"), [
    (401, b"Forbidden", "check the API key"),
    (402, b'{"message": "Domain mg.example.com is disabled"}', "plan and billing"),
    (403, b'{"message": "Domain mg.example.com is not allowed to send: Free accounts are for test purposes only"}',
     "sandbox"),
    (404, b'{"message": "Domain not found: mg.example.com"}', "region"),
])
def test_account_and_setting_problems_wait_for_the_settings(status: int, body: bytes, hint: str) -> None:
    with serve_posts(lambda _: Reply(status, body)) as (url, _):
        result = send(url)
    assert (result.status, result.reason, result.provider_code) == ("retry", FailureReason.AUTH_FAILED, str(status))
    assert hint in result.detail and API_KEY not in result.detail


def test_429_honours_retry_after_in_seconds_or_as_a_date() -> None:
    with serve_posts(lambda _: json_reply(429, {"message": "Too many requests"}, {"Retry-After": "12"})) as (url, _):
        seconds = send(url)
    later = format_datetime(NOW + timedelta(seconds=90), usegmt=True)
    with serve_posts(lambda _: json_reply(429, {"message": "Too many requests"}, {"Retry-After": later})) as (url, _):
        dated = send(url)
    with serve_posts(lambda _: json_reply(429, {"message": "Too many requests"})) as (url, _):
        unsaid = send(url)
    assert (seconds.status, seconds.reason, seconds.retry_after) == ("retry", FailureReason.THROTTLED, 12.0)
    assert dated.retry_after == 90.0
    assert unsaid.retry_after is None


def test_server_errors_and_oversized_messages() -> None:
    with serve_posts(lambda _: Reply(503, b"Service Unavailable", {"Retry-After": "5"})) as (url, _):
        down = send(url)
    with serve_posts(lambda _: Reply(504, b"Gateway Timeout")) as (url, _):
        gateway = send(url)
    with serve_posts(lambda _: json_reply(413, {"message": "Message size exceeds the limit"})) as (url, _):
        too_big = send(url)
    assert (down.status, down.reason, down.retry_after, down.maybe_sent) == (
        "retry", FailureReason.PROVIDER_DOWN, 5.0, False)
    assert gateway.maybe_sent is True
    assert (too_big.status, too_big.reason) == ("failed", FailureReason.CONTENT_REJECTED)


# ---- webhooks ------------------------------------------------------------------------------------------

def signature_block(key: str = SIGNING_KEY, at: datetime = NOW, token: str | None = None) -> dict[str, str]:
    timestamp = str(int(at.timestamp()))
    token = token or secrets.token_hex(25)   # Mailgun: "randomly generated string with length 50"
    digest = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {"timestamp": timestamp, "token": token, "signature": digest}


def webhook(event_data: Any, block: dict[str, str] | None = None) -> CallbackRequest:
    body = json.dumps({"signature": block or signature_block(), "event-data": event_data}).encode()
    return CallbackRequest("POST", "https://herald.example/hooks/mailgun", {"content-type": "application/json"}, body)


def parse(request: CallbackRequest, keys: list[str] | None = None,
          parser: MailgunEventParser | None = None, now: datetime = NOW) -> list[DeliveryEvent]:
    return run(lambda: (parser or MailgunEventParser()).parse_callback(
        request, [SIGNING_KEY] if keys is None else keys, now))


def documented(name: str, herald_id: str | None = "01HXMSG0000000000000000002") -> dict[str, Any]:
    data: dict[str, Any] = json.loads((PAYLOADS / f"{name}.json").read_text())
    if herald_id is not None:
        data["user-variables"] = {"herald_message_id": herald_id}   # what v:herald_message_id becomes
    return data


def one(data: Any, **kwargs: Any) -> DeliveryEvent:
    [event] = parse(webhook(data), **kwargs)
    return event


@pytest.mark.parametrize(("name", "kind", "reason", "permanent"), [
    ("accepted", "sent", None, None),
    ("delivered", "delivered", None, None),
    ("opened", "opened", None, None),
    ("clicked", "clicked", None, None),
    ("failed_permanent", "bounced", FailureReason.INVALID_ADDRESS, True),     # "5.5.0 ... mailbox unavailable"
    ("failed_temporary", "deferred", FailureReason.BLOCKED, False),           # 421 "temporary blacklisted"
    ("unsubscribed", "unsubscribed", FailureReason.UNSUBSCRIBED, None),
    ("complained", "complained", FailureReason.COMPLAINT, None),
    ("failed_suppress_bounce", "rejected", FailureReason.INVALID_ADDRESS, True),
])
def test_each_documented_event(name: str, kind: str, reason: FailureReason | None, permanent: bool | None) -> None:
    data = documented(name)
    event = one(data)
    assert (event.kind, event.reason, event.permanent) == (kind, reason, permanent)
    assert event.provider == "mailgun"
    assert event.message_id == "01HXMSG0000000000000000002"
    assert event.provider_message_id == data["message"]["headers"]["message-id"]
    assert event.recipient == data["recipient"]
    assert event.occurred_at == datetime.fromtimestamp(data["timestamp"], UTC)
    assert event.raw == data


def test_failure_details() -> None:
    hard = one(documented("failed_permanent"))
    soft = one(documented("failed_temporary"))
    suppressed = one(documented("failed_suppress_bounce"))
    assert (hard.status, hard.reply_code, hard.provider_code) == ("5.5.0", 550, "bounce")
    assert hard.detail.startswith("5.5.0 Requested action not taken: mailbox unavailable")
    assert (soft.status, soft.reply_code, soft.provider_code) == (None, 421, "generic")
    assert (suppressed.reply_code, suppressed.provider_code, suppressed.detail) == (
        None, "suppress-bounce", "Not delivering to previously bounced address")   # 605 is Mailgun's, not SMTP
    assert one(documented("delivered")).reply_code == 250
    assert one(documented("clicked")).url == "https://sample.mailgun.com"


def test_user_variables_may_be_an_empty_list() -> None:
    assert one(documented("accepted", herald_id=None)).message_id is None   # documented `"user-variables": []`


def test_suppressions_gave_up_and_esp_blocks() -> None:
    unsubscribed = documented("failed_suppress_bounce") | {"reason": "suppress-unsubscribe"}
    complained = documented("failed_suppress_bounce") | {"reason": "suppress-complaint"}
    old = documented("failed_temporary") | {"reason": "old"}
    old["delivery-status"] = {"code": 498, "message": "", "description": "Too old"}
    espblock = documented("failed_temporary") | {"reason": "espblock"}
    espblock["delivery-status"] = {}   # nothing but Mailgun's own reason to go by
    assert (one(unsubscribed).kind, one(unsubscribed).reason) == ("rejected", FailureReason.UNSUBSCRIBED)
    assert one(complained).reason is FailureReason.COMPLAINT
    gave_up = one(old)
    assert (gave_up.kind, gave_up.reason, gave_up.permanent) == ("bounced", FailureReason.EXPIRED, False)
    blocked = one(espblock)
    assert (blocked.kind, blocked.reason, blocked.permanent) == ("deferred", FailureReason.BLOCKED, False)


def test_events_without_a_kind_are_skipped() -> None:
    assert parse(webhook({"event": "stored", "timestamp": NOW.timestamp()})) == []


def test_another_key_is_refused_and_a_rotation_accepts_either() -> None:
    request = webhook(documented("delivered"), signature_block(key="another-key"))
    with pytest.raises(SignatureError, match="does not match"):
        parse(request)
    assert [e.kind for e in parse(request, [SIGNING_KEY, "another-key"])] == ["delivered"]


@pytest.mark.parametrize("field", ["timestamp", "token", "signature"])
def test_one_changed_character_of_the_signature_block_is_refused(field: str) -> None:
    block = signature_block()
    value = block[field]
    block[field] = value[:-1] + ("1" if value[-1] != "1" else "2")
    with pytest.raises(SignatureError):
        parse(webhook(documented("delivered"), block))


def test_the_signature_does_not_cover_the_event_so_a_reused_token_is_refused() -> None:
    """Mailgun signs timestamp + token only: a forged event-data under a captured signature block
    verifies. The replay cache is what refuses the second use of that token (per process)."""
    block = signature_block()
    assert [e.kind for e in parse(webhook(documented("delivered"), block))] == ["delivered"]
    forged = documented("failed_permanent")
    parser = MailgunEventParser()
    assert [e.kind for e in parse(webhook(documented("delivered"), block), parser=parser)] == ["delivered"]
    with pytest.raises(SignatureError, match="already used"):
        parse(webhook(forged, block), parser=parser)
    without_cache = MailgunEventParser(replay_cache_size=0)
    parse(webhook(documented("delivered"), block), parser=without_cache)
    assert [e.kind for e in parse(webhook(forged, block), parser=without_cache)] == ["bounced"]   # the limitation


def test_a_stale_or_future_timestamp_is_refused_though_correctly_signed() -> None:
    for offset in (timedelta(minutes=-11), timedelta(minutes=11)):
        with pytest.raises(SignatureError, match="outside the accepted window"):
            parse(webhook(documented("delivered"), signature_block(at=NOW + offset)))
    assert parse(webhook(documented("delivered"), signature_block(at=NOW - timedelta(minutes=9))))


def test_the_replay_cache_is_bounded_and_forgets_expired_tokens() -> None:
    parser = MailgunEventParser(replay_cache_size=3)
    tokens = [f"token-{n}" for n in range(5)]
    for token in tokens:
        parse(webhook(documented("delivered"), signature_block(token=token)), parser=parser)
    assert len(parser._seen) == 3
    later = NOW + timedelta(hours=1)
    again = webhook(documented("delivered"), signature_block(at=later, token=tokens[-1]))
    assert parse(again, parser=parser, now=later)   # the old entry expired, the new timestamp is fresh
    assert list(parser._seen) == [tokens[-1]]


def test_unsigned_or_malformed_requests_are_refused() -> None:
    unsigned = json.dumps({"event-data": documented("delivered")}).encode()
    for body in (b"not json", b"[]", unsigned, b'{"signature": {"timestamp": "1", "token": ""}}'):
        with pytest.raises(SignatureError):
            parse(CallbackRequest("POST", "https://herald.example/hooks/mailgun", {}, body))
    with pytest.raises(ValueError, match="no event-data"):
        parse(webhook("not an object"))


def test_no_signing_key_is_a_settings_problem() -> None:
    with pytest.raises(ProviderConfigError, match="signing key"):
        parse(webhook(documented("delivered")), keys=[" "])


def test_the_fixtures_are_the_documented_samples_untouched() -> None:
    data = documented("failed_permanent", herald_id=None)
    assert data["user-variables"] == [] and data["delivery-status"]["bounce-type"] == "hard"
    assert copy.deepcopy(data) == json.loads((PAYLOADS / "failed_permanent.json").read_text())
