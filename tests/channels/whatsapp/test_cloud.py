"""WhatsApp Cloud API against a local Graph API on 127.0.0.1 (graphserver.py) that speaks Meta's
documented wire format, and the WABA webhooks (statuses, inbound messages, template status
updates) signed here with X-Hub-Signature-256 the way Meta signs them. Webhook bodies follow the
documented payloads ("Status messages webhook reference", "messages webhook reference",
"message_template_status_update webhook reference"; samples as in david-lev/pywa tests/data)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from herald.channels.whatsapp.cloud import (
    GraphApiError,
    WhatsAppCloudParser,
    WhatsAppCloudProvider,
    WhatsAppTemplate,
    error_meaning,
    make_parser,
    make_provider,
    verify_subscription,
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
    UnsupportedFeature,
    WhatsAppContent,
)
from herald.domain.errors import InvalidInput
from tests.channels.httpserver import closed_port
from tests.channels.whatsapp.graphserver import (
    PHONE_NUMBER_ID,
    TOKEN,
    VERSION,
    WABA_ID,
    Answer,
    FakeGraph,
    graph_error,
    serve_graph,
)

NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
MESSAGE_ID = "01HXMSG0000000000000000001"
APP_SECRET = "6d1f5c1e0d3b4a2f9e8d7c6b5a493827"
OLD_APP_SECRET = "0a9b8c7d6e5f40312233445566778899"
T = TypeVar("T")


def run(use: Callable[[], Awaitable[T]]) -> T:
    return asyncio.run(use())  # type: ignore[arg-type]


class FixedClock:
    def now(self) -> datetime:
        return NOW


def a_message(to: str = "+16505551234", **content: Any) -> OutboundMessage:
    whatsapp = WhatsAppContent(**(content or {"template_name": "order_shipped", "template_language": "en_US",
                                              "template_parameters": ("Anna", "#1042")}))
    return OutboundMessage(id=MESSAGE_ID, workspace_id="ws_1", channel="whatsapp", purpose="transactional",
                           to=to, whatsapp=whatsapp)


@pytest.fixture
def graph() -> FakeGraph:
    return FakeGraph()


@pytest.fixture
def base_url(graph: FakeGraph) -> Iterator[str]:
    with serve_graph(graph) as url:
        yield url


def provider(base_url: str, token: str = TOKEN, waba_id: str | None = WABA_ID) -> WhatsAppCloudProvider:
    return WhatsAppCloudProvider(PHONE_NUMBER_ID, token, waba_id=waba_id, api_version=VERSION, base_url=base_url,
                                 clock=FixedClock())


def send(base_url: str, message: OutboundMessage | None = None, token: str = TOKEN) -> SendResult:
    async def go() -> SendResult:
        cloud = provider(base_url, token)
        try:
            return await cloud.send(message or a_message())
        finally:
            await cloud.aclose()
    return run(go)


def use(base_url: str, call: Callable[[WhatsAppCloudProvider], Awaitable[T]], waba_id: str | None = WABA_ID) -> T:
    async def go() -> T:
        cloud = provider(base_url, waba_id=waba_id)
        try:
            return await call(cloud)
        finally:
            await cloud.aclose()
    return run(go)


# ---- sending ----------------------------------------------------------------------------------------

def test_a_template_message_is_posted_as_documented(graph: FakeGraph, base_url: str) -> None:
    result = send(base_url)
    assert result == SendResult.accepted(MESSAGE_ID, "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI0001", detail="accepted")
    [request] = graph.seen
    assert (request.method, request.path) == ("POST", f"/{VERSION}/{PHONE_NUMBER_ID}/messages")
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == {
        "messaging_product": "whatsapp", "recipient_type": "individual", "to": "16505551234",
        "biz_opaque_callback_data": MESSAGE_ID, "type": "template",
        "template": {"name": "order_shipped", "language": {"code": "en_US"},
                     "components": [{"type": "body", "parameters": [{"type": "text", "text": "Anna"},
                                                                    {"type": "text", "text": "#1042"}]}]},
    }


def test_a_template_without_parameters_has_no_components_and_meta_language_codes(graph: FakeGraph,
                                                                                 base_url: str) -> None:
    assert send(base_url, a_message(template_name="hello_world", template_language="pt-BR")).status == "accepted"
    assert graph.seen[0].json()["template"] == {"name": "hello_world", "language": {"code": "pt_BR"}}


def test_a_session_text_message(graph: FakeGraph, base_url: str) -> None:
    assert send(base_url, a_message(text="Your parcel is on its way 📦")).status == "accepted"
    body = graph.seen[0].json()
    assert (body["type"], body["text"]) == ("text", {"body": "Your parcel is on its way 📦"})
    assert "template" not in body and body["biz_opaque_callback_data"] == MESSAGE_ID


def test_media_messages_by_link_with_caption_and_document_filename(graph: FakeGraph, base_url: str) -> None:
    image = a_message(media_type="image", media_url="https://shop.example/p/42.jpg", caption="New in: the blue one")
    document = a_message(media_type="document", media_url="https://shop.example/invoices/INV-1042.pdf",
                         caption="Your invoice")
    audio = a_message(media_type="audio", media_url="https://shop.example/hello.ogg")
    assert [send(base_url, m).status for m in (image, document, audio)] == ["accepted"] * 3
    bodies = [seen.json() for seen in graph.seen]
    assert (bodies[0]["type"], bodies[0]["image"]) == (
        "image", {"link": "https://shop.example/p/42.jpg", "caption": "New in: the blue one"})
    assert bodies[1]["document"] == {"link": "https://shop.example/invoices/INV-1042.pdf", "caption": "Your invoice",
                                     "filename": "INV-1042.pdf"}
    assert bodies[2]["audio"] == {"link": "https://shop.example/hello.ogg"}


def test_content_whatsapp_cannot_carry_is_refused_before_any_request(graph: FakeGraph, base_url: str) -> None:
    with pytest.raises(UnsupportedFeature, match="caption"):
        send(base_url, a_message(media_type="audio", media_url="https://shop.example/a.ogg", caption="hi"))
    with pytest.raises(ValueError, match="exactly one"):
        send(base_url, a_message(text="hi", media_type="image", media_url="https://shop.example/p.jpg"))
    with pytest.raises(ValueError, match="language"):
        send(base_url, a_message(template_name="order_shipped"))
    email = OutboundMessage(id=MESSAGE_ID, workspace_id="ws_1", channel="email", purpose="marketing", to="a@b.example")
    with pytest.raises(UnsupportedFeature, match="WhatsApp content"):
        send(base_url, email)
    assert graph.seen == []


@pytest.mark.parametrize(("status", "code", "outcome", "reason"), [
    (400, 131026, "failed", FailureReason.INVALID_ADDRESS),   # Message undeliverable
    (400, 131030, "failed", FailureReason.INVALID_ADDRESS),   # Recipient not in allowed list
    (400, 131047, "failed", FailureReason.POLICY),            # Re-engagement message (> 24 h)
    (400, 130429, "retry", FailureReason.THROTTLED),          # Rate limit hit
    (400, 131048, "retry", FailureReason.THROTTLED),          # Spam rate limit hit
    (400, 131056, "retry", FailureReason.THROTTLED),          # Pair rate limit hit
    (400, 4, "retry", FailureReason.THROTTLED),               # API Too Many Calls
    (400, 80007, "retry", FailureReason.THROTTLED),           # Rate limit issues
    (401, 190, "retry", FailureReason.AUTH_FAILED),           # Access token has expired
    (403, 10, "retry", FailureReason.AUTH_FAILED),            # Permission denied
    (403, 200, "retry", FailureReason.AUTH_FAILED),           # API Permission
    (400, 132000, "failed", FailureReason.CONTENT_REJECTED),  # Template param count mismatch
    (404, 132001, "failed", FailureReason.CONTENT_REJECTED),  # Template does not exist
    (400, 132015, "failed", FailureReason.CONTENT_REJECTED),  # Template is paused
    (500, 131000, "retry", FailureReason.PROVIDER_DOWN),      # Something went wrong
    (400, 131050, "failed", FailureReason.UNSUBSCRIBED),      # User stopped marketing messages
    (400, 987654, "failed", FailureReason.UNKNOWN),           # a code nobody documented
    (503, 987654, "retry", FailureReason.PROVIDER_DOWN),      # ... on a 5xx
])
def test_graph_errors_map_to_the_failure_taxonomy(graph: FakeGraph, base_url: str, status: int, code: int,
                                                  outcome: str, reason: FailureReason) -> None:
    graph.errors["16505551234"] = graph_error(status, code, f"(#{code}) Title of {code}", "What went wrong")
    result = send(base_url)
    assert (result.status, result.reason, result.provider_code) == (outcome, reason, str(code))
    assert result.detail == (f"WhatsApp HTTP {status}: (#{code}) Title of {code}; What went wrong; "
                             "fbtrace_id AazRQ5QRM0HvT0tDpmhXQ6N")
    assert result.provider_message_id is None and result.maybe_sent is False


def test_throttling_honours_retry_after(graph: FakeGraph, base_url: str) -> None:
    graph.errors["16505551234"] = graph_error(429, 130429, "(#130429) Rate limit hit", headers={"Retry-After": "7"})
    result = send(base_url)
    assert (result.status, result.reason, result.retry_after) == ("retry", FailureReason.THROTTLED, 7.0)


def test_a_refused_token_waits_for_the_settings_and_is_never_echoed(base_url: str) -> None:
    result = send(base_url, token="EAAJB-revoked-token")
    assert (result.status, result.reason, result.provider_code) == ("retry", FailureReason.AUTH_FAILED, "190")
    assert "Invalid OAuth access token" in result.detail and "EAAJB" not in result.detail


def test_server_errors_without_a_graph_body(graph: FakeGraph, base_url: str) -> None:
    graph.override = lambda _: Answer(503, b"<html>Service Unavailable</html>", {"Content-Type": "text/html",
                                                                                 "Retry-After": "30"})
    down = send(base_url)
    graph.override = lambda _: Answer(502, b"Bad Gateway", {"Content-Type": "text/plain"})
    gateway = send(base_url)
    assert (down.status, down.reason, down.provider_code, down.retry_after, down.maybe_sent) == (
        "retry", FailureReason.PROVIDER_DOWN, "503", 30.0, False)
    assert down.detail == "WhatsApp HTTP 503: <html>Service Unavailable</html>"
    assert (gateway.reason, gateway.maybe_sent) == (FailureReason.PROVIDER_DOWN, True)   # a proxy lost its upstream


def test_a_connection_lost_after_the_request_may_have_sent_it_a_refused_one_did_not(graph: FakeGraph,
                                                                                    base_url: str) -> None:
    graph.override = lambda _: None
    dropped = send(base_url)
    assert len(graph.seen) >= 1   # the server read the whole request before hanging up
    refused = send(f"http://127.0.0.1:{closed_port()}")
    assert (dropped.status, dropped.reason, dropped.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, True)
    assert (refused.status, refused.reason, refused.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, False)


def test_error_meaning_covers_the_documented_ranges() -> None:
    assert error_meaning(132012).reason is FailureReason.CONTENT_REJECTED   # any 132xxx template error
    assert error_meaning(250).reason is FailureReason.AUTH_FAILED            # 200-299 API Permission
    assert error_meaning(None, 429).reason is FailureReason.THROTTLED
    assert error_meaning(None, 400).reason is FailureReason.UNKNOWN


# ---- settings -------------------------------------------------------------------------------------------

def test_settings_are_checked_with_a_clear_message() -> None:
    good = {"phone_number_id": PHONE_NUMBER_ID, "waba_id": WABA_ID, "api_version": "v21.0",
            "base_url": "http://127.0.0.1:9"}
    made = make_provider(good, {"access_token": TOKEN})
    assert (made.key, made.channel, made.phone_number_id, made.waba_id) == (
        "whatsapp_cloud", "whatsapp", PHONE_NUMBER_ID, WABA_ID)
    run(made.aclose)
    with pytest.raises(ProviderConfigError, match="access_token is required"):
        make_provider(good, {})
    with pytest.raises(ProviderConfigError, match="phone_number_id is required"):
        make_provider({"waba_id": WABA_ID}, {"access_token": TOKEN})
    with pytest.raises(ProviderConfigError, match="unknown settings region"):
        make_provider({**good, "region": "eu"}, {"access_token": TOKEN})
    with pytest.raises(ProviderConfigError, match=r"v21\.0"):
        make_provider({**good, "api_version": "21"}, {"access_token": TOKEN})
    with pytest.raises(ProviderConfigError, match="numeric id"):
        make_provider({**good, "phone_number_id": "+1 650 555"}, {"access_token": TOKEN})
    with pytest.raises(ProviderConfigError, match="app_secret is required"):
        make_parser(good, {"access_token": TOKEN})
    assert isinstance(make_parser(good, {"app_secret": APP_SECRET}), WhatsAppCloudParser)


# ---- webhook signatures and the subscription handshake ----------------------------------------------------------

def signed(payload: dict[str, Any] | bytes, secret: str = APP_SECRET) -> CallbackRequest:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    signature = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return CallbackRequest("POST", "https://herald.example/callbacks/prv_1", {
        "content-type": "application/json", "x-hub-signature-256": f"sha256={signature}"}, body)


def parser() -> WhatsAppCloudParser:
    return WhatsAppCloudParser(verify_tokens=["verify-me-7f3a"])


def statuses_of(request: CallbackRequest, secrets: list[str] | None = None) -> list[DeliveryEvent]:
    return run(lambda: parser().parse_callback(request, [APP_SECRET] if secrets is None else secrets, NOW))


def inbound_of(request: CallbackRequest) -> list[InboundMessage]:
    return run(lambda: parser().parse_inbound(request, [APP_SECRET], NOW))


def webhook(field: str, value: dict[str, Any]) -> dict[str, Any]:
    if field == "messages":
        value = {"messaging_product": "whatsapp",
                 "metadata": {"display_phone_number": "15550783881", "phone_number_id": PHONE_NUMBER_ID}, **value}
    return {"object": "whatsapp_business_account",
            "entry": [{"id": WABA_ID, "changes": [{"value": value, "field": field}]}]}


def status(state: str, *, callback_data: str | None = MESSAGE_ID, **more: Any) -> dict[str, Any]:
    record: dict[str, Any] = {"id": "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI0001", "status": state,
                              "timestamp": "1714979289", "recipient_id": "16505551234", **more}
    if callback_data is not None:
        record["biz_opaque_callback_data"] = callback_data
    return record


SENT = status("sent", conversation={"id": "7270432eae37498234f4444b35ffc5", "expiration_timestamp": "1715065689",
                                    "origin": {"type": "utility"}},
              pricing={"billable": True, "pricing_model": "CBP", "category": "utility"})


def test_a_good_signature_and_the_previous_secret_during_a_rotation_verify() -> None:
    request = signed(webhook("messages", {"statuses": [SENT]}))
    assert len(statuses_of(request)) == 1
    assert len(statuses_of(signed(webhook("messages", {"statuses": [SENT]}), OLD_APP_SECRET),
                           [APP_SECRET, OLD_APP_SECRET])) == 1
    configured = WhatsAppCloudParser(app_secrets=[APP_SECRET])   # make_parser's secrets count too
    assert len(run(lambda: configured.parse_callback(request, [], NOW))) == 1


def test_one_changed_body_bit_a_wrong_secret_or_no_signature_is_refused() -> None:
    request = signed(webhook("messages", {"statuses": [SENT]}))
    flipped = bytearray(request.body)
    flipped[40] ^= 0x01
    mutated = CallbackRequest(request.method, request.url, request.headers, bytes(flipped))
    unsigned = CallbackRequest(request.method, request.url, {"content-type": "application/json"}, request.body)
    malformed = CallbackRequest(request.method, request.url,
                                {"x-hub-signature-256": "sha1=" + "0" * 40}, request.body)
    with pytest.raises(SignatureError, match="does not match"):
        statuses_of(mutated)
    with pytest.raises(SignatureError, match="does not match"):
        statuses_of(signed(webhook("messages", {"statuses": [SENT]}), "not-the-app-secret"))
    with pytest.raises(SignatureError, match="missing"):
        statuses_of(unsigned)
    with pytest.raises(SignatureError, match="sha256="):
        statuses_of(malformed)
    with pytest.raises(SignatureError):
        run(lambda: parser().parse_inbound(mutated, [APP_SECRET], NOW))
    with pytest.raises(ProviderConfigError, match="app secret"):
        statuses_of(request, [])


def test_a_signed_body_that_is_not_json_is_refused_other_objects_are_ignored() -> None:
    with pytest.raises(ValueError, match="not a JSON object"):
        statuses_of(signed(b"[1, 2]"))
    assert statuses_of(signed({"object": "page", "entry": [{"changes": [{"field": "messages",
                                                                         "value": {"statuses": [SENT]}}]}]})) == []


def test_the_subscription_handshake_echoes_the_challenge_for_our_token_only() -> None:
    query = {"hub.mode": "subscribe", "hub.verify_token": "verify-me-7f3a", "hub.challenge": "1158201444"}
    assert parser().verify_subscription(query) == "1158201444"
    assert verify_subscription(query, ["old-token", "verify-me-7f3a"]) == "1158201444"
    assert verify_subscription({**query, "hub.verify_token": "guess"}, ["verify-me-7f3a"]) is None
    assert verify_subscription({**query, "hub.mode": "unsubscribe"}, ["verify-me-7f3a"]) is None
    assert verify_subscription({**query, "hub.verify_token": ""}, [""]) is None   # no token set: nothing matches
    assert verify_subscription({**query, "hub.challenge": "<script>\n"}, ["verify-me-7f3a"]) is None


# ---- statuses ------------------------------------------------------------------------------------------------

def test_sent_delivered_and_read_name_our_message_and_the_wamid() -> None:
    events = statuses_of(signed(webhook("messages", {"statuses": [
        SENT, status("delivered"), status("read", callback_data=None), status("deleted")]})))
    assert [e.kind for e in events] == ["sent", "delivered", "read"]
    assert [e.message_id for e in events] == [MESSAGE_ID, MESSAGE_ID, None]   # read falls back on the wamid
    assert all(e.provider_message_id == "wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI0001" for e in events)
    assert all(e.provider == "whatsapp_cloud" and e.recipient == "+16505551234" for e in events)
    assert events[0].occurred_at == datetime.fromtimestamp(1714979289, UTC)
    assert events[0].raw["pricing"]["category"] == "utility"


def failed(code: int, title: str, details: str) -> dict[str, Any]:
    return status("failed", errors=[{"code": code, "title": title, "message": title,
                                     "error_data": {"details": details},
                                     "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"}])


def test_failed_statuses_carry_the_reason_and_the_code() -> None:
    events = statuses_of(signed(webhook("messages", {"statuses": [
        failed(131026, "Message undeliverable", "Message Undeliverable."),
        failed(131047, "Re-engagement message", "Message failed to send because more than 24 hours have passed "
                                                "since the customer last replied to this number."),
        failed(130472, "User's number is part of an experiment",
               "Failed to send message because this user's phone number is part of an experiment"),
        failed(131050, "Unable to deliver the message", "The user has stopped marketing messages"),
        status("failed"),
    ]})))
    summary = [(e.kind, e.reason, e.permanent, e.provider_code) for e in events]
    assert summary == [
        ("bounced", FailureReason.INVALID_ADDRESS, True, "131026"),   # the address cannot receive WhatsApp
        ("rejected", FailureReason.POLICY, True, "131047"),           # the 24-hour window was closed
        ("rejected", FailureReason.BLOCKED, True, "130472"),
        ("bounced", FailureReason.UNSUBSCRIBED, True, "131050"),
        ("unsubscribed", FailureReason.UNSUBSCRIBED, None, "131050"),  # ... and an opt-out from marketing
        ("rejected", FailureReason.UNKNOWN, True, None),
    ]
    assert events[0].detail == "Message undeliverable; Message Undeliverable."
    assert all(e.message_id == MESSAGE_ID for e in events)


def test_a_sent_message_and_its_statuses_name_the_same_ids(graph: FakeGraph, base_url: str) -> None:
    sent = send(base_url)
    callback_data = graph.seen[0].json()["biz_opaque_callback_data"]
    [delivered] = statuses_of(signed(webhook("messages", {"statuses": [
        status("delivered", callback_data=callback_data) | {"id": sent.provider_message_id}]})))
    assert (delivered.message_id, delivered.provider_message_id) == (sent.message_id, sent.provider_message_id)


# ---- inbound messages ----------------------------------------------------------------------------------------

def inbound(kind: str, part: dict[str, Any], **more: Any) -> dict[str, Any]:
    return {"from": "5511987654321", "id": "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjA", "timestamp": "1714979000",
            "type": kind, kind: part, **more}


CONTACTS = [{"profile": {"name": "Ana"}, "wa_id": "5511987654321"}]


def test_inbound_text_and_button_replies() -> None:
    messages = inbound_of(signed(webhook("messages", {"contacts": CONTACTS, "messages": [
        inbound("text", {"body": "Does it come in another color?"}),
        inbound("button", {"payload": "STOP_PROMOTIONS", "text": "Stop promotions"},
                context={"from": "15550783881", "id": "wamid.template"}),
        inbound("interactive", {"type": "button_reply", "button_reply": {"id": "track", "title": "Track my order"}}),
        inbound("interactive", {"type": "list_reply", "list_reply": {"id": "size_m", "title": "Size M",
                                                                     "description": "Medium"}}),
    ]})))
    assert [m.text for m in messages] == ["Does it come in another color?", "Stop promotions", "Track my order",
                                          "Size M"]
    first = messages[0]
    assert (first.channel, first.provider, first.sender, first.recipient) == (
        "whatsapp", "whatsapp_cloud", "+5511987654321", PHONE_NUMBER_ID)
    assert first.provider_message_id == "wamid.HBgNNTUxMTk4NzY1NDMyMRUCABIYFjNFQjA"
    assert first.received_at == datetime.fromtimestamp(1714979000, UTC)
    assert messages[1].raw["button"]["payload"] == "STOP_PROMOTIONS"


def test_inbound_media_reactions_and_system_notices() -> None:
    messages = inbound_of(signed(webhook("messages", {"contacts": CONTACTS, "messages": [
        inbound("image", {"caption": "this one", "mime_type": "image/jpeg", "sha256": "x", "id": "65463453"}),
        inbound("audio", {"mime_type": "audio/ogg; codecs=opus", "sha256": "y", "id": "1234", "voice": True}),
        inbound("reaction", {"message_id": "wamid.ours", "emoji": "👍"}),
        inbound("system", {"body": "Ana changed their phone number", "type": "user_changed_number"}),
        {"from_user_id": "US.13491208655302741918", "id": "wamid.x", "timestamp": "1714979000", "type": "text",
         "text": {"body": "no phone number here"}},
    ]})))
    assert [(m.text, m.raw["type"]) for m in messages] == [("this one", "image"), ("", "audio"), ("👍", "reaction")]


def test_statuses_and_messages_are_read_by_their_own_parser() -> None:
    request = signed(webhook("messages", {"statuses": [SENT], "contacts": CONTACTS,
                                          "messages": [inbound("text", {"body": "hi"})]}))
    assert [e.kind for e in statuses_of(request)] == ["sent"]
    assert [m.text for m in inbound_of(request)] == ["hi"]
    assert inbound_of(signed(webhook("messages", {"statuses": [SENT]}))) == []


# ---- templates --------------------------------------------------------------------------------------------------

BODY = [{"type": "BODY", "text": "Hi {{1}}, your order {{2}} has shipped.",
         "example": {"body_text": [["Anna", "#1042"]]}}]


def test_templates_are_submitted_and_listed_across_pages(graph: FakeGraph, base_url: str) -> None:
    async def submit_all(cloud: WhatsAppCloudProvider) -> list[WhatsAppTemplate]:
        return [await cloud.submit_template(f"order_shipped_{n}", "en_US", "utility", BODY) for n in range(5)]
    submitted = use(base_url, submit_all)
    assert [(t.name, t.language, t.category, t.status) for t in submitted] == [
        (f"order_shipped_{n}", "en_US", "utility", "pending") for n in range(5)]
    assert submitted[0].id == graph.templates[0]["id"]
    create = graph.seen[0]
    assert (create.method, create.path) == ("POST", f"/{VERSION}/{WABA_ID}/message_templates")
    assert create.json() == {"name": "order_shipped_0", "language": "en_US", "category": "UTILITY", "components": BODY}
    graph.templates[1]["status"] = "APPROVED"
    graph.templates[2] |= {"status": "REJECTED", "rejected_reason": "INVALID_FORMAT"}
    graph.seen.clear()

    listed = use(base_url, lambda cloud: cloud.list_templates())
    assert [(t.name, t.status, t.rejected_reason) for t in listed] == [
        ("order_shipped_0", "pending", None), ("order_shipped_1", "approved", None),
        ("order_shipped_2", "rejected", "INVALID_FORMAT"), ("order_shipped_3", "pending", None),
        ("order_shipped_4", "pending", None)]
    assert all(t.category == "utility" and t.language == "en_US" for t in listed)
    assert len(graph.seen) == 3   # pages of 2, 2 and 1; the last names no next page
    assert "after" not in graph.seen[0].query
    assert graph.seen[0].query["fields"] == ["id,name,language,category,status,rejected_reason"]
    assert all(s.headers["authorization"] == f"Bearer {TOKEN}" and s.method == "GET" for s in graph.seen)


def test_a_template_meta_refuses_raises_with_the_reason(graph: FakeGraph, base_url: str) -> None:
    async def twice(cloud: WhatsAppCloudProvider) -> None:
        await cloud.submit_template("welcome", "en", "MARKETING", BODY)
        await cloud.submit_template("welcome", "en", "MARKETING", BODY)
    with pytest.raises(GraphApiError, match="already exists") as refused:
        use(base_url, twice)
    assert (refused.value.reason, refused.value.http_status, refused.value.code) == (
        FailureReason.CONTENT_REJECTED, 400, 100)


@pytest.mark.parametrize(("args", "field"), [
    (("Order Shipped", "en_US", "UTILITY", BODY), "name"),
    (("order_shipped", "english", "UTILITY", BODY), "language"),
    (("order_shipped", "en_US", "PROMOTIONAL", BODY), "category"),
    (("order_shipped", "en_US", "UTILITY", []), "components"),
])
def test_template_arguments_meta_would_refuse_are_refused_first(graph: FakeGraph, base_url: str,
                                                               args: tuple[Any, ...], field: str) -> None:
    with pytest.raises(InvalidInput) as bad:
        use(base_url, lambda cloud: cloud.submit_template(*args))
    assert bad.value.fields[0].field == field
    assert graph.seen == []


def test_templates_need_the_waba_id(base_url: str) -> None:
    with pytest.raises(ProviderConfigError, match="waba_id"):
        use(base_url, lambda cloud: cloud.list_templates(), waba_id=None)


def test_template_calls_without_an_answer_raise_provider_down() -> None:
    with pytest.raises(GraphApiError, match="no answer") as down:
        use(f"http://127.0.0.1:{closed_port()}", lambda cloud: cloud.list_templates())
    assert down.value.reason is FailureReason.PROVIDER_DOWN


def test_template_status_updates_are_parsed() -> None:
    approved = {"event": "APPROVED", "message_template_id": 1627019861106475,
                "message_template_name": "order_shipped", "message_template_language": "en_US", "reason": "NONE",
                "message_template_category": "UTILITY"}
    rejected = {"event": "REJECTED", "message_template_id": 1627019861106476, "message_template_name": "big_sale",
                "message_template_language": "pt_BR", "reason": "INCORRECT_CATEGORY"}
    flagged = {"event": "FLAGGED", "message_template_id": 1627019861106477, "message_template_name": "winback",
               "message_template_language": "es", "reason": None}
    body = {"object": "whatsapp_business_account", "entry": [{"id": WABA_ID, "time": 1714979289, "changes": [
        {"field": "message_template_status_update", "value": value} for value in (approved, rejected, flagged)]}]}
    updates = run(lambda: parser().parse_template_updates(signed(body), [APP_SECRET], NOW))
    assert [(u.name, u.language, u.event, u.approval_status, u.reason, u.category) for u in updates] == [
        ("order_shipped", "en_US", "approved", "approved", None, "utility"),
        ("big_sale", "pt_BR", "rejected", "rejected", "INCORRECT_CATEGORY", None),
        ("winback", "es", "flagged", None, None, None)]
    assert (updates[0].waba_id, updates[0].template_id) == (WABA_ID, "1627019861106475")
    assert updates[0].occurred_at == datetime.fromtimestamp(1714979289, UTC)
    assert statuses_of(signed(body)) == []   # not a messages webhook
    with pytest.raises(SignatureError):
        run(lambda: parser().parse_template_updates(signed(body, "wrong"), [APP_SECRET], NOW))
