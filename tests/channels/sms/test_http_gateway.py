"""The generic HTTP SMS gateway against a local gateway on 127.0.0.1 (peer.py) that checks the
configured authentication and body shape and answers like a typical gateway, and its callbacks
signed here with HMAC-SHA256 of the raw body (or a key in the callback URL), as configured."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

import httpx
import pytest

from herald.channels.sms.http_gateway import (
    HttpGatewayProvider,
    HttpGatewayWebhookParser,
    json_pointer,
    make_parser,
    make_provider,
    resolve,
)
from herald.domain.delivery import (
    CallbackRequest,
    DeliveryEvent,
    FailureReason,
    InboundMessage,
    OutboundMessage,
    ProviderConfigError,
    SendResult,
    SignatureError,
    SmsContent,
    UnsupportedFeature,
    WhatsAppContent,
)
from tests.channels.httpserver import closed_port
from tests.channels.sms.peer import Seen, json_reply, serve
from tests.stores.localserver import Reply

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
MESSAGE_ID = "01HXSMS0000000000000000007"
WEBHOOK_KEY = "whsec-gateway-key-1"
OTHER_KEY = "whsec-gateway-key-0"
T = TypeVar("T")


def run(use: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(use())  # type: ignore[arg-type]


def a_message(text: str = "Code 123456 ✓", sender: str | None = None) -> OutboundMessage:
    return OutboundMessage(id=MESSAGE_ID, workspace_id="ws_1", channel="sms", purpose="transactional",
                           to="+447700900123", sms=SmsContent(text, sender))


def send(config: dict[str, Any], secrets: dict[str, str] | None = None,
         message: OutboundMessage | None = None) -> SendResult:
    async def go() -> SendResult:
        provider = make_provider(config, secrets or {})
        try:
            return await provider.send(message or a_message())
        finally:
            await provider.aclose()
    return run(go)


def gateway(expect_auth: tuple[str, str] | None = None, status: int = 201,
            answer: Any = None) -> Callable[[Seen], Reply]:
    """A typical gateway: refuses a request without the expected auth header, else accepts."""
    def reply(request: Seen) -> Reply:
        if expect_auth is not None and request.headers.get(expect_auth[0].lower()) != expect_auth[1]:
            return json_reply(401, {"error": "invalid credentials"})
        return json_reply(status, answer if answer is not None else {"messages": [{"id": "gw-0001", "status": 0}]})
    return reply


# ---- sending ---------------------------------------------------------------------------------------

def test_json_post_with_bearer_auth_static_fields_and_the_gateways_id() -> None:
    with serve(gateway(("Authorization", "Bearer tok-123"))) as (url, seen):
        result = send({"url": f"{url}/sms/send", "auth": "bearer", "from": "HERALD",
                       "message_id_path": "/messages/0/id", "static_fields": {"type": "unicode", "ttl": 3600}},
                      {"token": "tok-123"})
    assert result == SendResult.accepted(MESSAGE_ID, "gw-0001")
    [request] = seen
    assert (request.method, request.path, request.headers["content-type"]) == ("POST", "/sms/send", "application/json")
    assert request.json() == {"type": "unicode", "ttl": 3600, "to": "+447700900123", "text": "Code 123456 ✓",
                              "from": "HERALD", "reference": MESSAGE_ID}


def test_form_post_with_basic_auth_and_own_field_names() -> None:
    basic = "Basic " + base64.b64encode(b"shop:pa55").decode()
    config = {"format": "form", "auth": "basic", "username": "shop", "to_field": "msisdn",
              "from_field": "sender", "text_field": "message", "reference_field": "client_ref",
              "success_status": "200, 201", "message_id_path": "/id"}
    with serve(gateway(("Authorization", basic), answer={"id": 42})) as (url, seen):
        result = send({**config, "url": f"{url}/api"}, {"password": "pa55"}, a_message(sender="+15550001111"))
    assert result == SendResult.accepted(MESSAGE_ID, "42")
    assert seen[0].headers["content-type"] == "application/x-www-form-urlencoded"
    assert seen[0].form() == {"msisdn": ["+447700900123"], "message": ["Code 123456 ✓"], "sender": ["+15550001111"],
                              "client_ref": [MESSAGE_ID]}


def test_get_with_an_api_key_header_sends_query_parameters() -> None:
    with serve(lambda r: Reply(200, b"OK: queued", {"Content-Type": "text/plain"})
               if r.headers.get("x-api-key") == "k-9" else json_reply(403)) as (url, seen):
        result = send({"url": f"{url}/cgi-bin/sendsms?account=7", "method": "get", "auth": "header:X-Api-Key",
                       "reference_field": "", "message_id_path": "/id"}, {"token": "k-9"})
    assert result == SendResult.accepted(MESSAGE_ID, None)   # not JSON: no id, still accepted
    assert (seen[0].method, seen[0].body) == ("GET", b"")
    assert seen[0].query == {"account": ["7"], "to": ["+447700900123"], "text": ["Code 123456 ✓"]}


def test_put_and_a_per_message_status_url() -> None:
    with serve(gateway()) as (url, seen):
        send({"url": url, "method": "PUT", "callback_url_field": "dlr_url",
              "status_callback_url": "https://herald.example/callbacks/prv_9"})
    assert seen[0].method == "PUT"
    assert seen[0].json()["dlr_url"] == f"https://herald.example/callbacks/prv_9?m={MESSAGE_ID}"


@pytest.mark.parametrize(("reply", "outcome"), [
    (json_reply(429, {"error": "slow down"}, {"Retry-After": "9"}), ("retry", FailureReason.THROTTLED, 9.0)),
    (json_reply(401, {"error": "bad key"}), ("retry", FailureReason.AUTH_FAILED, None)),
    (json_reply(403, {"error": "no credit"}), ("retry", FailureReason.AUTH_FAILED, None)),
    (json_reply(408), ("retry", FailureReason.PROVIDER_DOWN, None)),
    (json_reply(500, {"error": "boom"}), ("retry", FailureReason.PROVIDER_DOWN, None)),
    (json_reply(400, {"error": "invalid destination"}), ("failed", FailureReason.UNKNOWN, None)),
    (json_reply(202, {"id": "x"}), ("failed", FailureReason.UNKNOWN, None)),   # not in success_status "200-201"
])
def test_answers_outside_success_status(reply: Reply, outcome: tuple[str, FailureReason, float | None]) -> None:
    with serve(lambda _: reply) as (url, _):
        result = send({"url": url, "success_status": "200-201"})
    assert (result.status, result.reason, result.retry_after) == outcome
    assert result.provider_code == str(reply.status)
    assert result.detail.startswith(f"SMS gateway HTTP {reply.status}")


def test_a_lost_answer_may_have_sent_it_a_refused_connection_did_not() -> None:
    with serve(lambda _: None) as (url, _):
        dropped = send({"url": url})
    refused = send({"url": f"http://127.0.0.1:{closed_port()}/send"})
    assert (dropped.status, dropped.reason, dropped.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, True)
    assert (refused.status, refused.reason, refused.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, False)


def test_a_message_of_another_channel_is_refused() -> None:
    message = OutboundMessage(id="m", workspace_id="ws", channel="whatsapp", purpose="marketing", to="+1",
                              whatsapp=WhatsAppContent(text="hi"))
    provider = make_provider({"url": "https://gw.example/send"}, {})
    with pytest.raises(UnsupportedFeature, match="sends SMS"):
        run(lambda: provider.send(message))
    run(provider.aclose)


@pytest.mark.parametrize(("config", "secrets", "problem"), [
    ({}, {}, "url is required"),
    ({"url": "gw.example/send"}, {}, "absolute https:// URL"),
    ({"url": "https://gw.example", "methd": "POST"}, {}, "unknown settings methd"),
    ({"url": "https://gw.example", "method": "DELETE"}, {}, "POST, PUT or GET"),
    ({"url": "https://gw.example", "format": "xml"}, {}, "json or form"),
    ({"url": "https://gw.example", "auth": "digest"}, {}, "header:<Header-Name>"),
    ({"url": "https://gw.example", "auth": "header:"}, {"token": "t"}, "header:<Header-Name>"),
    ({"url": "https://gw.example", "auth": "basic", "username": "u"}, {}, "secret password is required"),
    ({"url": "https://gw.example", "auth": "basic"}, {"password": "p"}, "username is required"),
    ({"url": "https://gw.example", "auth": "bearer"}, {}, "secret token is required"),
    ({"url": "https://gw.example", "success_status": "2xx"}, {}, "like 200-299"),
    ({"url": "https://gw.example", "success_status": "299-200"}, {}, "not an HTTP status range"),
    ({"url": "https://gw.example", "message_id_path": "messages.0.id"}, {}, "must start with /"),
    ({"url": "https://gw.example", "message_id_path": "/a~2"}, {}, "~ not followed by 0 or 1"),
    ({"url": "https://gw.example", "callback_url_field": "dlr"}, {}, "go together"),
    ({"url": "https://gw.example", "static_fields": ["a"]}, {}, "static_fields"),
    ({"url": "https://gw.example", "timeout_seconds": 0}, {}, "positive number"),
])
def test_settings_problems_name_what_to_fix(config: dict[str, Any], secrets: dict[str, str], problem: str) -> None:
    with pytest.raises(ProviderConfigError, match=problem):
        make_provider(config, secrets)


def test_json_pointer_follows_rfc_6901() -> None:
    document = {"a/b": {"m~n": [10, {"id": "x"}]}, "": 1, "list": [0, 1]}
    assert resolve(document, json_pointer("/a~1b/m~0n/1/id")) == "x"
    assert resolve(document, json_pointer("/")) == 1
    assert resolve(document, json_pointer("")) is document
    assert resolve(document, json_pointer("/list/1")) == 1
    missing = resolve(document, json_pointer("/list/01"))   # leading zeros are not array indexes
    assert missing is resolve(document, json_pointer("/list/9")) is resolve(document, json_pointer("/nope/x"))


# ---- callbacks ------------------------------------------------------------------------------------------

CALLBACKS = {"url": "https://gw.example/send", "callback_signature_header": "X-Gateway-Signature"}


def signed(body: bytes, key: str = WEBHOOK_KEY, url: str = "https://herald.example/callbacks/prv_9",
           encode: Callable[[bytes], str] = bytes.hex, prefix: str = "") -> CallbackRequest:
    digest = hmac.new(key.encode(), body, hashlib.sha256).digest()
    return CallbackRequest("POST", url, {"content-type": "application/json",
                                         "x-gateway-signature": prefix + encode(digest)}, body)


def parse(request: CallbackRequest, config: dict[str, Any] | None = None,
          secrets: list[str] | None = None) -> list[DeliveryEvent]:
    parser = make_parser(config or CALLBACKS, {})
    return run(lambda: parser.parse_callback(request, [WEBHOOK_KEY] if secrets is None else secrets, NOW))


def report(status: str, **more: Any) -> dict[str, Any]:
    return {"id": "gw-0001", "reference": MESSAGE_ID, "to": "+447700900123", "status": status, **more}


def test_a_sent_message_and_the_gateways_signed_report_name_the_same_ids() -> None:
    """End to end: the gateway accepts the send, then posts an HMAC-signed report (echoing the
    reference it was given) to a local receiver; the parser reads the raw request."""
    with serve(gateway()) as (url, sent_requests), serve(lambda _: json_reply(204)) as (receiver, received):
        sent = send({"url": url, "message_id_path": "/messages/0/id"})
        dlr = json.dumps({"id": "gw-0001", "reference": sent_requests[0].json()["reference"], "status": "DELIVRD",
                          "to": "+447700900123"}).encode()
        httpx.post(f"{receiver}/callbacks/prv_9", content=dlr, timeout=10, headers={
            "Content-Type": "application/json",
            "X-Gateway-Signature": hmac.new(WEBHOOK_KEY.encode(), dlr, hashlib.sha256).hexdigest()})
    [seen] = received
    [event] = parse(CallbackRequest(seen.method, seen.url, seen.headers, seen.body))
    assert (event.kind, event.message_id, event.provider_message_id, event.recipient) == (
        "delivered", sent.message_id, sent.provider_message_id, "+447700900123")


def test_a_batch_of_reports_with_default_status_words() -> None:
    body = json.dumps([report("DELIVRD"), report("enroute"), report("UNDELIV", error_code="1"), report("EXPIRED"),
                       report("REJECTD", error_code=88), report("buffered"), report("UNKNOWN")]).encode()
    events = parse(signed(body))
    assert [(e.kind, e.reason, e.permanent) for e in events] == [
        ("delivered", None, None), ("sent", None, None), ("bounced", FailureReason.UNKNOWN, False),
        ("bounced", FailureReason.EXPIRED, False), ("rejected", FailureReason.UNKNOWN, True),
        ("deferred", FailureReason.TRANSIENT, False)]
    assert (events[2].provider_code, events[4].provider_code) == ("1", "88")
    assert events[2].detail == "SMS gateway status UNDELIV, error 1"
    assert all(e.message_id == MESSAGE_ID and e.provider == "http_gateway" for e in events)


def test_configured_words_error_reasons_and_nested_fields() -> None:
    config = {**CALLBACKS, "callback_status_field": "/result/state", "callback_id_field": "/result/msg",
              "callback_reference_field": "ref", "callback_error_field": "/result/err",
              "callback_recipient_field": "msisdn",
              "callback_statuses": {"OK": "delivered", "NOK": "bounced", "PENDING": "ignore"},
              "callback_error_reasons": {"12": "invalid_address", "34": "blocked"}}
    records = [{"ref": MESSAGE_ID, "msisdn": "+447700900123", "result": {"state": state, "msg": 7, "err": err}}
               for state, err in (("ok", None), ("NOK", 12), ("NOK", 34), ("pending", None))]
    events = parse(signed(json.dumps(records).encode()), config)
    assert [(e.kind, e.reason, e.permanent) for e in events] == [
        ("delivered", None, None), ("bounced", FailureReason.INVALID_ADDRESS, True),
        ("bounced", FailureReason.BLOCKED, False)]
    assert {(e.message_id, e.provider_message_id, e.recipient) for e in events} == {
        (MESSAGE_ID, "7", "+447700900123")}


def test_our_id_from_the_callback_url_when_the_report_has_no_reference() -> None:
    body = json.dumps({"id": "gw-0001", "status": "delivered"}).encode()
    [event] = parse(signed(body, url=f"https://herald.example/callbacks/prv_9?m={MESSAGE_ID}"))
    assert event.message_id == MESSAGE_ID
    [without] = parse(signed(body))
    assert (without.message_id, without.provider_message_id) == (None, "gw-0001")


def test_a_form_callback() -> None:
    body = urlencode({"id": "gw-5", "reference": MESSAGE_ID, "status": "failed", "error_code": "12"}).encode()
    [event] = parse(signed(body), {**CALLBACKS, "callback_format": "form",
                                   "callback_error_reasons": {"12": "invalid_address"}})
    assert (event.kind, event.reason, event.permanent, event.provider_code) == (
        "bounced", FailureReason.INVALID_ADDRESS, True, "12")


def test_one_flipped_bit_a_wrong_key_or_no_signature_is_refused() -> None:
    request = signed(json.dumps(report("DELIVRD")).encode())
    body = bytearray(request.body)
    body[body.index(b"DELIVRD")] ^= 0x01
    with pytest.raises(SignatureError, match="does not match"):
        parse(CallbackRequest(request.method, request.url, request.headers, bytes(body)))
    with pytest.raises(SignatureError, match="does not match"):
        parse(signed(request.body, key=OTHER_KEY))
    with pytest.raises(SignatureError, match="no x-gateway-signature"):
        parse(CallbackRequest(request.method, request.url, {"content-type": "application/json"}, request.body))
    with pytest.raises(SignatureError, match="not a hex or base64"):
        parse(CallbackRequest(request.method, request.url, {"x-gateway-signature": "zz" * 32}, request.body))
    assert parse(request)


def test_base64_prefixed_signatures_and_a_key_rotation() -> None:
    body = json.dumps(report("DELIVRD")).encode()
    as_base64 = signed(body, encode=lambda d: base64.b64encode(d).decode(), prefix="sha256=")
    assert parse(as_base64)
    old = signed(body, key=OTHER_KEY)
    assert parse(old, secrets=[WEBHOOK_KEY, OTHER_KEY])


def test_a_key_in_the_callback_url_for_gateways_that_cannot_sign() -> None:
    config = {"url": "https://gw.example/send", "callback_token_param": "key"}
    body = json.dumps(report("DELIVRD")).encode()

    def at(url: str) -> CallbackRequest:
        return CallbackRequest("POST", url, {"content-type": "application/json"}, body)

    assert parse(at(f"https://herald.example/callbacks/prv_9?key={WEBHOOK_KEY}"), config)
    with pytest.raises(SignatureError, match="is not the webhook key"):
        parse(at(f"https://herald.example/callbacks/prv_9?key={OTHER_KEY}"), config)
    with pytest.raises(SignatureError, match="has no key parameter"):
        parse(at("https://herald.example/callbacks/prv_9"), config)


def test_callbacks_that_cannot_be_verified_are_a_settings_problem() -> None:
    with pytest.raises(ProviderConfigError, match="must be verifiable"):
        make_parser({"url": "https://gw.example/send"}, {})
    with pytest.raises(ProviderConfigError, match="webhook_key"):
        parse(signed(b"{}"), secrets=[])
    with pytest.raises(ProviderConfigError, match="callback_statuses"):
        make_parser({**CALLBACKS, "callback_statuses": {"OK": "great"}}, {})
    with pytest.raises(ProviderConfigError, match="callback_error_reasons"):
        make_parser({**CALLBACKS, "callback_error_reasons": {"1": "bad"}}, {})


def test_verified_bodies_that_are_not_reports_are_errors() -> None:
    for body, problem in ((b"not json", "not JSON"), (b"[1, 2]", "neither a JSON object"),
                          (json.dumps({"id": "x"}).encode(), "no status field"),
                          (json.dumps(report("WEIRD")).encode(), "'WEIRD' is not in callback_statuses")):
        with pytest.raises(ValueError, match=problem):
            parse(signed(body))


# ---- incoming messages ------------------------------------------------------------------------------------

def parse_inbound(request: CallbackRequest, config: dict[str, Any] | None = None) -> list[InboundMessage]:
    parser: HttpGatewayWebhookParser = make_parser(config or CALLBACKS, {})
    return run(lambda: parser.parse_inbound(request, [WEBHOOK_KEY], NOW))


def test_an_incoming_message_with_default_and_configured_fields() -> None:
    [message] = parse_inbound(signed(json.dumps({"from": "+447700900123", "to": "HERALD", "text": " STOP ",
                                                 "id": "mo-1"}).encode()))
    assert (message.channel, message.provider, message.sender, message.recipient, message.text) == (
        "sms", "http_gateway", "+447700900123", "HERALD", " STOP ")
    assert (message.provider_message_id, message.received_at) == ("mo-1", NOW)
    config = {**CALLBACKS, "callback_format": "form", "inbound_from_field": "msisdn", "inbound_text_field": "body",
              "inbound_to_field": "shortcode", "inbound_id_field": "moId"}
    body = urlencode({"msisdn": "+33612345678", "body": "Arrêt", "shortcode": "38100", "moId": "9"}).encode()
    [form] = parse_inbound(signed(body), config)
    assert (form.sender, form.recipient, form.text, form.provider_message_id) == ("+33612345678", "38100", "Arrêt", "9")


def test_incoming_messages_are_verified_and_need_a_sender() -> None:
    request = signed(json.dumps({"from": "+447700900123", "text": "STOP"}).encode())
    with pytest.raises(SignatureError):
        parse_inbound(CallbackRequest(request.method, request.url, request.headers, request.body + b" "))
    with pytest.raises(ValueError, match="no from field"):
        parse_inbound(signed(json.dumps({"text": "STOP"}).encode()))


def test_the_provider_is_an_http_gateway_provider() -> None:
    assert isinstance(make_provider({"url": "https://gw.example/send"}, {}), HttpGatewayProvider)
