"""Twilio Programmable Messaging against a local Twilio-speaking server on 127.0.0.1 (peer.py:
Basic auth, the form-encoded Create Message request, 201 + the Message resource, the error JSON
and the documented test numbers), and its webhooks signed the way Twilio signs them: the signer in
peer.py is checked against the official twilio-python test vectors, then a fake Twilio posts
signed status callbacks to a local receiver whose raw requests the parser reads."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import pytest

from herald.channels.sms.common import with_message_id
from herald.channels.sms.twilio import (
    TwilioProvider,
    TwilioWebhookParser,
    make_parser,
    make_provider,
    signature,
)
from herald.domain.delivery import (
    CallbackRequest,
    DeliveryEvent,
    EmailContent,
    FailureReason,
    InboundMessage,
    OutboundMessage,
    ProviderConfigError,
    SendResult,
    SignatureError,
    SmsContent,
    UnsupportedFeature,
)
from tests.channels.httpserver import closed_port
from tests.channels.sms.peer import FakeTwilio, Seen, json_reply, serve, twilio_signature
from tests.stores.localserver import Reply

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
ACCOUNT = "AC" + "0123456789abcdef" * 2
TOKEN = "f0e1d2c3b4a5968778695a4b3c2d1e0f"
OTHER_TOKEN = "00000000000000000000000000000000"
SENDER = "+15005550006"
SERVICE = "MG" + "fedcba9876543210" * 2
MESSAGE_ID = "01HXSMS0000000000000000001"
T = TypeVar("T")


def run(use: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(use())  # type: ignore[arg-type]


class FixedClock:
    def now(self) -> datetime:
        return NOW


def a_message(to: str = "+14155550123", text: str = "Your order #1001 has shipped 📦", sender: str | None = None,
              message_id: str = MESSAGE_ID) -> OutboundMessage:
    return OutboundMessage(id=message_id, workspace_id="ws_1", channel="sms", purpose="transactional", to=to,
                           sms=SmsContent(text, sender))


def send(base_url: str, message: OutboundMessage | None = None, client: httpx.AsyncClient | None = None,
         account: str = ACCOUNT, **settings: Any) -> SendResult:
    options: dict[str, Any] = {"auth_token": TOKEN, "sender": SENDER, **settings}

    async def go() -> SendResult:
        provider = TwilioProvider(account, base_url=base_url, clock=FixedClock(), client=client, **options)
        try:
            return await provider.send(message or a_message())
        finally:
            await provider.aclose()
            if client is not None:
                await client.aclose()
    return run(go)


def twilio() -> FakeTwilio:
    return FakeTwilio(ACCOUNT, (ACCOUNT, TOKEN))


# ---- sending ---------------------------------------------------------------------------------------

def test_a_message_is_created_as_documented_with_our_id_in_the_status_callback() -> None:
    fake = twilio()
    with serve(fake) as (url, seen):
        result = send(url, status_callback_url="https://herald.example/callbacks/prv_1")
    assert result == SendResult.accepted(MESSAGE_ID, "SM" + "0" * 31 + "1", detail="queued")
    [request] = seen
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.form() == {"To": ["+14155550123"], "From": [SENDER], "Body": ["Your order #1001 has shipped 📦"],
                              "StatusCallback": [f"https://herald.example/callbacks/prv_1?m={MESSAGE_ID}"]}


def test_a_messaging_service_sends_when_no_sender_is_named_and_the_message_may_name_one() -> None:
    fake = twilio()
    with serve(fake) as (url, seen):
        by_service = send(url, sender=None, messaging_service_sid=SERVICE,
                          status_callback_url="https://herald.example/cb?provider=prv_1")
        own_sender = send(url, a_message(sender="Shop"), messaging_service_sid=SERVICE)
    assert by_service.status == own_sender.status == "accepted"
    first, second = (r.form() for r in seen)
    assert "From" not in first and first["MessagingServiceSid"] == [SERVICE]
    assert first["StatusCallback"] == [f"https://herald.example/cb?provider=prv_1&m={MESSAGE_ID}"]
    assert second["From"] == ["Shop"] and second["MessagingServiceSid"] == [SERVICE]
    assert "StatusCallback" not in second


def test_an_api_key_authenticates_instead_of_the_auth_token() -> None:
    fake = FakeTwilio(ACCOUNT, ("SK" + "1" * 32, "key-secret"))
    with serve(fake) as (url, _):
        result = send(url, auth_token=None, api_key_sid="SK" + "1" * 32, api_key_secret="key-secret")
    assert result.status == "accepted"


@pytest.mark.parametrize(("to", "reason", "code"), [
    ("+15005550001", FailureReason.INVALID_ADDRESS, "21211"),
    ("+15005550002", FailureReason.INVALID_ADDRESS, "21612"),
    ("+15005550009", FailureReason.INVALID_ADDRESS, "21614"),
    ("+15005550004", FailureReason.UNSUBSCRIBED, "21610"),
    ("+15005550003", FailureReason.POLICY, "21408"),   # our Geo Permissions: the number stays usable
])
def test_twilio_refusals_of_the_number_fail_with_their_code(to: str, reason: FailureReason, code: str) -> None:
    with serve(twilio()) as (url, _):
        result = send(url, a_message(to=to))
    assert (result.status, result.reason, result.provider_code) == ("failed", reason, code)
    assert result.detail.startswith(f"Twilio HTTP 400: {code}: ")


def test_refused_credentials_wait_for_the_settings_to_be_fixed_and_never_show_the_token() -> None:
    with serve(twilio()) as (url, _):
        result = send(url, auth_token=OTHER_TOKEN)
    assert (result.status, result.reason, result.provider_code) == ("retry", FailureReason.AUTH_FAILED, "20003")
    assert TOKEN not in result.detail and OTHER_TOKEN not in result.detail
    with serve(twilio()) as (url, _):   # the wrong account: the path does not exist
        wrong_account = send(url, account="AC" + "9" * 32)
    assert (wrong_account.status, wrong_account.reason, wrong_account.provider_code) == (
        "retry", FailureReason.AUTH_FAILED, "20404")


def test_a_sender_that_is_not_ours_is_a_settings_problem() -> None:
    answer = FakeTwilio.error(400, 21606, "The From phone number +15005550001 is not a valid, SMS-capable inbound "
                                          "phone number or short code for your account.")
    with serve(lambda _: answer) as (url, _):
        result = send(url)
    assert (result.status, result.reason, result.provider_code) == ("retry", FailureReason.AUTH_FAILED, "21606")


def test_throttling_waits_for_retry_after() -> None:
    too_many = FakeTwilio.error(429, 20429, "Too Many Requests", {"Retry-After": "12"})
    with serve(lambda _: too_many) as (url, _):
        result = send(url)
    assert (result.status, result.reason, result.provider_code, result.retry_after) == (
        "retry", FailureReason.THROTTLED, "20429", 12.0)


def test_content_refusals_and_unknown_codes() -> None:
    with serve(lambda _: FakeTwilio.error(400, 21617, "The concatenated message body exceeds the 1600 character "
                                                      "limit.")) as (url, _):
        too_long = send(url)
    with serve(lambda _: FakeTwilio.error(400, 21999, "Something new")) as (url, _):
        unknown = send(url)
    assert (too_long.status, too_long.reason, too_long.provider_code) == (
        "failed", FailureReason.CONTENT_REJECTED, "21617")
    assert (unknown.status, unknown.reason, unknown.provider_code) == ("failed", FailureReason.UNKNOWN, "21999")


def test_server_errors_are_retried_and_a_lost_gateway_answer_may_have_sent_it() -> None:
    with serve(lambda _: FakeTwilio.error(503, 20500, "Service unavailable", {"Retry-After": "5"})) as (url, _):
        down = send(url)
    with serve(lambda _: Reply(502, b"Bad Gateway", {"Content-Type": "text/plain"})) as (url, _):
        gateway = send(url)
    assert (down.status, down.reason, down.provider_code, down.retry_after, down.maybe_sent) == (
        "retry", FailureReason.PROVIDER_DOWN, "20500", 5.0, False)
    assert (gateway.status, gateway.reason, gateway.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, True)


def test_a_connection_lost_after_the_request_may_have_sent_it_a_refused_one_did_not() -> None:
    with serve(lambda _: None) as (url, seen):
        dropped = send(url)
    assert seen   # the server read the whole request before hanging up
    refused = send(f"http://127.0.0.1:{closed_port()}")
    assert (dropped.status, dropped.reason, dropped.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, True)
    assert (refused.status, refused.reason, refused.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, False)


def test_a_timeout_after_the_request_was_written_may_have_sent_it() -> None:
    release = threading.Event()

    def stall(_: Seen) -> Reply:
        release.wait(10)   # bounded; released as soon as the client gave up
        return json_reply(201, {"sid": "SMlate"})

    with serve(stall) as (url, seen):
        try:
            result = send(url, client=httpx.AsyncClient(timeout=httpx.Timeout(5.0, read=0.2)))
        finally:
            release.set()
    assert seen
    assert (result.status, result.reason, result.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, True)


def test_a_message_of_another_channel_is_refused_before_any_request() -> None:
    email = OutboundMessage(id="m1", workspace_id="ws_1", channel="email", purpose="marketing", to="a@example.org",
                            email=EmailContent("shop@example.com", None, "Hi", None, "Hi"))
    with serve(twilio()) as (url, seen), pytest.raises(UnsupportedFeature, match="sends SMS"):
        send(url, email)
    assert seen == []


def test_settings_are_checked_with_a_clear_message() -> None:
    good = {"account_sid": ACCOUNT, "from": SENDER}
    assert isinstance(make_provider(good, {"auth_token": TOKEN}), TwilioProvider)
    for config, secrets, problem in [
        ({**good, "form": SENDER}, {"auth_token": TOKEN}, "unknown settings form"),
        ({"from": SENDER}, {"auth_token": TOKEN}, "account_sid is required"),
        ({**good, "account_sid": "US123"}, {"auth_token": TOKEN}, "not an Account SID"),
        ({"account_sid": ACCOUNT}, {"auth_token": TOKEN}, "needs a sender"),
        (good, {}, "auth_token is required"),
        ({**good, "api_key_sid": "SK1"}, {"auth_token": TOKEN}, "needs both api_key_sid"),
        ({**good, "messaging_service_sid": "XX1"}, {"auth_token": TOKEN}, "Messaging Service SID"),
        ({**good, "status_callback_url": "/callbacks/1"}, {"auth_token": TOKEN}, "absolute https:// URL"),
        ({**good, "base_url": "ftp://x"}, {"auth_token": TOKEN}, "absolute https:// URL"),
    ]:
        with pytest.raises(ProviderConfigError, match=problem):
            make_provider(config, secrets)


def test_our_id_is_added_to_any_callback_url() -> None:
    assert with_message_id("https://h.example/cb", "01H X") == "https://h.example/cb?m=01H+X"
    assert with_message_id("https://h.example/cb?a=1", "01H") == "https://h.example/cb?a=1&m=01H"


# ---- signatures: the official vectors --------------------------------------------------------------------

# twilio-python tests/unit/test_request_validator.py (and the twilio-php documentation example)
VECTOR_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
VECTOR_PARAMS = {"CallSid": "CA1234567890ABCDE", "Digits": "1234", "From": "+14158675309", "To": "+18005551212",
                 "Caller": "+14158675309"}
VECTOR_BODY = b'{"property": "value", "boolean": true}'
VECTOR_BODY_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"


def test_both_signers_reproduce_the_official_vector() -> None:
    assert signature("12345", VECTOR_URL, list(VECTOR_PARAMS.items())) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert twilio_signature("12345", VECTOR_URL, {k: [v] for k, v in VECTOR_PARAMS.items()}) == (
        "RSOYDt4T1cUTdK1PDd93/VVr8B8=")


def vector_request(url: str, signed: str, body: bytes | None = None, content_type: str = "") -> CallbackRequest:
    return CallbackRequest("POST", url, {"x-twilio-signature": signed, "content-type": content_type},
                           urlencode(VECTOR_PARAMS).encode() if body is None else body)


@pytest.mark.parametrize(("url", "signed"), [
    (VECTOR_URL, "RSOYDt4T1cUTdK1PDd93/VVr8B8="),
    (VECTOR_URL.replace(".com", ".com:1234"), "RSOYDt4T1cUTdK1PDd93/VVr8B8="),                # port removed
    (VECTOR_URL.replace(".com", ".com:1234").replace("https", "http"), "Zmvh+3yNM1Phv2jhDCwEM3q5ebU="),
    (VECTOR_URL, "kvajT1Ptam85bY51eRf/AJRuM3w="),                                            # :443 added
    (VECTOR_URL.replace("https", "http"), "0ZXoZLH/DfblKGATFgpif+LLRf4="),                    # :80 added
])
def test_the_official_port_vectors_verify(url: str, signed: str) -> None:
    assert TwilioWebhookParser(["12345"]).verify(vector_request(url, signed), []) == VECTOR_PARAMS


def test_the_official_json_body_vector_verifies_through_its_body_hash() -> None:
    request = vector_request(f"{VECTOR_URL}&bodySHA256={VECTOR_BODY_HASH}", "a9nBmqA0ju/hNViExpshrM61xv4=",
                             VECTOR_BODY, "application/json")
    assert TwilioWebhookParser(["12345"]).verify(request, []) == {"property": "value", "boolean": "true"}
    tampered = CallbackRequest(request.method, request.url, request.headers, VECTOR_BODY.replace(b"value", b"vblue"))
    with pytest.raises(SignatureError, match="bodySHA256"):
        TwilioWebhookParser(["12345"]).verify(tampered, [])


# ---- status callbacks -------------------------------------------------------------------------------------

def signed_post(url: str, params: dict[str, str], token: str = TOKEN) -> CallbackRequest:
    """What Twilio sends: the form body and X-Twilio-Signature over the URL it calls."""
    return CallbackRequest("POST", url, {"content-type": "application/x-www-form-urlencoded",
                                         "x-twilio-signature": twilio_signature(token, url,
                                                                                {k: [v] for k, v in params.items()})},
                           urlencode(params).encode())


CALLBACK_URL = f"https://herald.example/callbacks/prv_1?m={MESSAGE_ID}"


def status(message_status: str, **more: str) -> dict[str, str]:
    return {"AccountSid": ACCOUNT, "ApiVersion": "2010-04-01", "From": SENDER, "To": "+14155550123",
            "MessageSid": "SM" + "a" * 32, "SmsSid": "SM" + "a" * 32, "MessageStatus": message_status,
            "SmsStatus": message_status, **more}


def parse(request: CallbackRequest, secrets: list[str] | None = None,
          parser: TwilioWebhookParser | None = None) -> list[DeliveryEvent]:
    return run(lambda: (parser or TwilioWebhookParser()).parse_callback(
        request, [TOKEN] if secrets is None else secrets, NOW))


def test_a_sent_message_and_twilios_callbacks_name_the_same_ids() -> None:
    """End to end: the fake Twilio posts signed callbacks to the StatusCallback URL it was given
    (a local receiver); the parser reads the raw requests as the API route receives them."""
    fake = twilio()
    with serve(lambda _: json_reply(200, {})) as (receiver, received), serve(fake) as (url, _):
        sent = send(url, status_callback_url=f"{receiver}/callbacks/prv_1")
        callback_url = fake.created[0]["StatusCallback"]
        for state in ("sent", "delivered"):
            params = status(state, MessageSid=str(sent.provider_message_id), RawDlrDoneDate="2405060708")
            signed = twilio_signature(TOKEN, callback_url, {k: [v] for k, v in params.items()})
            httpx.post(callback_url, data=params, headers={"X-Twilio-Signature": signed}, timeout=10)
    events = [event for seen in received for event in parse(CallbackRequest(seen.method, seen.url, seen.headers,
                                                                            seen.body))]
    assert [e.kind for e in events] == ["sent", "delivered"]
    assert {(e.message_id, e.provider_message_id, e.recipient) for e in events} == {
        (MESSAGE_ID, sent.provider_message_id, "+14155550123")}
    assert events[1].occurred_at is None and events[1].raw["RawDlrDoneDate"] == "2405060708"


@pytest.mark.parametrize(("params", "kind", "reason", "permanent"), [
    (status("undelivered", ErrorCode="30003"), "bounced", FailureReason.TRANSIENT, False),
    (status("undelivered", ErrorCode="30005"), "bounced", FailureReason.INVALID_ADDRESS, True),
    (status("undelivered", ErrorCode="30006"), "bounced", FailureReason.INVALID_ADDRESS, True),
    (status("undelivered", ErrorCode="30007"), "bounced", FailureReason.BLOCKED, False),
    (status("undelivered", ErrorCode="30008"), "bounced", FailureReason.UNKNOWN, False),
    (status("undelivered"), "bounced", FailureReason.UNKNOWN, False),
    (status("failed", ErrorCode="21610"), "rejected", FailureReason.UNSUBSCRIBED, True),
    (status("failed", ErrorCode="30034"), "rejected", FailureReason.POLICY, True),
    (status("failed", ErrorCode="30001"), "rejected", FailureReason.THROTTLED, False),
    (status("canceled"), "rejected", FailureReason.UNKNOWN, True),
])
def test_failures_carry_the_reason_of_their_error_code(params: dict[str, str], kind: str, reason: FailureReason,
                                                       permanent: bool) -> None:
    [event] = parse(signed_post(CALLBACK_URL, params))
    assert (event.kind, event.reason, event.permanent, event.provider_code) == (
        kind, reason, permanent, params.get("ErrorCode"))
    assert event.detail.startswith(f"Twilio {params['MessageStatus']}")
    assert event.message_id == MESSAGE_ID


def test_statuses_without_an_event_and_read_receipts() -> None:
    for quiet in ("queued", "accepted", "sending", "scheduled"):
        assert parse(signed_post(CALLBACK_URL, status(quiet))) == []
    [read] = parse(signed_post(CALLBACK_URL, status("read")))
    assert read.kind == "read"


def test_without_our_id_the_event_names_twilios() -> None:
    [event] = parse(signed_post("https://herald.example/callbacks/prv_1", status("delivered")))
    assert (event.message_id, event.provider_message_id) == (None, "SM" + "a" * 32)


def test_one_flipped_bit_breaks_the_signature() -> None:
    request = signed_post(CALLBACK_URL, status("delivered"))
    body = bytearray(request.body)
    body[body.index(b"delivered")] ^= 0x01
    with pytest.raises(SignatureError, match="does not match"):
        parse(CallbackRequest(request.method, request.url, request.headers, bytes(body)))
    tampered_url = request.url.replace(MESSAGE_ID, MESSAGE_ID[:-1] + "2")   # someone else's message
    with pytest.raises(SignatureError):
        parse(CallbackRequest(request.method, tampered_url, request.headers, request.body))
    assert parse(request)


def test_another_token_is_refused_and_a_rotation_accepts_either() -> None:
    request = signed_post(CALLBACK_URL, status("delivered"), token=OTHER_TOKEN)
    with pytest.raises(SignatureError):
        parse(request)
    assert parse(request, [TOKEN, OTHER_TOKEN])
    # the parser built from the provider's secrets knows the Auth Token (and the previous one) itself
    parser = make_parser({"account_sid": ACCOUNT}, {"auth_token": TOKEN, "previous_auth_token": OTHER_TOKEN})
    assert parse(request, [], parser)


def test_missing_and_malformed_signatures_are_refused() -> None:
    request = signed_post(CALLBACK_URL, status("delivered"))
    without = {k: v for k, v in request.headers.items() if k != "x-twilio-signature"}
    with pytest.raises(SignatureError, match="missing"):
        parse(CallbackRequest(request.method, request.url, without, request.body))
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(SignatureError):
            parse(CallbackRequest(request.method, request.url, {**request.headers, "x-twilio-signature": bad},
                                  request.body))
    with pytest.raises(SignatureError, match="UTF-8"):
        parse(CallbackRequest(request.method, request.url, request.headers, b"Body=%FF%FE"))


def test_no_token_at_all_is_a_settings_problem() -> None:
    with pytest.raises(ProviderConfigError, match="auth_token"):
        parse(signed_post(CALLBACK_URL, status("delivered")), [])


def test_behind_a_proxy_the_public_url_of_the_settings_verifies() -> None:
    """Twilio signed https://herald.example/...; the app behind a TLS proxy sees http://10.0.0.5:8000/..."""
    signed = signed_post(CALLBACK_URL, status("delivered"))
    seen_by_app = CallbackRequest("POST", CALLBACK_URL.replace("https://herald.example", "http://10.0.0.5:8000"),
                                  signed.headers, signed.body)
    with pytest.raises(SignatureError):
        parse(seen_by_app)
    parser = make_parser({"account_sid": ACCOUNT, "status_callback_url": "https://herald.example/callbacks/prv_1"},
                         {"auth_token": TOKEN})
    [event] = parse(seen_by_app, [], parser)
    assert event.message_id == MESSAGE_ID


def test_a_verified_request_that_is_no_status_callback_is_an_error() -> None:
    with pytest.raises(ValueError, match="MessageStatus or MessageSid missing"):
        parse(signed_post(CALLBACK_URL, {"AccountSid": ACCOUNT, "Body": "hi"}))


# ---- incoming messages ---------------------------------------------------------------------------------------

INBOUND_URL = "https://herald.example/inbound/prv_1"


def incoming(**more: str) -> dict[str, str]:
    return {"ToCountry": "US", "ToState": "CA", "SmsMessageSid": "SM" + "b" * 32, "NumMedia": "0",
            "ToCity": "", "FromZip": "94105", "SmsSid": "SM" + "b" * 32, "FromState": "CA", "SmsStatus": "received",
            "FromCity": "SAN FRANCISCO", "Body": "Stop ✋", "FromCountry": "US", "To": SENDER,
            "MessagingServiceSid": SERVICE, "ToZip": "", "NumSegments": "1", "MessageSid": "SM" + "b" * 32,
            "AccountSid": ACCOUNT, "From": "+14155550123", "ApiVersion": "2010-04-01", **more}


def parse_inbound(request: CallbackRequest, secrets: list[str] | None = None) -> list[InboundMessage]:
    return run(lambda: TwilioWebhookParser().parse_inbound(request, [TOKEN] if secrets is None else secrets, NOW))


def test_an_incoming_sms_becomes_an_inbound_message() -> None:
    [message] = parse_inbound(signed_post(INBOUND_URL, incoming()))
    assert (message.channel, message.provider, message.sender, message.recipient, message.text) == (
        "sms", "twilio", "+14155550123", SENDER, "Stop ✋")
    assert (message.provider_message_id, message.received_at) == ("SM" + "b" * 32, NOW)
    assert message.raw["FromCity"] == "SAN FRANCISCO"


def test_an_incoming_whatsapp_message_loses_its_channel_prefix() -> None:
    [message] = parse_inbound(signed_post(INBOUND_URL, incoming(From="whatsapp:+5511987654321",
                                                                To="whatsapp:+14155238886")))
    assert (message.channel, message.sender, message.recipient) == ("whatsapp", "+5511987654321", "+14155238886")


def test_incoming_messages_are_verified_too() -> None:
    request = signed_post(INBOUND_URL, incoming())
    body = bytearray(request.body)
    body[body.index(b"Stop")] ^= 0x20   # "stop"
    with pytest.raises(SignatureError):
        parse_inbound(CallbackRequest(request.method, request.url, request.headers, bytes(body)))
    with pytest.raises(SignatureError):
        parse_inbound(request, [OTHER_TOKEN])


def test_a_status_callback_at_the_incoming_url_is_no_message_and_a_body_without_sender_is_an_error() -> None:
    assert parse_inbound(signed_post(INBOUND_URL, status("delivered"))) == []
    with pytest.raises(ValueError, match="From missing"):
        parse_inbound(signed_post(INBOUND_URL, {k: v for k, v in incoming().items() if k != "From"}))
