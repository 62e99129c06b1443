"""The SMPP 3.4 provider against real SMSCs on 127.0.0.1: smpp34's (an independent SMPP
implementation) for sending, receipts, inbound messages, throttling and reconnects; a minimal
hand-written SMSC where smpp34 cannot (bind refusal, enquire_link, unbind); smpp34's codec to
check ours PDU by PDU."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import smpp34
from hypothesis import given, settings
from hypothesis import strategies as st

from herald.channels.sms.smpp import (
    SUBMIT_SM,
    Address,
    DeliverSm,
    Pacer,
    ReceiptTracker,
    SmppProvider,
    _Tracked,
    encode_parts,
    encode_pdu,
    make_provider,
    parse_deliver_sm,
    parse_receipt_text,
    read_receipt,
    source_address,
    split_udh,
    submit_sm_body,
)
from herald.domain.delivery import (
    DeliveryEvent,
    EmailContent,
    FailureReason,
    InboundMessage,
    OutboundMessage,
    ProviderConfigError,
    SmsContent,
    UnsupportedFeature,
)
from tests.channels.sms.smsc import WAIT, Proxy, RawSmsc, Smsc, Submitted

TO = "+4915112345678"


def outbound(text: str, message_id: str = "msg_1", to: str = TO, sender: str | None = None) -> OutboundMessage:
    return OutboundMessage(id=message_id, workspace_id="ws_1", channel="sms", purpose="transactional", to=to,
                           sms=SmsContent(text, sender))


def provider_for(port: int, **config: Any) -> SmppProvider:
    settings = {"host": "127.0.0.1", "port": port, "system_id": "herald", "system_type": "HERALD",
                "source_addr": "HeraldShop", "reconnect_min": 0.05, "reconnect_max": 0.2, "connect_timeout": 5,
                **config}
    return make_provider(settings, {"password": "secret"})


def run(scenario: Callable[[], Awaitable[Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(scenario(), 60))


class Collector:
    """Consumes provider.events() on a task (as the lead's consumer would) into `items`."""

    def __init__(self, provider: SmppProvider, smsc: Smsc) -> None:
        self.items: list[DeliveryEvent | InboundMessage] = []
        self.smsc = smsc
        self.task = asyncio.create_task(self._consume(provider.events()))

    async def _consume(self, events: AsyncIterator[DeliveryEvent | InboundMessage]) -> None:
        async for item in events:
            self.items.append(item)
            await self.smsc.notify()

    async def count(self, n: int) -> list[DeliveryEvent | InboundMessage]:
        await self.smsc.until(lambda: len(self.items) >= n)
        return self.items[:n]


# ---- GSM-7 as the tests read it (independent of the provider): ASCII letters, digits and these
# punctuation marks are their own septets; three extension characters are ESC + code.
TEST_EXTENSION = {"€": b"\x1be", "[": b"\x1b<", "]": b"\x1b>"}


def read_gsm7(septets: bytes) -> str:
    text = septets.decode("ascii")
    for char, code in TEST_EXTENSION.items():
        text = text.replace(code.decode("ascii"), char)
    return text


def concatenated(parts: list[Submitted]) -> list[tuple[int, int, int, bytes]]:
    """(reference, total, seq, payload) of each part, checking the UDH is IEI 0x00 with length 3."""
    out = []
    for part in parts:
        assert part.esm_class == 0x40
        udh = part.short_message[:6]
        assert udh[:3] == b"\x05\x00\x03"
        out.append((udh[3], udh[4], udh[5], part.short_message[6:]))
    return out


# ---- sending ---------------------------------------------------------------------------------------

def test_a_short_gsm7_text_is_one_submit_sm() -> None:
    async def scenario() -> tuple[Any, Smsc]:
        async with Smsc() as smsc:
            provider = provider_for(smsc.port)
            result = await provider.send(outbound("Your order #1001 has shipped!"))
            esme = await smsc.bound()
            await provider.aclose()
            assert esme.system_id == "herald"
            return result, smsc

    result, smsc = run(scenario)
    assert (result.status, result.provider_message_id, result.maybe_sent) == ("accepted", "smsc-1", False)
    [submit] = smsc.submitted
    assert submit.esm_class == 0x00
    assert submit.data_coding == 0x00
    assert submit.registered_delivery == 1
    assert (submit.destination_addr, submit.dest_addr_ton, submit.dest_addr_npi) == ("4915112345678", 1, 1)
    assert (submit.source_addr, submit.source_addr_ton, submit.source_addr_npi) == ("HeraldShop", 5, 0)
    assert read_gsm7(submit.short_message) == "Your order #1001 has shipped!"


def test_a_300_character_ucs2_text_arrives_as_linked_parts() -> None:
    text = ("Ваш заказ №1001 отправлен 📦 и будет у вас в пятницу. " * 6)[:299] + "!"  # noqa: RUF001
    assert len(text) == 300

    async def scenario() -> tuple[Any, Smsc]:
        async with Smsc() as smsc:
            provider = provider_for(smsc.port)
            result = await provider.send(outbound(text))
            await provider.aclose()
            return result, smsc

    result, smsc = run(scenario)
    assert result.status == "accepted"
    assert result.provider_message_id == "smsc-1"
    parts = concatenated(smsc.submitted)
    assert len(parts) >= 5
    assert {p.data_coding for p in smsc.submitted} == {0x08}
    assert {p.registered_delivery for p in smsc.submitted} == {1}
    assert len({ref for ref, _total, _seq, _payload in parts}) == 1
    assert [total for _ref, total, _seq, _payload in parts] == [len(parts)] * len(parts)
    assert [seq for _ref, _total, seq, _payload in parts] == list(range(1, len(parts) + 1))
    assert all(len(payload) <= 134 for *_, payload in parts)                 # 67 UTF-16 units
    pieces = [payload.decode("utf-16-be") for *_, payload in parts]         # strict: no pair split
    assert "".join(pieces) == text
    assert result.detail == f"{len(parts)} parts"


def test_a_long_gsm7_text_arrives_as_linked_parts_without_splitting_an_escape() -> None:
    text = "A" * 152 + "€" + "Order 1001 [shipped] " * 12 + "Thanks!"     # the € would straddle part 1's end

    async def scenario() -> tuple[list[Any], Smsc]:
        async with Smsc() as smsc:
            provider = provider_for(smsc.port)
            results = [await provider.send(outbound(text, "msg_1")), await provider.send(outbound(text, "msg_2"))]
            await provider.aclose()
            return results, smsc

    results, smsc = run(scenario)
    assert [r.status for r in results] == ["accepted", "accepted"]
    assert {p.data_coding for p in smsc.submitted} == {0x00}
    parts = concatenated(smsc.submitted)
    first, second = parts[: len(parts) // 2], parts[len(parts) // 2:]
    for message in (first, second):
        assert [seq for _ref, _total, seq, _payload in message] == list(range(1, len(message) + 1))
        assert {total for _ref, total, _seq, _payload in message} == {len(message)}
        assert all(len(payload) <= 153 and not payload.endswith(b"\x1b") for *_, payload in message)
        assert "".join(read_gsm7(payload) for *_, payload in message) == text
    assert first[0][3] == b"A" * 152          # the escape moved whole into part 2
    assert first[0][0] != second[0][0]        # each concatenated message has its own reference


@pytest.mark.parametrize(("status", "outcome", "reason"), [
    (0x58, "retry", FailureReason.THROTTLED),           # ESME_RTHROTTLED
    (0x14, "retry", FailureReason.THROTTLED),           # ESME_RMSGQFUL
    (0x08, "retry", FailureReason.PROVIDER_DOWN),       # ESME_RSYSERR
    (0x45, "retry", FailureReason.TRANSIENT),           # ESME_RSUBMITFAIL
    (0x0A, "retry", FailureReason.AUTH_FAILED),         # ESME_RINVSRCADR: the sender id refused
    (0x0B, "failed", FailureReason.INVALID_ADDRESS),    # ESME_RINVDSTADR
    (0x50, "failed", FailureReason.INVALID_ADDRESS),    # ESME_RINVDSTTON
    (0x01, "failed", FailureReason.CONTENT_REJECTED),   # ESME_RINVMSGLEN
    (0x33, "failed", FailureReason.UNKNOWN),            # ESME_RINVNUMDESTS: nothing we expect
], ids=lambda v: hex(v) if isinstance(v, int) else str(v))
def test_the_smscs_refusals_map_to_outcomes(status: int, outcome: str, reason: FailureReason) -> None:
    async def scenario() -> Any:
        async with Smsc(lambda _submit, _n: status) as smsc:
            provider = provider_for(smsc.port)
            result = await provider.send(outbound("Hello"))
            await provider.aclose()
            return result

    result = run(scenario)
    assert (result.status, result.reason, result.maybe_sent) == (outcome, reason, False)
    assert result.provider_code == f"0x{status:08X}"


def test_a_refused_later_part_means_the_first_parts_went_out() -> None:
    def answer(_submit: Submitted, number: int) -> str | int:
        return 0x58 if number == 2 else f"smsc-{number}"

    async def scenario() -> tuple[Any, Smsc]:
        async with Smsc(answer) as smsc:
            provider = provider_for(smsc.port)
            result = await provider.send(outbound("x" * 400))
            await provider.aclose()
            return result, smsc

    result, smsc = run(scenario)
    assert (result.status, result.reason, result.maybe_sent) == ("retry", FailureReason.THROTTLED, True)
    assert "part 2 of 3" in result.detail
    assert len(smsc.submitted) == 2          # part 3 is not sent after part 2 was refused


def test_no_answer_after_the_submit_sm_was_written_may_have_sent_it() -> None:
    async def scenario() -> Any:
        async with Smsc(lambda _submit, _n: None) as smsc:
            provider = provider_for(smsc.port, timeout=0.3)
            result = await provider.send(outbound("Hello"))
            await provider.aclose()
            return result

    result = run(scenario)
    assert (result.status, result.reason, result.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, True)


def test_the_window_bounds_the_submit_sm_outstanding() -> None:
    async def scenario() -> tuple[list[Any], Smsc]:
        async with Smsc(lambda _submit, _n: None) as smsc:
            provider = provider_for(smsc.port, window=2)
            sends = [asyncio.create_task(provider.send(outbound("Hi", f"msg_{i}"))) for i in range(5)]
            for released in range(5):
                await smsc.until(lambda r=released: len(smsc.held) == min(2, 5 - r))  # type: ignore[misc]
                await smsc.release(f"smsc-{released}")
            results = await asyncio.gather(*sends)
            await provider.aclose()
            return results, smsc

    results, smsc = run(scenario)
    assert [r.status for r in results] == ["accepted"] * 5
    assert smsc.max_held == 2


def test_a_message_the_provider_cannot_address_fails_without_a_bind() -> None:
    async def scenario() -> list[Any]:
        provider = provider_for(1)   # nothing listens there: these outcomes need no SMSC
        results = [await provider.send(outbound("Hi", to="015112345678")),
                   await provider.send(outbound("")),
                   await provider.send(outbound("Hi", sender="A sender id far too long")),
                   await provider.send(outbound("Hi", sender="1" * 21)),
                   await provider.send(outbound("Hi", sender="²³"))]
        await provider.aclose()
        return results

    bad_number, empty, *bad_senders = run(scenario)
    assert (bad_number.status, bad_number.reason) == ("failed", FailureReason.INVALID_ADDRESS)
    assert (empty.status, empty.reason) == ("failed", FailureReason.CONTENT_REJECTED)
    assert [(r.status, r.reason) for r in bad_senders] == [("retry", FailureReason.AUTH_FAILED)] * 3
    with pytest.raises(UnsupportedFeature):
        run(lambda: provider_for(1).send(OutboundMessage(id="m", workspace_id="w", channel="email",
                                                         purpose="transactional", to="a@example.org",
                                                         email=EmailContent("s@example.org", None, "s", None, "t"))))


# ---- the bind ----------------------------------------------------------------------------------------

def test_a_refused_bind_is_auth_failed_and_good_credentials_bind() -> None:
    async def scenario() -> tuple[Any, Any, RawSmsc]:
        async with RawSmsc() as smsc:
            refused = provider_for(smsc.port, system_type="WRONG")
            refused_result = await refused.send(outbound("Hello"))
            await refused.aclose()
            accepted = provider_for(smsc.port)
            accepted_result = await accepted.send(outbound("Hello"))
            await accepted.aclose()
            return refused_result, accepted_result, smsc

    refused, accepted, smsc = run(scenario)
    assert (refused.status, refused.reason, refused.maybe_sent) == ("retry", FailureReason.AUTH_FAILED, False)
    assert refused.provider_code == "0x0000000E"
    assert "ESME_RINVPASWD" in refused.detail
    assert (accepted.status, accepted.provider_message_id) == ("accepted", "raw-1")
    assert [(b.system_id, b.password, b.interface_version) for b in smsc.binds] == [("herald", "secret", 0x34)] * 2
    assert [b.system_type for b in smsc.binds] == ["WRONG", "HERALD"]


def test_no_smsc_listening_is_provider_down() -> None:
    async def scenario() -> Any:
        provider = provider_for(1, connect_timeout=2)
        result = await provider.send(outbound("Hello"))
        await provider.aclose()
        return result

    result = run(scenario)
    assert (result.status, result.reason, result.maybe_sent) == ("retry", FailureReason.PROVIDER_DOWN, False)
    assert "127.0.0.1:1" in result.detail


def test_enquire_link_keeps_the_bind_and_an_unanswered_one_rebinds() -> None:
    async def scenario() -> tuple[RawSmsc, RawSmsc]:
        async with RawSmsc() as answering, RawSmsc(answer_enquire_link=False) as silent:
            for smsc in (answering, silent):
                provider = provider_for(smsc.port, enquire_link_interval=0.05, timeout=0.2)
                assert (await provider.send(outbound("Hello"))).status == "accepted"
                if smsc is answering:
                    await smsc.until(lambda: answering.count(0x15) >= 3)
                else:
                    await smsc.until(lambda: len(silent.binds) >= 2)   # gave up on the link, bound again
                await provider.aclose()
            return answering, silent

    answering, silent = run(scenario)
    assert len(answering.binds) == 1
    assert answering.count(0x06) == 1          # aclose unbinds
    assert silent.count(0x15) >= 1


def test_the_provider_reconnects_after_the_smsc_drops_the_connection_or_unbinds() -> None:
    async def scenario() -> tuple[list[Any], SmppProvider, Smsc]:
        async with Smsc() as smsc, Proxy(smsc.port) as proxy:
            provider = provider_for(proxy.port)
            results = [await provider.send(outbound("one", "msg_1"))]
            await smsc.bound(1)
            proxy.cut()                                   # the connection drops, no unbind
            await smsc.bound(2)
            results.append(await provider.send(outbound("two", "msg_2")))
            await smsc.sessions[1].unbind()               # the SMSC unbinds
            await smsc.bound(3)
            results.append(await provider.send(outbound("three", "msg_3")))
            await provider.aclose()
            return results, provider, smsc

    results, provider, smsc = run(scenario)
    assert [r.status for r in results] == ["accepted"] * 3
    assert provider.binds == 3
    assert [read_gsm7(s.short_message) for s in smsc.submitted] == ["one", "two", "three"]
    assert len({s.session_id for s in smsc.submitted}) == 3


def test_aclose_unbinds_and_ends_the_events() -> None:
    async def scenario() -> tuple[Smsc, Any]:
        async with Smsc() as smsc:
            provider = provider_for(smsc.port)
            collector = Collector(provider, smsc)
            await smsc.bound()
            await provider.aclose()
            await asyncio.wait_for(collector.task, WAIT)
            await smsc.until(lambda: len(smsc.unbound) == 1)
            after = await provider.send(outbound("late"))
            return smsc, after

    smsc, after = run(scenario)
    assert smsc.unbound == [smsc.sessions[0].session_id]
    assert (after.status, after.reason) == ("retry", FailureReason.PROVIDER_DOWN)


# ---- receipts and inbound messages ---------------------------------------------------------------

def receipt(smsc_id: str, stat: str, err: str = "000", done: str = "2401011201") -> bytes:
    return (f"id:{smsc_id} sub:001 dlvrd:{'001' if stat == 'DELIVRD' else '000'} submit date:2401011200 "
            f"done date:{done} stat:{stat} err:{err} text:Your order").encode()


def test_delivery_receipts_become_events_for_our_messages() -> None:
    async def scenario() -> list[DeliveryEvent | InboundMessage]:
        async with Smsc() as smsc:
            provider = provider_for(smsc.port, receipt_time_zone="Europe/Berlin")
            collector = Collector(provider, smsc)
            single = await provider.send(outbound("Hi", "msg_a"))              # smsc-1
            multi = await provider.send(outbound("y" * 400, "msg_b"))         # smsc-2..4
            failing = await provider.send(outbound("z" * 200, "msg_c"))       # smsc-5..6
            assert [single.provider_message_id, multi.provider_message_id, failing.provider_message_id] == [
                "smsc-1", "smsc-2", "smsc-5"]
            esme = await smsc.bound()
            fields = {"source_addr": "4915112345678", "source_addr_ton": 1, "source_addr_npi": 1, "esm_class": 0x04}
            for smsc_id in ("smsc-2", "smsc-3"):                              # 2 of msg_b's 3 parts
                await smsc.deliver(esme, receipt(smsc_id, "DELIVRD"), **fields)
            await smsc.deliver(esme, receipt("smsc-1", "DELIVRD"), **fields)
            await smsc.deliver(esme, receipt("smsc-4", "DELIVRD"), **fields)
            await smsc.deliver(esme, receipt("smsc-1", "DELIVRD"), **fields)  # a repeat: nothing more
            await smsc.deliver(esme, receipt("smsc-6", "UNDELIV", err="001"), **fields)
            await smsc.deliver(esme, receipt("smsc-5", "DELIVRD"), **fields)  # msg_c already failed
            await smsc.deliver(esme, receipt("smsc-1", "ENROUTE"), **fields)  # under way: nothing
            await smsc.deliver(esme, b"", tlvs=[smpp34.Tlv(0x001E, b"other-9\0"),   # receipted_message_id
                                                smpp34.Tlv(0x0427, bytes([3]))], **fields)   # message_state EXPIRED
            events = await collector.count(4)
            await provider.aclose()
            return events

    delivered_a, delivered_b, bounced_c, expired_other = run(scenario)
    assert isinstance(delivered_a, DeliveryEvent)
    assert (delivered_a.kind, delivered_a.message_id, delivered_a.provider_message_id) == (
        "delivered", "msg_a", "smsc-1")
    assert delivered_a.occurred_at == datetime(2024, 1, 1, 11, 1, tzinfo=UTC)   # 12:01 in Berlin
    assert delivered_a.recipient == TO
    assert delivered_a.provider == "smpp"
    assert isinstance(delivered_b, DeliveryEvent)
    assert (delivered_b.kind, delivered_b.message_id, delivered_b.provider_message_id) == (
        "delivered", "msg_b", "smsc-2")
    assert isinstance(bounced_c, DeliveryEvent)
    assert (bounced_c.kind, bounced_c.message_id, bounced_c.reason, bounced_c.permanent) == (
        "bounced", "msg_c", FailureReason.UNKNOWN, True)
    assert (bounced_c.provider_message_id, bounced_c.provider_code) == ("smsc-5", "001")
    assert "part 2 of 2" in bounced_c.detail
    assert isinstance(expired_other, DeliveryEvent)      # not ours (another process sent it)
    assert (expired_other.kind, expired_other.message_id, expired_other.provider_message_id) == (
        "bounced", None, "other-9")
    assert (expired_other.reason, expired_other.occurred_at) == (FailureReason.EXPIRED, None)


def test_inbound_deliver_sm_become_inbound_messages() -> None:
    async def scenario() -> list[DeliveryEvent | InboundMessage]:
        async with Smsc() as smsc:
            provider = provider_for(smsc.port)
            collector = Collector(provider, smsc)
            esme = await smsc.bound()
            mo = {"source_addr": "4915112345678", "source_addr_ton": 1, "source_addr_npi": 1,
                  "destination_addr": "4930123456", "dest_addr_ton": 1, "dest_addr_npi": 1}
            await smsc.deliver(esme, b"STOP", **mo)
            await smsc.deliver(esme, "Спасибо, получил".encode("utf-16-be"), data_coding=0x08, **mo)
            udh = b"\x05\x00\x03\x2a\x02"
            await smsc.deliver(esme, udh + b"\x02" + b" please", esm_class=0x40, **mo)   # part 2 first
            await smsc.deliver(esme, udh + b"\x01" + b"HELP", esm_class=0x40, **mo)
            await smsc.deliver(esme, b"\x1be 5 @ home", source_addr="HERALD", source_addr_ton=5)
            items = await collector.count(4)
            await provider.aclose()
            return items

    stop, thanks, help_, euro = run(scenario)
    assert isinstance(stop, InboundMessage)
    assert (stop.channel, stop.provider, stop.sender, stop.recipient, stop.text) == (
        "sms", "smpp", TO, "+4930123456", "STOP")
    assert stop.provider_message_id is None
    assert stop.received_at is not None
    assert isinstance(thanks, InboundMessage)
    assert thanks.text == "Спасибо, получил"
    assert isinstance(help_, InboundMessage)
    assert (help_.text, help_.raw["parts"]) == ("HELP please", 2)
    assert isinstance(euro, InboundMessage)
    assert (euro.text, euro.sender) == ("€ 5 ¡ home", "HERALD")   # GSM-7: 0x40 is ¡, "@" is 0x00


def test_a_full_event_buffer_makes_the_smsc_deliver_later() -> None:
    async def scenario() -> int:
        async with Smsc() as smsc:
            provider = provider_for(smsc.port, event_buffer=1)
            events = provider.events()
            first = asyncio.ensure_future(anext(events))      # starts the bind, takes the first item
            esme = await smsc.bound()
            await smsc.deliver(esme, b"ONE", source_addr="4915112345678", source_addr_ton=1)
            await asyncio.wait_for(first, WAIT)
            await smsc.deliver(esme, b"TWO", source_addr="4915112345678", source_addr_ton=1)  # queued
            full = await esme.deliver_sm("HeraldShop", b"THREE", source_addr="4915112345678")
            await provider.aclose()
            return full.command_status

    assert run(scenario) == 0x14           # ESME_RMSGQFUL: not acknowledged, the SMSC keeps it


# ---- the codec against smpp34's, and the pure parts -------------------------------------------------

def test_our_submit_sm_decodes_with_smpp34() -> None:
    body = submit_sm_body(Address(5, 0, "HeraldShop"), Address(1, 1, "4915112345678"), 0x40, 0x08,
                          b"\x05\x00\x03\x01\x02\x01" + "Привет".encode("utf-16-be"))
    decoded = smpp34.decode(encode_pdu(SUBMIT_SM, 7, body))
    assert isinstance(decoded, smpp34.SubmitSm)
    assert (decoded.sequence_number, decoded.source_addr, decoded.source_addr_ton, decoded.destination_addr) == (
        7, "HeraldShop", 5, "4915112345678")
    assert (decoded.esm_class, decoded.data_coding, decoded.registered_delivery) == (0x40, 0x08, 1)
    assert decoded.short_message[6:].decode("utf-16-be") == "Привет"


def test_smpp34s_deliver_sm_parses_with_ours() -> None:
    wire = smpp34.DeliverSm("4915112345678", "HeraldShop", b"id:7 stat:DELIVRD", source_addr_ton=1,
                            esm_class=0x04, data_coding=0x00,
                            tlvs=[smpp34.Tlv(0x0427, bytes([2]))]).encode()
    parsed = parse_deliver_sm(wire[16:])
    assert (parsed.source, parsed.destination.digits) == (Address(1, 0, "4915112345678"), "HeraldShop")
    assert (parsed.esm_class, parsed.short_message) == (0x04, b"id:7 stat:DELIVRD")
    assert parsed.tlvs == {0x0427: bytes([2])}


@pytest.mark.parametrize(("text", "expected"), [
    ("id:0123456789 sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 stat:DELIVRD err:000 "
     "Text:Your id: is here", {"id": "0123456789", "sub": "001", "dlvrd": "001", "submit date": "2401011200",
                                "done date": "2401011201", "stat": "DELIVRD", "err": "000",
                                "text": "Your id: is here"}),
    ("id:abc stat:UNDELIV err:27", {"id": "abc", "stat": "UNDELIV", "err": "27"}),
    ("ID:AB-1 SUB:001 STAT:EXPIRED", {"id": "AB-1", "sub": "001", "stat": "EXPIRED"}),
    ("no receipt here", {}),
])
def test_receipt_text_fields(text: str, expected: dict[str, str]) -> None:
    assert parse_receipt_text(text) == expected


def test_the_tracker_can_read_decimal_receipt_ids_of_hex_submit_ids() -> None:
    tracker = ReceiptTracker(10, "decimal")
    tracked = _Tracked("msg_1", 1, [None])
    tracker.expect(tracked, 0, "1A2B")
    deliver = DeliverSm(Address(1, 1, "4915112345678"), Address(5, 0, "HeraldShop"), 0x04, 0x00,
                        b"id:0000006699 stat:DELIVRD err:000")   # 6699 == 0x1A2B
    found = read_receipt(deliver, ZoneInfo("UTC"))
    assert found is not None
    event = tracker.event(found)
    assert event is not None
    assert (event.kind, event.message_id, event.provider_message_id) == ("delivered", "msg_1", "1A2B")
    assert tracker.event(found) is None       # a repeated receipt reports nothing


def test_the_tracker_forgets_the_oldest_beyond_its_capacity() -> None:
    tracker = ReceiptTracker(2)
    for n in range(3):
        tracker.expect(_Tracked(f"msg_{n}", 1, [None]), 0, f"id{n}")
    assert len(tracker) == 2


@pytest.mark.parametrize(("sender", "ton_npi"), [
    ("+4915112345678", (1, 1)), ("HeraldShop", (5, 0)), ("12345", (3, 0)), ("4915112345678", (1, 1)), ("", (0, 0)),
])
def test_the_senders_ton_and_npi_follow_its_form(sender: str, ton_npi: tuple[int, int]) -> None:
    address = source_address(sender)
    assert (address.ton, address.npi) == ton_npi
    assert address.digits == sender.lstrip("+")
    overridden = source_address(sender, 2, 9)
    assert (overridden.ton, overridden.npi) == (2, 9)


def test_parts_never_split_a_surrogate_pair_and_stop_at_255() -> None:
    text = "a" + "😀" * 100                                 # UCS-2: 201 units
    parts = encode_parts(text, 300)
    assert all(p.short_message[3] == 300 % 256 for p in parts)
    assert "".join(p.short_message[6:].decode("utf-16-be") for p in parts) == text
    with pytest.raises(ValueError, match="255"):
        encode_parts("x" * 153 * 256, 0)


def test_a_16_bit_reference_udh_is_read() -> None:
    concat, rest = split_udh(b"\x06\x08\x04\x01\x02\x03\x01" + b"hi")
    assert concat is not None
    assert (concat.reference, concat.total, concat.seq, rest) == (0x0102, 3, 1, b"hi")


def test_the_pacer_spaces_submits_by_the_rate() -> None:
    pacer = Pacer(10)
    assert [round(pacer.delay(0.0), 3) for _ in range(3)] == [0.0, 0.1, 0.2]
    assert pacer.delay(5.0) == 0.0                            # idle time is not saved up


@pytest.mark.parametrize(("config", "secrets", "problem"), [
    ({"system_id": "herald"}, {}, "host is required"),
    ({"host": "smsc.example.net"}, {}, "system_id is required"),
    ({"host": "h", "system_id": "herald", "windwo": 5}, {}, "unknown settings windwo"),
    ({"host": "h", "system_id": "herald", "window": "5"}, {}, "window must be a whole number"),
    ({"host": "h", "system_id": "herald", "window": 0}, {}, "window must be at least 1"),
    ({"host": "h", "system_id": "herald", "timeout": -1}, {}, "timeout must be a positive"),
    ({"host": "h", "system_id": "a-system-id-too-long"}, {}, "system_id"),
    ({"host": "h", "system_id": "herald"}, {"password": "hunter2-too-long"}, "password must be at most 8"),
    ({"host": "h", "system_id": "herald", "receipt_time_zone": "Mars/Base"}, {}, "IANA"),
    ({"host": "h", "system_id": "herald", "receipt_id_format": "hex"}, {}, "receipt_id_format"),
    ({"host": "h", "system_id": "herald", "source_addr": "Far too long a sender"}, {}, "sender"),
])
def test_unusable_settings_say_what_to_fix(config: dict[str, Any], secrets: dict[str, str], problem: str) -> None:
    with pytest.raises(ProviderConfigError, match=problem) as caught:
        make_provider(config, secrets)
    assert "hunter2" not in str(caught.value)


def test_make_provider_opens_nothing() -> None:
    provider = make_provider({"host": "127.0.0.1", "port": 1, "system_id": "herald", "window": 3,
                              "max_per_second": 50, "system_type": ""}, {"password": "secret"})
    assert (provider.settings.window, provider.settings.max_per_second, provider.settings.system_type) == (3, 50.0, "")
    assert provider.binds == 0


@pytest.mark.parametrize(("stat", "expected"), [
    ("DELIVRD", ("delivered", None, None)),
    ("ACCEPTD", ("delivered", None, None)),
    ("EXPIRED", ("bounced", FailureReason.EXPIRED, True)),
    ("UNDELIV", ("bounced", FailureReason.UNKNOWN, True)),
    ("REJECTD", ("rejected", FailureReason.BLOCKED, True)),
    ("DELETED", ("rejected", FailureReason.UNKNOWN, True)),
    ("UNKNOWN", ("deferred", FailureReason.UNKNOWN, False)),
    ("SOMETHING", ("deferred", FailureReason.UNKNOWN, False)),
    ("ENROUTE", None),
])
def test_receipt_states_map_to_events(stat: str,
                                      expected: tuple[str, FailureReason | None, bool | None] | None) -> None:
    tracker = ReceiptTracker(10)
    tracker.expect(_Tracked("msg_1", 1, [None]), 0, "77")
    deliver = DeliverSm(Address(1, 1, "4915112345678"), Address(5, 0, "HeraldShop"), 0x04, 0x00,
                        f"id:77 stat:{stat} err:000".encode())
    found = read_receipt(deliver, ZoneInfo("UTC"))
    assert found is not None
    event = tracker.event(found)
    assert (None if event is None else (event.kind, event.reason, event.permanent)) == expected
    if event is not None:
        assert event.message_id == "msg_1"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_deliver_sm_body_gets_an_answer_never_an_exception(body: bytes) -> None:
    provider = make_provider({"host": "127.0.0.1", "system_id": "herald"}, {})
    assert provider._deliver(body) in (0x00, 0x65)       # ROK, or ESME_RX_P_APPN for a malformed PDU


@settings(max_examples=300, deadline=None)
@given(esm_class=st.sampled_from([0x00, 0x04, 0x20, 0x40, 0x44]), data_coding=st.sampled_from([0, 1, 3, 4, 8, 0xF0]),
       short_message=st.binary(max_size=160))
def test_any_well_formed_deliver_sm_is_handled(esm_class: int, data_coding: int, short_message: bytes) -> None:
    provider = make_provider({"host": "127.0.0.1", "system_id": "herald"}, {})
    wire = smpp34.DeliverSm("4915112345678", "HeraldShop", short_message, source_addr_ton=1, esm_class=esm_class,
                            data_coding=data_coding).encode()
    assert provider._deliver(wire[16:]) == 0x00
